"""Host-local exclusive locks (flock on a file): import serialisation, the array manifest, set creation."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from snapport.errors import SetInProgress


class FileLock:
    """An exclusive `flock` on `path`, held from `__enter__` to `__exit__`; released by the kernel if we die."""

    def __init__(self, path: Path, *, timeout_s: float = 30.0, what: str = "") -> None:
        self.path = path
        self.timeout_s = timeout_s
        self.what = what or path.name
        self._fd: int | None = None

    def __enter__(self) -> FileLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if not flock_within(fd, fcntl.LOCK_EX, self.timeout_s):
            os.close(fd)
            raise SetInProgress(f"{self.what} is held by another process (waited {self.timeout_s:g} s)")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def flock_within(fd: int, operation: int, timeout_s: float) -> bool:
    """Take `flock(fd, operation)` (LOCK_EX or LOCK_SH), trying every 20 ms for up to `timeout_s`; False if another
    process still held it then."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)


def holders(path: Path) -> list[int]:
    """The pids holding a `flock` on `path`, read from /proc/locks (taking the lock to find out would race with
    its real users, e.g. an agent starting). Empty when nobody holds it, or the file does not exist."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return []
    wanted = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    found = []
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] != "FLOCK":
            continue  # a waiter, not a holder; or a POSIX lock, which snapport never takes
        pid, where = fields[4], fields[5].split(":")
        try:
            key = (int(where[0], 16), int(where[1], 16), int(where[2]))
        except (IndexError, ValueError):
            continue
        if key == wanted and pid.isdigit():
            found.append(int(pid))
    return found


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (in this pid namespace)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
