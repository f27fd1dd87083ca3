"""Every external command goes through a Runner: argv in; rc, output and duration out; always a timeout.

`run` is for a command that runs to completion. `start` is for one that lives on beside us (a freeze guard, an
engine child, restic, a hook script, a lab agent): it returns a `Process` whose signals reach its own process
group only while its leader is not reaped (so never a process that took over the pid), whose `stop` ends it
(a signal, a grace period, SIGKILL of the group, the reap) and which, as a context manager, is always stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from signal import SIGKILL, SIGTERM, Signals
from types import TracebackType
from typing import IO, Protocol

from snapport.errors import SystemCommandError

DEFAULT_TIMEOUT_S = 60.0
PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT
KILL_WAIT_S = 10.0  # how long a SIGKILLed process may take to be reaped (it may be in uninterruptible sleep)
STOP_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1
_POLL_S = 0.01

Stream = int | IO[bytes] | None  # PIPE, DEVNULL, STDOUT (stderr only), a file descriptor or file, None: inherit


@dataclass(frozen=True, slots=True)
class Completed:
    """The result of one command."""

    argv: tuple[str, ...]
    rc: int
    stdout: str
    stderr: str
    duration_ms: float

    def check(self) -> Completed:
        """Raise `SystemCommandError` (with the command's own words) unless it exited 0."""
        if self.rc != 0:
            said = (self.stderr or self.stdout).strip().splitlines()
            detail = said[-1] if said else "no output"
            raise SystemCommandError(f"`{' '.join(self.argv)}` exited {self.rc}: {detail}")
        return self


class Process(Protocol):
    """A started process (`Runner.start`)."""

    argv: tuple[str, ...]
    pid: int
    stdin: IO[bytes] | None
    stdout: IO[bytes] | None
    stderr: IO[bytes] | None

    @property
    def returncode(self) -> int | None:
        """Its exit status once reaped (negative: the signal that killed it), else None."""
        ...

    def running(self) -> bool:
        """Whether its leader has not exited yet (an exited one is not reaped by asking)."""
        ...

    def signal(self, sig: Signals) -> None:
        """Send `sig` to its process group (or to it alone, if it shares ours), only while it is not reaped."""
        ...

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait up to `timeout` seconds (None: for ever) for it to exit, reap it and return its status; None if it
        is still running then."""
        ...

    def stop(self, grace_s: float = STOP_GRACE_S, *, first: Signals = SIGTERM) -> int | None:
        """End it: `first` (unless it exited already), up to `grace_s` for it to exit, then SIGKILL to its group
        (what it started dies too), the reap, and its pipes closed. Idempotent. None if it could not be reaped
        within KILL_WAIT_S of the SIGKILL (stuck in the kernel)."""
        ...

    def __enter__(self) -> Process: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class Runner(Protocol):
    """Runs commands; implementations: `SubprocessRunner` (real) and `RecordingRunner` (unit tests)."""

    def run(
        self, argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT_S, check: bool = True, stdin: str | None = None
    ) -> Completed: ...

    def start(
        self,
        argv: Sequence[str],
        *,
        stdin: Stream = DEVNULL,
        stdout: Stream = DEVNULL,
        stderr: Stream = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        own_group: bool = True,
        die_with_parent: bool = False,
    ) -> Process:
        """Start `argv` (no shell) and return at once. `own_group`: in a session of its own, so that a signal to
        it reaches what it starts and a Ctrl-C to us does not reach it first. `die_with_parent`: the kernel
        SIGKILLs it when the *thread* that started it ends (PR_SET_PDEATHSIG), so start it from a thread that
        outlives it. `env` None inherits ours. `SystemCommandError` if it cannot be started."""
        ...


class SubprocessRunner:
    """The real one: no shell, a timeout on every call, the environment inherited, LC_ALL=C for parsable output."""

    def run(
        self, argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT_S, check: bool = True, stdin: str | None = None
    ) -> Completed:
        args = tuple(str(a) for a in argv)
        started = time.monotonic()
        try:
            proc = subprocess.run(
                args,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
                env=_c_locale(),
            )
        except subprocess.TimeoutExpired as exc:
            raise SystemCommandError(f"`{' '.join(args)}` did not finish within {timeout:g} s") from exc
        except OSError as exc:
            raise SystemCommandError(f"cannot run `{args[0]}`: {exc.strerror or exc}") from exc
        result = Completed(args, proc.returncode, proc.stdout, proc.stderr, (time.monotonic() - started) * 1000)
        return result.check() if check else result

    def start(
        self,
        argv: Sequence[str],
        *,
        stdin: Stream = DEVNULL,
        stdout: Stream = DEVNULL,
        stderr: Stream = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        own_group: bool = True,
        die_with_parent: bool = False,
    ) -> Process:
        args = tuple(str(a) for a in argv)
        try:
            popen = subprocess.Popen(
                args,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=own_group,
                close_fds=True,
                preexec_fn=_death_signal(os.getpid()) if die_with_parent else None,  # noqa: PLW1509 (prctl only)
            )
        except OSError as exc:
            raise SystemCommandError(f"cannot start `{args[0]}`: {exc.strerror or exc}") from exc
        return ChildProcess(args, popen, own_group=own_group)


def _death_signal(parent: int) -> Callable[[], None]:
    """In the child, before exec: SIGKILL when the starting thread ends; exit at once if the parent is gone."""
    libc = ctypes.CDLL(None, use_errno=True)

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return arm


class ChildProcess:
    """A `Process` over `subprocess.Popen`. Its leader is reaped only by `wait` and `stop`: until then its pid
    (and so its process group id) cannot be taken by another process, which makes every signal safe."""

    def __init__(self, argv: tuple[str, ...], popen: subprocess.Popen[bytes], *, own_group: bool) -> None:
        self.argv = argv
        self.pid = popen.pid
        self.stdin, self.stdout, self.stderr = popen.stdin, popen.stdout, popen.stderr
        self._popen = popen
        self._own_group = own_group

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def running(self) -> bool:
        if self._popen.returncode is not None:
            return False
        try:  # WNOWAIT: look, do not reap
            return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:  # reaped behind our back (a SIGCHLD handler): gone
            return False

    def signal(self, sig: Signals) -> None:
        if self._popen.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self._own_group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_s: float = STOP_GRACE_S, *, first: Signals = SIGTERM) -> int | None:
        if self._popen.returncode is None:
            if self.running():
                self.signal(first)
                deadline = time.monotonic() + grace_s
                while self.running() and time.monotonic() < deadline:
                    time.sleep(_POLL_S)
            self.signal(SIGKILL)  # the leader is alive or a zombie: its group is still its own
            self.wait(KILL_WAIT_S)
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        return self._popen.returncode

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _c_locale() -> dict[str, str]:
    env = dict(os.environ)
    env["LC_ALL"] = "C"
    return env


Responder = Callable[[tuple[str, ...]], tuple[int, str, str] | None]


@dataclass
class RecordingRunner:
    """Records every argv and answers from `responders` (first non-None wins; default rc 0, no output). A started
    process is recorded the same way and has already exited with the answer (its output on `stdout`/`stderr`)."""

    responders: list[Responder] = field(default_factory=list)
    calls: list[tuple[str, ...]] = field(default_factory=list)

    def _answer(self, argv: Sequence[str]) -> tuple[tuple[str, ...], int, str, str]:
        args = tuple(str(a) for a in argv)
        self.calls.append(args)
        for responder in self.responders:
            answer = responder(args)
            if answer is not None:
                return (args, *answer)
        return args, 0, "", ""

    def run(
        self, argv: Sequence[str], *, timeout: float = DEFAULT_TIMEOUT_S, check: bool = True, stdin: str | None = None
    ) -> Completed:
        result = Completed(*self._answer(argv), 0.0)
        return result.check() if check else result

    def start(
        self,
        argv: Sequence[str],
        *,
        stdin: Stream = DEVNULL,
        stdout: Stream = DEVNULL,
        stderr: Stream = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        own_group: bool = True,
        die_with_parent: bool = False,
    ) -> Process:
        args, rc, out, err = self._answer(argv)
        return RecordedProcess(args, rc, out.encode(), err.encode())


class RecordedProcess:
    """What `RecordingRunner.start` returns: a process that has exited with its recorded answer."""

    def __init__(self, argv: tuple[str, ...], rc: int, out: bytes, err: bytes) -> None:
        self.argv = argv
        self.pid = 0
        self.stdin: IO[bytes] | None = io.BytesIO()
        self.stdout: IO[bytes] | None = io.BytesIO(out)
        self.stderr: IO[bytes] | None = io.BytesIO(err)
        self._rc = rc

    @property
    def returncode(self) -> int | None:
        return self._rc

    def running(self) -> bool:
        return False

    def signal(self, sig: Signals) -> None:
        return None

    def wait(self, timeout: float | None = None) -> int | None:
        return self._rc

    def stop(self, grace_s: float = STOP_GRACE_S, *, first: Signals = SIGTERM) -> int | None:
        return self._rc

    def __enter__(self) -> RecordedProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None
