"""Locks: a flock dies with its holder, so a dead holder leaves nothing; a live one held past its bound, or one a
child inherited from a dead holder, is reported (never broken: the holder may still be thawing or cleaning up)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

from snapport.coordinator.host import Host
from snapport.coordinator.reconcile.report import Pass
from snapport.osal.lock import holders, pid_alive

AGENT_LOCK = "agent.lock"  # held for an agent's whole life: never "hung"


def agent_alive(host: Host) -> bool:
    """Whether an agent runs on this home (it holds the home's agent lock for its whole life)."""
    return bool(holders(host.home / "locks" / AGENT_LOCK))


def locks(run: Pass, provider_locks: Iterable[Path], hung_after_s: float) -> None:
    """This home's locks and the providers' (`provider_locks`, e.g. an array's manifest lock)."""
    paths = sorted((run.host.home / "locks").glob("*.lock"))
    paths += list(provider_locks)
    now = time.time()
    for path in paths:
        if path.name == AGENT_LOCK:
            continue
        for pid in holders(path):
            try:
                held_s = now - path.stat().st_mtime  # the holder writes its pid when it takes the lock
            except FileNotFoundError:
                continue
            if not pid_alive(pid):  # its holder died but a child it started still has the descriptor open
                run.found("lock", str(path), f"held after its holder pid {pid} died (a child process inherited it)")
            elif held_s > hung_after_s:
                run.found("lock", str(path), f"held by live pid {pid} for {held_s:.0f} s, past {hung_after_s:g} s")
