"""The restic program on one repository: its password, its environment, its commands (a stale lock of a dead
restic removed, a live one waited for), and how a restic is started and stopped.

The password reaches restic through its environment only, never an argument; other `RESTIC_*` variables of the
caller are not passed on.
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from snapport.errors import SystemCommandError, UsageError
from snapport.osal.runner import Process, Runner, Stream, SubprocessRunner

RESTIC = "/usr/bin/restic"
COMMAND_TIMEOUT_S = 3600.0
LOCK_WAIT_S = 1800.0  # exclusive commands (tag, check) wait this long for other backups into the repository
STOP_GRACE_S = 10.0  # how long an interrupted restic may take to remove its lock before it is killed
# restic runs in a private mount namespace whose init (`view`) builds its root and execs it
IN_VIEW = ("unshare", "--mount", "--propagation", "private", sys.executable, "-m", "snapport.engines.restic.view")


def key_file_for(repository: Path) -> Path:
    """Where the generated password of `repository` is kept: beside it (not in it), mode 0600."""
    return repository.parent / f".{repository.name}.restic-key"


@dataclass(frozen=True, slots=True)
class Completed:
    rc: int
    stdout: str
    stderr: str


class Restic:
    """`restic` (the program at `program`) on the repository `repository`, started through `runner`.

    The password: RESTIC_PASSWORD_FILE or RESTIC_PASSWORD if set, else a random key generated beside the
    repository (`key_file_for`) by `init`, mode 0600.
    """

    def __init__(self, repository: Path, program: str = RESTIC, runner: Runner | None = None) -> None:
        self.repository = repository
        self.program = program
        self.runner: Runner = runner or SubprocessRunner()

    @property
    def exists(self) -> bool:
        return (self.repository / "config").is_file()

    def init(self) -> None:
        """Make the repository in an absent or empty directory (and its password, unless the caller gives one)."""
        if self.exists:
            return
        if self.repository.exists() and (not self.repository.is_dir() or any(self.repository.iterdir())):
            raise UsageError(f"{self.repository} is neither empty nor a restic repository")
        self._password(create=True)
        self.checked("init")

    def _password(self, *, create: bool) -> str:
        if os.environ.get("RESTIC_PASSWORD_FILE"):
            try:
                return Path(os.environ["RESTIC_PASSWORD_FILE"]).read_text().rstrip("\n")
            except OSError as exc:
                raise UsageError(f"RESTIC_PASSWORD_FILE is unreadable: {exc.strerror}") from None
        if os.environ.get("RESTIC_PASSWORD"):
            return os.environ["RESTIC_PASSWORD"]
        key = key_file_for(self.repository)
        if not key.exists() and create:
            key.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32) + "\n")
                f.flush()
                os.fsync(f.fileno())
        try:
            return key.read_text().rstrip("\n")
        except OSError:
            raise UsageError(
                f"no password for restic repository {self.repository}: set RESTIC_PASSWORD_FILE or keep {key}"
            ) from None

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESTIC_")}
        env.update(RESTIC_PASSWORD=self._password(create=False), LC_ALL="C", RESTIC_PROGRESS_FPS="4")
        return env

    def argv(self, repo: str, *args: str) -> list[str]:
        """A restic command line on `repo` (the repository's path here, or where a view mounts it)."""
        return [self.program, "-r", repo, "--no-cache", *args]

    def start(self, argv: Sequence[str], stdout: Stream, stderr: IO[bytes]) -> Process:
        """restic (or its view) started in our process group, so that a Ctrl-C reaches it too (it removes its lock
        on SIGINT), and killed by the kernel if the thread that started it dies (a SIGKILLed backup takes its
        restic along before it writes a snapshot). The caller ends it with `stop`."""
        return self.runner.start(
            argv, stdout=stdout, stderr=stderr, env=self._env(), own_group=False, die_with_parent=True
        )

    def call(self, argv: Sequence[str], timeout_s: float) -> Completed:
        """Run `argv` to its end (its output in temporary files: a listing may be large); one that outlives
        `timeout_s`, or whose caller is interrupted, is stopped."""
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = self.start(argv, out, err)
            try:
                rc = proc.wait(timeout_s)
            finally:
                stop(proc)
            if rc is None:
                raise SystemCommandError(f"restic did not finish within {timeout_s:g} s: {' '.join(argv[-3:])}")
            out.seek(0)
            err.seek(0)
            return Completed(rc, out.read().decode(errors="surrogateescape"), err.read().decode(errors="replace"))

    def run(self, *args: str, timeout_s: float = COMMAND_TIMEOUT_S, exclusive: bool = False) -> Completed:
        """One restic command on the repository; a stale lock of a dead restic is removed (`restic unlock` removes
        only locks whose process is gone or that are 30 min old) and a live one waited for, up to LOCK_WAIT_S."""
        deadline = time.monotonic() + LOCK_WAIT_S
        attempt = 0
        while True:
            result = self.call(self.argv(str(self.repository), *args), timeout_s)
            if result.rc == 0 or "locked" not in result.stderr or time.monotonic() > deadline:
                return result
            self.call(self.argv(str(self.repository), "unlock"), 60.0)
            attempt += 1
            time.sleep(min(10.0, attempt * (0.5 if exclusive else 1.0)))

    def checked(self, *args: str, exclusive: bool = False) -> str:
        """`run`, and its output; `SystemCommandError` with restic's last words unless it exited 0."""
        result = self.run(*args, exclusive=exclusive)
        if result.rc != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise SystemCommandError(f"`restic {args[0]}` exited {result.rc}: {lines[-1] if lines else 'no output'}")
        return result.stdout


def stop(proc: Process) -> None:
    """Interrupt restic (it removes its lock on SIGINT), then kill it if it does not stop within STOP_GRACE_S; a
    restic that has exited already is only reaped."""
    proc.stop(STOP_GRACE_S, first=signal.SIGINT)
