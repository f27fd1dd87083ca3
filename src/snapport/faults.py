"""Test-only fault injection (DESIGN §9): `SNAPPORT_FAULT=POINT:ACTION` makes the process act at POINT.

ACTION is `kill` (SIGKILL itself: a crash with no clean-up), `raise` (an `InjectedFault`, which the normal error
paths must handle) or `hang` (sleep until killed). Several faults are separated by commas
(`writer.freeze:raise,writer.abort:kill`: a failure, then a crash on the way back). Unset, it costs one dictionary
lookup. A variable naming a point that is not in `POINTS`, or an unknown action, is refused (`UsageError`) at the
first `inject`, so a typo cannot make a fault test pass without its fault. With `SNAPPORT_FAULT_LOG=FILE` set too,
the process appends `POINT ACTION PID` to FILE just before it acts: the fault suite's proof that the point was
reached. A leaf module: any layer may call `inject`.
"""

from __future__ import annotations

import os
import signal
import time

from snapport.errors import SnapportError, UsageError

ACTIONS = ("kill", "raise", "hang")

# Every point, where it fires and in which process. "agent one" is systemOne's (the production host's) agent,
# "agent two" the proxy's; the CLI verbs hit the same points in the `snapport` process that runs them.
POINTS: tuple[str, ...] = (
    # systemOne: the off-host job and its backup session (coordinator/session.py), in agent one
    "offhost.start",  # agent one: the offhost-backup job starts, nothing made yet
    "writer.identify",  # agent one (any process running a BackupSession): GuardedWriter, before each event
    "writer.prepare-backup",
    "writer.prepare-snapshot",
    "provider.prepare",  # agent one: before each provider's prepare (the set is PREPARING)
    "writer.freeze",  # agent one: GuardedWriter, before a writer freezes (the set is SNAPSHOTTING)
    "provider.commit",  # agent one: every volume frozen, the snapshots not yet taken
    "writer.thaw",  # agent one: GuardedWriter, before a writer thaws (the snapshots are taken)
    "provider.post-commit",  # agent one: thawed, before each provider's post-commit
    "writer.post-snapshot",
    "document.save",  # agent one: the documents are about to be written (the set becomes CREATED after)
    "writer.abort",  # agent one: GuardedWriter, before an abort (only on a failure path)
    "lease.grant",  # agent one: the set is created, the proxy's lease not yet granted
    "offhost.handover",  # agent one: the lease is granted, the proxy-backup job not yet submitted to the proxy
    "lease.renew",  # agent one: the lease route, before the proxy's heartbeat is recorded
    "offhost.report-received",  # agent one: the completion route, before the proxy's report is taken
    "writer.backup-complete",  # agent one: GuardedWriter, before BackupComplete fires (after a reported success)
    "writer.backup-shutdown",  # agent one: GuardedWriter, before BackupShutdown (every session end)
    "writer.pre-restore",  # a restore's process (not on the backup flow)
    "writer.post-restore",
    # systemTwo: the proxy job (agent/offhost/proxy.py) and what it calls, in agent two
    "proxy.start",  # agent two: the proxy-backup job starts, the documents not yet fetched
    "proxy.heartbeat",  # agent two: before each lease renewal it sends
    "set.import",  # agent two (or `snapport import`): the import lock is held, nothing recorded yet
    "set.expose",  # agent two (or `snapport expose`): the set is CREATED (imported), nothing mounted yet
    "engine.scan",  # agent two: the engine's phases (engines/), in the engine process the agent runs for a job
    "engine.backup",
    "engine.publish",
    "engine.verify",
    "engine.restore",  # a restore's process (not on the backup flow)
    "engine.restore-write",  # a restore's process: each file's first chunk is written under its temporary name
    "engine.forget",  # a forget's process (archive engine): a set is renamed out of place, its files not yet removed
    "proxy.verify",  # agent two: the backup is published, its verification not yet started
    "set.unexpose",  # agent two (or `snapport unexpose`): before the copies are unmounted
    "set.delete",  # either agent (systemOne ends its session, the proxy releases its import) or `snapport delete`
    "proxy.report",  # agent two: the outcome is decided, before it is reported to systemOne
    "array.manifest",  # any process changing the file-backed array: the new manifest is fsynced, not renamed
    # the lab (lab/build.py), in the `snapport lab up` process, once each step is done and recorded
    "lab.netns",
    "lab.veth",
    "lab.link-check",
    "lab.array",
    "lab.ceph",
    "lab.homes",
    "lab.holders",
    "lab.data-volume",
    "lab.sample-app",
    "lab.agents",
)
_KNOWN = frozenset(POINTS)


class InjectedFault(SnapportError):
    code = "INJECTED_FAULT"
    exit_code = 99
    advice = "a test asked for this failure (SNAPPORT_FAULT); unset it"


def inject(point: str) -> None:
    """Act if `SNAPPORT_FAULT` names this point."""
    wanted = os.environ.get("SNAPPORT_FAULT")
    if not wanted:
        return
    action = None
    for fault in wanted.split(","):
        name, _, act = fault.strip().partition(":")
        if name not in _KNOWN or point not in _KNOWN or act not in ACTIONS:
            bad = name if name not in _KNOWN else point if point not in _KNOWN else act
            raise UsageError(f"SNAPPORT_FAULT={wanted!r}: {bad!r} is not a fault point or action of snapport.faults")
        if name == point and action is None:
            action = act
    if action is None:
        return
    _note(point, action)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "hang":
        while True:
            time.sleep(3600)
    else:
        raise InjectedFault(f"fault injected at {point}")


def _note(point: str, action: str) -> None:
    """Append `POINT ACTION PID` to `SNAPPORT_FAULT_LOG` (one write: it is in the file even if we die next)."""
    log = os.environ.get("SNAPPORT_FAULT_LOG")
    if not log:
        return
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, f"{point} {action} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
