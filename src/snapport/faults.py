"""Test-only fault injection (DESIGN §9): `SNAPPORT_FAULT=POINT:ACTION` makes the process act at POINT.

ACTION is `kill` (SIGKILL itself: a crash with no clean-up), `raise` (an `InjectedFault`, which the normal error
paths must handle) or `hang` (sleep until killed). Unset, it costs one dictionary lookup. A leaf module: any layer
may call `inject`.
"""

from __future__ import annotations

import os
import signal
import time

from snapport.errors import SnapportError


class InjectedFault(SnapportError):
    code = "INJECTED_FAULT"
    exit_code = 99
    advice = "a test asked for this failure (SNAPPORT_FAULT); unset it"


def inject(point: str) -> None:
    """Act if `SNAPPORT_FAULT` names this point."""
    wanted = os.environ.get("SNAPPORT_FAULT")
    if not wanted:
        return
    name, _, action = wanted.partition(":")
    if name != point:
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "hang":
        while True:
            time.sleep(3600)
    elif action == "raise":
        raise InjectedFault(f"fault injected at {point}")
