"""Reading the exposed copy ahead of the archive: a small pool of threads opens the next files (checked to be the
inodes the walk saw), reads their xattrs and holes, and reads and digests small files whole, in batches, up to a
bounded distance ahead; so a cold device sees many reads in flight rather than one."""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import os
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from snapport.engines.archive.stream import CHUNK
from snapport.engines.digest import new_hasher
from snapport.engines.walk import Entry, EntryType, open_checked
from snapport.errors import BadState, SystemCommandError

SMALL_FILE = 256 << 10  # read whole by the read-ahead pool; larger files are streamed by the engine's own thread
READ_AHEAD_BYTES = 64 << 20  # how far the pool may run ahead of the archive, in content bytes
READ_AHEAD_BATCHES = 64  # batches of entries the pool may hold ready or in progress
BATCH_FILES = 64  # entries per read-ahead task, at most
BATCH_BYTES = 2 << 20  # content bytes per read-ahead task, at most (a larger file is a batch of its own)
READERS = 4  # read-ahead threads: enough to keep a cold device busy with small files


@dataclass(frozen=True, slots=True)
class Loaded:
    """What the read-ahead pool prepared for one entry: its xattrs, a sparse file's data map, and either a small
    file's whole content with its digest, or an open descriptor for the engine's own thread to stream."""

    xattrs: tuple[tuple[str, bytes], ...] = ()
    data_map: tuple[tuple[int, int], ...] | None = None
    fd: int | None = None
    data: bytes | None = None
    digest: str = ""


_NO_XATTRS = (errno.ENOTSUP, errno.EPERM, errno.EACCES)


def read_xattrs(source: int | Path) -> tuple[tuple[str, bytes], ...]:
    """Every extended attribute of an open file or (not followed) path that this process may read, by name:
    user., trusted. and security. ones, and POSIX ACLs as system.posix_acl_access / _default."""
    follow = isinstance(source, int)  # an fd: the flag must stay True; a path: never follow a link
    try:
        names = os.listxattr(source, follow_symlinks=follow)
        found = []
        for name in sorted(names):
            try:
                found.append((name, os.getxattr(source, name, follow_symlinks=follow)))
            except OSError as exc:
                if exc.errno not in (errno.ENODATA, *_NO_XATTRS):
                    raise
        return tuple(found)
    except OSError as exc:
        if exc.errno in _NO_XATTRS:
            return ()  # a filesystem without xattrs, or one this process may not list
        raise SystemCommandError(f"cannot read the extended attributes of {source}: {exc.strerror}") from None


def data_map(fd: int, size: int) -> tuple[tuple[int, int], ...] | None:
    """A file's data extents from SEEK_DATA/SEEK_HOLE, or None when it has no hole."""
    extents: list[tuple[int, int]] = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole up to the end
                break
            raise
        if start >= size:
            break
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append((start, end - start))
        offset = end
    return None if extents == [(0, size)] else tuple(extents)


class ReadAhead:
    """The entries' `Loaded`s in order, prepared by a small pool of threads up to a bounded distance ahead, in
    batches of consecutive entries (one task per entry costs more in handing over than a small file's read)."""

    def __init__(self, entries: Sequence[Entry], algorithm: str) -> None:
        self._entries = entries
        self._algorithm = algorithm
        self._pool = concurrent.futures.ThreadPoolExecutor(READERS, thread_name_prefix="snapport-read")
        self._pending: deque[tuple[int, concurrent.futures.Future[list[Loaded]]]] = deque()  # (bytes, batch)
        self._ready: deque[Loaded] = deque()
        self._submitted = 0
        self._bytes_ahead = 0

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *_: object) -> None:
        for _size, future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)
        # files opened for entries the backup never reached
        loaded = [*self._ready]
        for _size, future in self._pending:
            if not future.cancelled() and future.exception() is None:
                loaded += future.result()
        for item in loaded:
            if item.fd is not None:
                os.close(item.fd)
        self._pending.clear()
        self._ready.clear()

    def next(self) -> Loaded:
        if not self._ready:
            self._submit()
            size, future = self._pending.popleft()
            self._bytes_ahead -= size
            self._ready.extend(future.result())
        return self._ready.popleft()

    def _submit(self) -> None:
        entries = self._entries
        while self._submitted < len(entries) and len(self._pending) < READ_AHEAD_BATCHES:
            if self._pending and self._bytes_ahead >= READ_AHEAD_BYTES:
                break
            first = self._submitted
            size = 0
            while self._submitted < len(entries) and self._submitted - first < BATCH_FILES and size < BATCH_BYTES:
                entry = entries[self._submitted]
                size += entry.size if entry.type is EntryType.FILE else 0
                self._submitted += 1
            batch = entries[first : self._submitted]
            self._pending.append((size, self._pool.submit(_load_batch, batch, self._algorithm)))
            self._bytes_ahead += size


def _load_batch(entries: Sequence[Entry], algorithm: str) -> list[Loaded]:
    """Run in the read-ahead pool; on a failure, the descriptors this batch opened are closed."""
    loaded: list[Loaded] = []
    try:
        for entry in entries:
            loaded.append(_load(entry, algorithm))
    except BaseException:
        for item in loaded:
            if item.fd is not None:
                os.close(item.fd)
        raise
    return loaded


def _load(entry: Entry, algorithm: str) -> Loaded:
    """Open (checked), xattrs, holes, and a small file's content and digest."""
    if entry.type is EntryType.HARDLINK:
        return Loaded()  # the inode's xattrs are stored with its first name
    if entry.type is not EntryType.FILE:
        return Loaded(read_xattrs(entry.source))
    fd = open_checked(entry.source, entry.dev, entry.ino)
    try:
        xattrs = read_xattrs(fd)
        holes = entry.blocks * 512 < entry.size  # only then is the data map worth two lseeks per extent
        extents = data_map(fd, entry.size) if holes else None
        if extents is None and entry.size <= SMALL_FILE:
            data = os.pread(fd, entry.size, 0) if entry.size else b""
            while len(data) < entry.size:
                more = os.pread(fd, entry.size - len(data), len(data))
                if not more:
                    raise BadState(f"{entry.path} shrank while it was backed up: the exposed copy is not stable")
                data += more
            os.close(fd)
            hasher = new_hasher(algorithm)
            hasher.update(data)
            return Loaded(xattrs, None, None, data, hasher.hexdigest())
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            os.posix_fadvise(fd, 0, 16 * CHUNK, os.POSIX_FADV_WILLNEED)
        return Loaded(xattrs, extents, fd)
    except OSError as exc:
        os.close(fd)
        raise SystemCommandError(f"cannot read {entry.source} in the exposed copy: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
