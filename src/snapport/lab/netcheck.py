"""`python -m snapport.lab.netcheck ADDRESS [PORT] [--open]`: does ADDRESS answer? (the lab has no ping)

Exit 0 when a TCP handshake to PORT (default 9, discard) completes or is refused with a reset: either way the
peer's kernel answered, so the link and addresses work. With `--open` only a completed handshake counts (a
service is listening). Exit 1 otherwise, with the reason.
"""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Sequence

DISCARD_PORT = 9


def answers(address: str, port: int, *, must_be_open: bool, timeout_s: float) -> tuple[bool, str]:
    try:
        with socket.create_connection((address, port), timeout=timeout_s):
            return True, "connected"
    except ConnectionRefusedError:
        return (not must_be_open), "refused (the host answered; nothing listens there)"
    except OSError as exc:
        return False, str(exc) or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m snapport.lab.netcheck")
    parser.add_argument("address")
    parser.add_argument("port", type=int, nargs="?", default=DISCARD_PORT)
    parser.add_argument("--open", action="store_true", help="require a listening service")
    parser.add_argument("--timeout", type=float, default=2.0)
    args = parser.parse_args(argv)
    ok, why = answers(args.address, args.port, must_be_open=args.open, timeout_s=args.timeout)
    print(f"{args.address}:{args.port}: {why}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
