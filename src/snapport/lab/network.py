"""Network namespaces and the veth pair between them, through iproute2 (by exact name; never `ip -all`)."""

from __future__ import annotations

import ipaddress
import re
import sys
import time
from pathlib import Path

from snapport.errors import SystemCommandError, UsageError
from snapport.osal.runner import Runner

NETNS_DIR = Path("/run/netns")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_IFNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")


def _netns(name: str) -> str:
    if not _NAME.match(name):
        raise UsageError(f"{name!r} is not a network namespace name")
    return name


def _ifname(name: str) -> str:
    if not _IFNAME.match(name):
        raise UsageError(f"{name!r} is not an interface name (at most 15 characters)")
    return name


def netns_exists(name: str) -> bool:
    return (NETNS_DIR / _netns(name)).exists()


def add_netns(runner: Runner, name: str) -> None:
    runner.run(["ip", "netns", "add", _netns(name)], timeout=30)


def delete_netns(runner: Runner, name: str) -> bool:
    """Delete exactly the namespace `name`; idempotent (False when it was not there)."""
    if not netns_exists(name):
        return False
    runner.run(["ip", "netns", "delete", _netns(name)], timeout=30)
    return True


def netns_pids(runner: Runner, name: str) -> list[int]:
    """The processes whose network namespace is `name` (empty if it is gone)."""
    if not netns_exists(name):
        return []
    out = runner.run(["ip", "netns", "pids", _netns(name)], timeout=30, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def add_veth(runner: Runner, netns: str, name: str, peer_netns: str, peer_name: str) -> None:
    """A veth pair made directly inside the two namespaces: it never exists in the machine's own, so it cannot
    collide with the machine's interfaces or another lab's."""
    runner.run(
        [
            "ip", "link", "add", _ifname(name), "netns", _netns(netns),
            "type", "veth", "peer", "name", _ifname(peer_name), "netns", _netns(peer_netns),
        ],
        timeout=30,
    )  # fmt: skip


def link_exists(runner: Runner, netns: str, name: str) -> bool:
    if not netns_exists(netns):
        return False
    done = runner.run(["ip", "-n", _netns(netns), "link", "show", "dev", _ifname(name)], timeout=30, check=False)
    return done.rc == 0


def delete_link(runner: Runner, netns: str, name: str) -> bool:
    """Delete the link `name` in `netns` (both ends of a veth go); idempotent."""
    if not link_exists(runner, netns, name):
        return False
    runner.run(["ip", "-n", _netns(netns), "link", "delete", "dev", _ifname(name)], timeout=30)
    return True


def configure(runner: Runner, netns: str, link: str, address: ipaddress.IPv4Interface) -> None:
    """Give `link` its address and bring it and the namespace's loopback up."""
    ns = _netns(netns)
    runner.run(["ip", "-n", ns, "address", "replace", str(address), "dev", _ifname(link)], timeout=30)
    runner.run(["ip", "-n", ns, "link", "set", "dev", _ifname(link), "up"], timeout=30)
    runner.run(["ip", "-n", ns, "link", "set", "dev", "lo", "up"], timeout=30)


def reachable(runner: Runner, netns: str, address: ipaddress.IPv4Address, *, timeout_s: float = 10.0) -> None:
    """Check from inside `netns` that `address` answers (a TCP handshake or its refusal); raise if it does not.

    Each try waits half a second only: a SYN sent while the veth's carrier was still coming up is retransmitted
    after a whole second, a new try sends a new one at once."""
    deadline = time.monotonic() + timeout_s
    while True:
        done = runner.run(
            [
                "ip",
                "netns",
                "exec",
                _netns(netns),
                sys.executable,
                "-m",
                "snapport.lab.netcheck",
                str(address),
                "--timeout",
                "0.5",
            ],
            timeout=30,
            check=False,
        )
        if done.rc == 0:
            return
        if time.monotonic() >= deadline:
            said = (done.stdout + done.stderr).strip() or f"exit {done.rc}"
            raise SystemCommandError(f"{address} does not answer from {netns}: {said}")
        time.sleep(0.2)
