"""The three ioctls snapport lives on: FIFREEZE/FITHAW (quiesce a filesystem) and FICLONE (reflink a file)."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from snapport.errors import SystemCommandError

# From <linux/fs.h>: _IOWR('X', 119, int), _IOWR('X', 120, int), _IOW(0x94, 9, int).
FIFREEZE = 0xC0045877
FITHAW = 0xC0045878
FICLONE = 0x40049409


def _mount_fd(mount_point: Path) -> int:
    return os.open(mount_point, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def freeze(mount_point: Path) -> None:
    """Flush and block writes to the filesystem at `mount_point`. Raises if it is already frozen (EBUSY)."""
    fd = _mount_fd(mount_point)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
    except OSError as exc:
        why = "it is already frozen" if exc.errno == errno.EBUSY else (exc.strerror or str(exc))
        raise SystemCommandError(f"cannot freeze {mount_point}: {why}") from exc
    finally:
        os.close(fd)


def thaw(mount_point: Path) -> bool:
    """Let writes through again. Idempotent: returns False if the filesystem was not frozen."""
    fd = _mount_fd(mount_point)
    try:
        fcntl.ioctl(fd, FITHAW, 0)
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # not frozen
            return False
        raise SystemCommandError(f"cannot thaw {mount_point}: {exc.strerror or exc}") from exc
    finally:
        os.close(fd)
    return True


def is_frozen(mount_point: Path) -> bool:
    """Whether the filesystem is frozen.

    The kernel has no query for this, and a write probe would block, so this tries FIFREEZE: EBUSY means it was
    frozen; success means this call froze it (flushing it, as a sync would), so it thaws it at once. Meant for
    reconciliation and tests, not for a hot path.
    """
    fd = _mount_fd(mount_point)
    try:
        fcntl.ioctl(fd, FIFREEZE, 0)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            return True
        raise SystemCommandError(f"cannot probe {mount_point}: {exc.strerror or exc}") from exc
    else:
        fcntl.ioctl(fd, FITHAW, 0)
        return False
    finally:
        os.close(fd)


def reflink(source: Path, destination: Path) -> None:
    """Make `destination` a copy-on-write clone of `source` (created exclusively; removed on failure)."""
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            dst = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            raise SystemCommandError(f"cannot clone {source} to {destination}: it already exists") from None
        except OSError as exc:  # e.g. EPERM (an immutable directory), EROFS, ENOSPC
            raise SystemCommandError(f"cannot clone {source} to {destination}: {exc.strerror or exc}") from exc
        try:
            fcntl.ioctl(dst, FICLONE, src)
        except OSError as exc:
            os.close(dst)
            dst = -1
            destination.unlink(missing_ok=True)
            why = "the filesystem cannot reflink" if exc.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL) else ""
            raise SystemCommandError(f"cannot clone {source} to {destination}: {why or exc.strerror}") from exc
        finally:
            if dst >= 0:
                os.close(dst)
    finally:
        os.close(src)


def reflink_over(source: Path, destination: Path) -> None:
    """Replace the content of the existing file `destination` by a copy-on-write clone of `source`, in place.

    In place (no temp file and rename) because a loop device may hold `destination` open: a rename would leave
    it serving the old inode. The caller makes sure nothing is using the content meanwhile.
    """
    src = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        dst = os.open(destination, os.O_WRONLY | os.O_CLOEXEC)  # it must exist; no O_TRUNC: FICLONE replaces
        try:
            fcntl.ioctl(dst, FICLONE, src)
        except OSError as exc:
            why = "the filesystem cannot reflink" if exc.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL) else ""
            raise SystemCommandError(f"cannot clone {source} over {destination}: {why or exc.strerror}") from exc
        finally:
            os.close(dst)
    finally:
        os.close(src)
