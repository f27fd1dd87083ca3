"""The thaw guarantee: a small guard process holds filesystem freezes and thaws them no matter what.

The coordinator never calls FIFREEZE itself. It starts a guard (`python -m snapport.osal.freeze_guard`) before
the freeze window and talks to it over a pipe, one JSON object per line:

    coordinator → guard: {"cmd": "freeze", "timeout_s": 60}     guard → {"frozen": [...]} or {"error": "..."}
    coordinator → guard: {"cmd": "thaw"}                        guard → {"thawed": [...], "reason": "asked"}

The guard thaws everything it froze, and exits, when it is asked to, when `timeout_s` has passed since the
freeze, when its stdin reaches end-of-file (the coordinator died: the kernel closes the pipe even after SIGKILL),
or on SIGTERM/SIGINT/SIGHUP. Only SIGKILL of the guard itself escapes it; then `FreezeGuard.thaw` (or
reconciliation) thaws by ioctl.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType

from snapport.errors import FreezeTimeout, SystemCommandError
from snapport.osal import ioctl
from snapport.osal.runner import PIPE, Runner, SubprocessRunner

EXIT_ASKED, EXIT_FAILED, EXIT_TIMEOUT, EXIT_ORPHANED, EXIT_SIGNALLED = 0, 1, 2, 3, 4


def _say(payload: dict[str, object]) -> None:
    try:
        sys.stdout.write(json.dumps(payload) + "\n")
        sys.stdout.flush()
    except OSError:  # the coordinator is gone; the thaw, which matters, has already happened
        pass


def _thaw_all(frozen: list[Path]) -> list[str]:
    thawed = []
    for mount_point in reversed(frozen):
        try:
            ioctl.thaw(mount_point)
            thawed.append(str(mount_point))
        except Exception as exc:  # keep thawing the others whatever happens
            _say({"warning": f"thaw of {mount_point} failed: {exc}"})
    frozen.clear()
    return thawed


def guard_main(mount_points: list[str]) -> int:
    """The guard process's body."""
    frozen: list[Path] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        _say({"thawed": _thaw_all(frozen), "reason": f"signal {signal.Signals(signum).name}"})
        os._exit(EXIT_SIGNALLED)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)

    deadline: float | None = None
    stdin = sys.stdin.fileno()
    buffer = b""
    _say({"ready": os.getpid()})
    while True:
        wait = None if deadline is None else max(0.0, deadline - time.monotonic())
        readable, _, _ = select.select([stdin], [], [], wait)
        if not readable:
            _say({"thawed": _thaw_all(frozen), "reason": "timeout"})
            return EXIT_TIMEOUT
        chunk = os.read(stdin, 4096)
        if not chunk:
            _say({"thawed": _thaw_all(frozen), "reason": "coordinator gone"})
            return EXIT_ORPHANED
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            command = json.loads(line)
            if command.get("cmd") == "freeze" and not frozen:
                try:
                    for mount_point in mount_points:
                        ioctl.freeze(Path(mount_point))
                        frozen.append(Path(mount_point))
                except Exception as exc:
                    _thaw_all(frozen)
                    _say({"error": str(exc)})
                    return EXIT_FAILED
                deadline = time.monotonic() + float(command["timeout_s"])
                _say({"frozen": [str(p) for p in frozen]})
            elif command.get("cmd") == "thaw":
                _say({"thawed": _thaw_all(frozen), "reason": "asked"})
                return EXIT_ASKED


class FreezeGuard:
    """The coordinator's handle on one guard process (a context manager: leaving it always thaws).

    The guard is started through `runner` (its own process group, so that a Ctrl-C to the coordinator does not
    reach it first) and never with a death signal: when the coordinator dies the guard must live on long enough
    to thaw, which the end of its stdin tells it to do.
    """

    def __init__(self, mount_points: Sequence[Path], runner: Runner | None = None) -> None:
        self.mount_points = list(mount_points)
        self.frozen = False
        self.thaw_reason: str | None = None
        self._proc = (runner or SubprocessRunner()).start(
            [sys.executable, "-m", "snapport.osal.freeze_guard", *map(str, self.mount_points)],
            stdin=PIPE,
            stdout=PIPE,
            own_group=True,
        )
        self._expect("ready", timeout_s=30)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _send(self, payload: dict[str, object]) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.write((json.dumps(payload) + "\n").encode())
        self._proc.stdin.flush()

    def _expect(self, key: str, *, timeout_s: float) -> dict[str, object]:
        assert self._proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._proc.stdout], [], [], left)[0]:
                raise FreezeTimeout(f"the freeze guard did not answer {key!r} within {timeout_s:g} s")
            line = self._proc.stdout.readline()
            if not line:
                raise SystemCommandError(f"the freeze guard exited ({self._proc.wait()}) before answering {key!r}")
            message: dict[str, object] = json.loads(line)
            if "error" in message:
                raise SystemCommandError(str(message["error"]))
            if key in message:
                return message

    def freeze(self, *, timeout_s: float, answer_within_s: float) -> None:
        """Freeze every mount point; the guard thaws on its own `timeout_s` after the freeze."""
        self._send({"cmd": "freeze", "timeout_s": timeout_s})
        try:
            self._expect("frozen", timeout_s=answer_within_s)
        except FreezeTimeout:
            # The guard may have frozen some filesystems just before we gave up on it: thaw them by ioctl.
            self.frozen = True
            self.close()
            raise
        self.frozen = True

    def thaw(self) -> str:
        """Thaw (idempotent) and return why the filesystems were thawed: asked, timeout, or a crash."""
        if self._proc.running():
            try:
                self._send({"cmd": "thaw"})
                self.thaw_reason = str(self._expect("thawed", timeout_s=30)["reason"])
            except (OSError, SystemCommandError, FreezeTimeout):
                self.thaw_reason = "guard unresponsive"
        elif self.thaw_reason is None:
            self.thaw_reason = "guard exited" if self._proc.wait() != EXIT_TIMEOUT else "timeout"
        self.close()
        return self.thaw_reason

    def close(self) -> None:
        """End the guard and make sure nothing it may have frozen stays frozen."""
        if self._proc.stop(grace_s=0, first=signal.SIGKILL) is None:
            # Not reaped within the SIGKILL wait: it is in the kernel, maybe in a FIFREEZE that has yet to return.
            # The thaw below must come after that freeze, so wait for the guard as long as it takes.
            self._proc.wait()
        if self.frozen:
            for mount_point in reversed(self.mount_points):
                ioctl.thaw(mount_point)  # idempotent: EINVAL (not frozen) is fine
            self.frozen = False

    def __enter__(self) -> FreezeGuard:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.thaw()


if __name__ == "__main__":
    sys.exit(guard_main(sys.argv[1:]))
