"""Replacing a file so that a reader, or a crash, sees the old content or the new, never a mix."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from snapport.faults import inject


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(
    path: Path, data: bytes, *, mode: int = 0o644, replace: bool = True, fault_point: str | None = None
) -> None:
    """Write `data` to a temporary file beside `path`, fsync it, rename it over `path` (or, with `replace=False`,
    link it there: `FileExistsError` if `path` exists), then fsync the directory. The temporary file never
    outlives a failure. `fault_point` names a test-only fault (`snapport.faults`) between the fsync and the
    rename."""
    temp = path.parent / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if fault_point:
            inject(fault_point)
        if replace:
            temp.replace(path)
        else:
            os.link(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    fsync_dir(path.parent)
