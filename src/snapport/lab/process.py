"""Long-lived lab processes: started detached, known by (pid, start time), stopped only while still that process.

A holder, the sample application and the agents outlive `lab up`, so they are started with `Runner.start` in a
session of their own, with no inherited descriptors, output to a log and no death signal, and their `Process`
handle is let go: a later `lab down`, in another process, stops them by the recorded pid. A pid alone can be
reused by anything once its process is gone, so every signal is preceded by a check that /proc/PID has the
recorded start time (clock ticks since boot, field 22 of /proc/PID/stat) and runs the recorded command.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from snapport.errors import SystemCommandError
from snapport.osal.runner import DEVNULL, STDOUT, SubprocessRunner

STOP_GRACE_S = 5.0


@dataclass(frozen=True, slots=True)
class ProcessId:
    """A process as the kernel tells one from another: its pid and its start time."""

    pid: int
    start_ticks: int


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start ticks) of `pid`, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name in parentheses may hold spaces
    return fields[0], int(fields[19])


def cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw.decode(errors="replace").split("\0")[:-1] if raw else []


def alive(pid: int, start_ticks: int) -> bool:
    """True while that very process runs (a zombie has exited: it holds no files, mounts or namespaces)."""
    found = _stat(pid)
    return found is not None and found[1] == start_ticks and found[0] not in ("Z", "X")


def identify(pid: int, start_ticks: int, launcher: Sequence[str], argv: Sequence[str]) -> str:
    """`ours`, `gone`, or `other` (the pid now belongs to someone else).

    Ours: the recorded start time, and a command line that is a stage of the launch: each launcher (ip netns
    exec, unshare, nsenter, env) execs the rest of its own command line, so every stage is a tail of `launcher`
    ending in `argv`.
    """
    if not alive(pid, start_ticks):
        return "gone"
    line = cmdline(pid)
    stages = [list(launcher[i:]) for i in range(len(launcher) - len(argv) + 1)]
    return "ours" if line is not None and line[-len(argv) :] == list(argv) and line in stages else "other"


def spawn(argv: Sequence[str], *, log: Path | None, env: Mapping[str, str] | None = None) -> ProcessId:
    """Start `argv` detached from us (its own session; output to `log`); it outlives this process."""
    out = log.open("ab") if log is not None else None
    try:
        started = SubprocessRunner().start(
            argv, stdout=out if out is not None else DEVNULL, stderr=STDOUT, env=env, own_group=True
        )
    finally:
        if out is not None:
            out.close()  # the child has its own copy
    found = _stat(started.pid)
    if found is None:  # it already exited and was reaped: impossible before we wait, but say so plainly
        raise SystemCommandError(f"`{' '.join(argv)}` exited at once")
    return ProcessId(started.pid, found[1])


def wait_exec(process: ProcessId, argv: Sequence[str], *, timeout_s: float = 10.0) -> None:
    """Wait until the launchers (ip netns exec, unshare, nsenter, env) have exec'd `argv`; raise if it died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(process.pid, process.start_ticks):
            _reap(process.pid)
            raise SystemCommandError(f"`{' '.join(argv)}` (pid {process.pid}) exited while starting")
        if cmdline(process.pid) == list(argv):
            return
        time.sleep(0.01)
    raise SystemCommandError(f"`{' '.join(argv)}` (pid {process.pid}) did not start within {timeout_s:g} s")


def _reap(pid: int) -> None:
    """Collect the exit status if `pid` is our own child (else its new parent does)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(process: ProcessId, launcher: Sequence[str], argv: Sequence[str], *, grace_s: float = STOP_GRACE_S) -> str:
    """SIGTERM, then SIGKILL after `grace_s`; only while /proc/PID is still that process (`identify`).

    The process is pinned by a pidfd before it is identified, so the signal cannot reach a process that took over
    the pid in between. Returns `stopped` or `already gone`; raises `SystemCommandError` if the pid belongs to
    another process now (it is left alone) or the process will not die.
    """
    try:
        pidfd = os.pidfd_open(process.pid)
    except ProcessLookupError:
        return "already gone"
    try:
        who = identify(process.pid, process.start_ticks, launcher, argv)
        if who == "gone":
            return "already gone"
        if who == "other":
            raise SystemCommandError(
                f"pid {process.pid} is no longer the lab's process (it runs {cmdline(process.pid)}); left alone"
            )
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                signal.pidfd_send_signal(pidfd, sig)
            except ProcessLookupError:  # it exited between the check and the signal
                return "stopped"
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)  # readable once the process has exited
            if poller.poll(wait_s * 1000):
                return "stopped"
        raise SystemCommandError(f"pid {process.pid} did not exit after SIGKILL (stuck in the kernel?)")
    finally:
        os.close(pidfd)
        _reap(process.pid)
