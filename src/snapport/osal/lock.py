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
        deadline = time.monotonic() + self.timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise SetInProgress(
                        f"{self.what} is held by another process (waited {self.timeout_s:g} s)"
                    ) from None
                time.sleep(0.02)
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
