"""The built-in archive engine: a directory repository holding, per set, one zstd-compressed POSIX tar stream, a
manifest of every entry with its digest, and the set's documents; published atomically. See docs/engines.md.

Layout (format 1)::

    REPO/snapport-repository.json          {"format": 1, "engine": "archive"}
    REPO/lock                              flock held to create or publish a set directory, and to prune
    REPO/sets/<set-id>/set.json            the set: host, components, totals, digests of every other part
    REPO/sets/<set-id>/manifest.json       per entry: original path, type, size, mode, owner, mtime, digest
    REPO/sets/<set-id>/data.tar.zst        the entries in manifest order: pax tar, zstd with frame checksums
    REPO/sets/<set-id>/backup-components.xml, writers/<writer-id>.xml
    REPO/sets/.tmp-<set-id>-<random>/      a backup being written (flock'ed) or an interrupted one
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import io
import json
import os
import secrets
import shutil
import tarfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from backports.zstd import CompressionParameter, ZstdCompressor, ZstdFile

from snapport.documents import BCD_FILE_NAME, WRITERS_DIR_NAME, load_documents, save_documents
from snapport.engines.archive_format import (
    ARCHIVE_FILE,
    ENGINE_NAME,
    ENTRY_TYPES,
    MANIFEST_FILE,
    REPOSITORY_FORMAT,
    SET_FILE,
    Hasher,
    Manifest,
    ManifestEntry,
    Part,
    SetRecord,
    component_digest,
    default_digest_algorithm,
    digest_bytes,
    field,
    member_data_map,
    member_mtime_ns,
    member_name,
    member_xattrs,
    new_hasher,
    tar_header,
)
from snapport.engines.archive_restore import Restore, prepare_target, target_parts
from snapport.engines.base import (
    BackupResult,
    Capabilities,
    ComponentKey,
    ComponentResult,
    ComponentSource,
    PathMapper,
    Phase,
    Problem,
    ProblemKind,
    Progress,
    ProgressCallback,
    RestoreResult,
    SetDocuments,
    SetSummary,
    VerifyReport,
)
from snapport.engines.walk import Entry, EntryType, Selection, open_checked, select
from snapport.errors import BadState, DocumentError, ObjectNotFound, SystemCommandError, UsageError
from snapport.faults import inject
from snapport.osal import memory
from snapport.osal.atomic import fsync_dir
from snapport.osal.lock import FileLock

if TYPE_CHECKING:
    from typing_extensions import Buffer

MARKER_FILE = "snapport-repository.json"
SETS_DIR = "sets"
TMP_PREFIX = ".tmp-"
CHUNK = 1 << 20
DEFAULT_LEVEL = 1  # half the CPU of zstd's default 3; negative levels gain little speed for many more bytes (docs)
PUBLISH_LOCK_WAIT_S = 60.0
SMALL_FILE = 256 << 10  # read whole by the read-ahead pool; larger files are streamed by the engine's own thread
READ_AHEAD_BYTES = 64 << 20  # how far the pool may run ahead of the archive, in content bytes
READ_AHEAD_BATCHES = 64  # batches of entries the pool may hold ready or in progress
BATCH_FILES = 64  # entries per read-ahead task, at most
BATCH_BYTES = 2 << 20  # content bytes per read-ahead task, at most (a larger file is a batch of its own)
READERS = 4  # read-ahead threads: enough to keep a cold device busy with small files
SEGMENT = 4 << 20  # tar bytes per zstd frame: ~1% more bytes than one frame, and frames compress in parallel
WRITE_BACK = 64 << 20  # archive bytes between two writeback kicks
# adaptive: frames step down from `level` while zstd is behind the read, to storing them uncompressed at the last;
# fixed: every frame at `level`; none: every frame stored uncompressed (still zstd frames, read the same way)
COMPRESSION_MODES = ("adaptive", "fixed", "none")
STORED: None = None  # the "level" of a frame stored uncompressed
ADAPT_LEVELS = (3, 1, -1, -3, -5, -10, -20, STORED)  # the steps an adaptive backup takes below `level` (docs)
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_RAW_BLOCK = 128 << 10  # the largest block a zstd frame may hold
_IOV_MAX = 1024  # buffers per writev
_FILE_MODE = 0o600  # a backup holds every secret of the volume it copies
_DIR_MODE = 0o700
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


# -- streams -----------------------------------------------------------------------------------------------------


class _FrameSink:
    """Tar bytes in; out to `raw`'s descriptor, one zstd frame (with its content checksum) per `SEGMENT` of tar.
    Frames are independent, so a pool of `workers` threads compresses them side by side (zstd releases the GIL)
    while the caller reads on, and a writer thread digests them and writes them (with writev) in order, so the
    caller's thread never waits on either unless `2 * workers` frames are already out. Concatenated frames are one
    zstd stream to every reader (`zstd -d`, `tar --zstd`, `ZstdFile`). A caller may read straight into `space()` and
    `advance()`. A failure in a compressing or writing thread is raised in the caller's at its next frame or at
    `finish`.

    With `adapt`, compression keeps pace with the read (as `zstd --adapt` does): when the caller has to wait for the
    oldest frame to be compressed, the next frames go one step down `ADAPT_LEVELS` (never below its last); when no
    frame is left in flight, the pool waits for data, and the next frames go one step back up, never above
    `level`."""

    def __init__(self, raw: IO[bytes], level: int | None, workers: int, hasher: Hasher, *, adapt: bool = False) -> None:
        raw.flush()
        self._fd = raw.fileno()  # written with writev: a stored frame's parts go out without being joined
        self._hasher = hasher
        self._levels: list[int | None] = [level]
        if adapt and workers and level is not None:
            self._levels += [lower for lower in ADAPT_LEVELS if lower is None or lower < level]
        self._step = 0  # index in `_levels` of the level the next frame gets
        self.frame_levels: dict[int | None, int] = {}  # level (None: stored) -> frames made at it
        self._local = threading.local()
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="snapport-zstd") if workers > 0 else None
        )
        # frames handed to the pool and not yet written, oldest first; guarded by `_changed`
        self._in_flight: deque[concurrent.futures.Future[tuple[list[Buffer], bytearray]]] = deque()
        self._max_in_flight = 2 * workers
        self._changed = threading.Condition()
        self._closed = False  # no more frames: the writer stops once the queue is empty
        self._failure: BaseException | None = None
        self._writer: threading.Thread | None = None
        if self._pool is not None:
            self._writer = threading.Thread(target=self._write_frames, name="snapport-archive-writer", daemon=True)
            self._writer.start()
        self._spare: list[bytearray] = []  # buffers of written frames: appended by the writer, popped by the caller
        self._buffer = bytearray(SEGMENT)
        self._view = memoryview(self._buffer)
        self._fill = 0
        self._written_back = 0
        self.tar_bytes = 0
        self.stored_bytes = 0

    def __enter__(self) -> _FrameSink:
        return self

    def __exit__(self, *_: object) -> None:
        """Stop the pool and the writer; frames not yet written are dropped (the caller removes the unfinished
        archive)."""
        with self._changed:
            self._closed = True
            for future in self._in_flight:
                future.cancel()
            self._changed.notify_all()
        if self._writer is not None:
            self._writer.join()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._in_flight.clear()

    def write(self, data: Buffer) -> None:
        view = memoryview(data).cast("B")
        while view:
            n = min(len(view), SEGMENT - self._fill)
            self._view[self._fill : self._fill + n] = view[:n]
            view = view[n:]
            self.advance(n)

    def space(self) -> memoryview:
        """The free part of the current segment (never empty), to read into; then `advance` by what was read."""
        return self._view[self._fill :]

    def advance(self, n: int) -> None:
        self._fill += n
        self.tar_bytes += n
        if self._fill == SEGMENT:
            self._cut()

    def finish(self) -> None:
        """The end-of-archive marker (two zero blocks), padding to a whole record, and every frame written."""
        end = 2 * _BLOCK
        self.write(bytes(end + (-(self.tar_bytes + end) % _RECORD)))
        if self._fill:
            self._cut()
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._writer is not None:
            self._writer.join()
        self._raise_failure()

    def _cut(self) -> None:
        """Hand the full segment to the pool (or compress it here) and start the next one."""
        buffer, length = self._buffer, self._fill
        self._view.release()
        self._buffer = self._spare.pop() if self._spare else bytearray(SEGMENT)
        self._view = memoryview(self._buffer)
        self._fill = 0
        level = self._levels[self._step]
        self.frame_levels[level] = self.frame_levels.get(level, 0) + 1
        if self._pool is None:
            self._emit(self._compress(buffer, length, level)[0])
            return
        with self._changed:
            self._raise_failure()
            if not self._in_flight and self._step > 0:
                self._step -= 1  # every frame was written before the next was ready: the pool has time to spare
            if len(self._in_flight) >= self._max_in_flight and not self._in_flight[0].done():
                self._step = min(self._step + 1, len(self._levels) - 1)  # the read waits for zstd: compress faster
            while len(self._in_flight) >= self._max_in_flight and self._failure is None:
                self._changed.wait()
            self._raise_failure()
            self._in_flight.append(self._pool.submit(self._compress, buffer, length, level))
            self._changed.notify_all()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _write_frames(self) -> None:
        """The writer thread: each frame, once compressed, digested and written in order."""
        try:
            while True:
                with self._changed:
                    while not self._in_flight and not self._closed:
                        self._changed.wait()
                    if not self._in_flight:
                        return
                    future = self._in_flight[0]
                parts, buffer = future.result()
                self._emit(parts)  # before the buffer is reused: a stored frame's parts are slices of it
                with self._changed:
                    self._in_flight.popleft()
                    self._spare.append(buffer)
                    self._changed.notify_all()
        except BaseException as exc:  # handed to the caller's thread, which raises it
            with self._changed:
                self._failure = exc
                self._changed.notify_all()

    def _compress(self, buffer: bytearray, length: int, level: int | None) -> tuple[list[Buffer], bytearray]:
        """Run in the pool: one whole frame in one call (zstd sizes its output from the input at once); a stored
        frame is the pieces to write, slices of `buffer` between the block headers (nothing copied)."""
        if level is STORED:
            return stored_frame(memoryview(buffer)[:length]), buffer
        compressors: dict[int, ZstdCompressor] | None = getattr(self._local, "compressors", None)
        if compressors is None:
            compressors = self._local.compressors = {}
        compressor = compressors.get(level)
        if compressor is None:  # one per thread and level, reused: a finished frame leaves it ready for the next
            options: dict[int, int] = {
                CompressionParameter.compression_level: level,
                CompressionParameter.checksum_flag: 1,  # zstd checks each frame's content on decompression
            }
            compressor = compressors[level] = ZstdCompressor(options=options)
        with memoryview(buffer) as view:
            return [compressor.compress(view[:length], ZstdCompressor.FLUSH_FRAME)], buffer

    def _emit(self, parts: list[Buffer]) -> None:
        for part in parts:
            self._hasher.update(part)
        self.stored_bytes += write_all(self._fd, parts)
        if self.stored_bytes - self._written_back >= WRITE_BACK:
            # Linux starts writeback of the range (without waiting) and drops its clean pages: the archive goes
            # to disk while the backup runs instead of all at the final fsync, and does not crowd the page cache.
            # The range reaches one step back, whose writeback the last call started (not from 0: each call would
            # walk every page written so far).
            start = max(0, self._written_back - WRITE_BACK)
            with contextlib.suppress(OSError):
                os.posix_fadvise(self._fd, start, self.stored_bytes - start, os.POSIX_FADV_DONTNEED)
            self._written_back = self.stored_bytes


def write_all(fd: int, parts: Sequence[Buffer]) -> int:
    """Write `parts` in order to `fd` (writev, IOV_MAX at a time, short writes resumed); returns the byte count."""
    total = 0
    pending = [memoryview(part).cast("B") for part in parts]
    while pending:
        batch = pending[:_IOV_MAX]
        n = os.writev(fd, batch)
        total += n
        while pending and n >= len(pending[0]):
            n -= len(pending.pop(0))
        if n:
            pending[0] = pending[0][n:]
    return total


def stored_frame(data: memoryview) -> list[Buffer]:
    """`data` as one zstd frame of raw (uncompressed) blocks, as RFC 8878 defines them: what a backup writes when
    compressing cannot keep up with reading; as the pieces to write in order (block headers between slices of
    `data`). No content checksum (that needs XXH64): the archive's own digest in set.json and every file's digest
    in the manifest cover it."""
    size = len(data)
    # Frame header descriptor 0xE0: an 8-byte content size, single segment (no window descriptor), no checksum.
    parts: list[Buffer] = [_ZSTD_MAGIC + b"\xe0" + size.to_bytes(8, "little")]
    for start in range(0, max(size, 1), _ZSTD_RAW_BLOCK):
        end = min(start + _ZSTD_RAW_BLOCK, size)
        last = 1 if end == size else 0
        parts.append(((end - start) << 3 | last).to_bytes(3, "little"))  # Block_Type 0 (raw) in bits 1-2
        if end > start:
            parts.append(data[start:end])
    return parts


class _HashingReader:
    """A read-only file object that digests and counts what is read through it."""

    def __init__(self, raw: IO[bytes], hasher: Hasher) -> None:
        self._raw = raw
        self._hasher = hasher
        self.size = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = self._raw.read(-1 if size is None else size)
        self._hasher.update(data)
        self.size += len(data)
        return data

    def readinto(self, buffer: Buffer) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def seek(self, offset: int, /) -> int:
        raise io.UnsupportedOperation("the archive is read as a stream")

    def close(self) -> None:
        """The underlying file is closed by its owner."""

    def drain(self) -> None:
        while self.read(CHUNK):
            pass


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


class _ForwardReader:
    """A decompressed stream that `tarfile` may seek forward in (by reading on), never back: a sequential walk
    needs nothing more, and the zstd stream cannot seek back without starting over."""

    def __init__(self, stream: _Readable) -> None:
        self._stream = stream
        self._position = 0

    def read(self, size: int | None = -1, /) -> bytes:
        data = self._stream.read(-1 if size is None else size)
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET, /) -> int:
        if whence != os.SEEK_SET or offset < self._position:
            raise io.UnsupportedOperation("the archive is read forward only")
        while self._position < offset and self.read(min(CHUNK, offset - self._position)):
            pass
        return self._position

    def write(self, data: bytes, /) -> int:
        raise io.UnsupportedOperation("the archive is read only")

    def close(self) -> None:
        """The stream is closed by its owner."""


class _Meter:
    """Progress events for a callback, at most one per `interval_s` unless forced."""

    def __init__(self, callback: ProgressCallback | None, interval_s: float) -> None:
        self._callback = callback
        self._interval_s = interval_s
        self._last = float("-inf")

    def __call__(
        self, phase: Phase, files: int, nbytes: int, total: tuple[int, int] | None = None, *, force: bool = False
    ) -> None:
        if self._callback is None:
            return
        now = time.monotonic()
        if force or now - self._last >= self._interval_s:
            self._last = now
            total_files, total_bytes = total if total is not None else (None, None)
            self._callback(Progress(phase, files, nbytes, total_files, total_bytes))


# -- files on disk -----------------------------------------------------------------------------------------------


def _create(path: Path) -> IO[bytes]:
    """A new file (never an existing one), readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
    return os.fdopen(fd, "wb", buffering=CHUNK)


def _write_file(path: Path, data: bytes) -> None:
    with _create(path) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read_file(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read()


def _is_blank(directory: Path) -> bool:
    """Empty, or holding only what an interrupted repository creation leaves (an empty sets/, a temp marker)."""
    for path in directory.iterdir():
        if path.name == SETS_DIR and path.is_dir() and not any(path.iterdir()):
            continue
        if not path.name.startswith(f".{MARKER_FILE}."):
            return False
    return True


@contextlib.contextmanager
def _locked_dir(path: Path) -> Iterator[None]:
    """An flock on the directory itself: marks a temporary set as being written; released if the writer dies."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        yield
    finally:
        os.close(fd)


# -- reading the exposed copy -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Loaded:
    """What the read-ahead pool prepared for one entry: its xattrs, a sparse file's data map, and either a small
    file's whole content with its digest, or an open descriptor for the engine's own thread to stream."""

    xattrs: tuple[tuple[str, bytes], ...] = ()
    data_map: tuple[tuple[int, int], ...] | None = None
    fd: int | None = None
    data: bytes | None = None
    digest: str = ""


_ZEROS = bytes(CHUNK)
_PLAIN = _Loaded()
_NO_XATTRS = (errno.ENOTSUP, errno.EPERM, errno.EACCES)


def _digest_zeros(hasher: Hasher, count: int) -> None:
    while count > 0:
        hasher.update(_ZEROS[: min(count, CHUNK)])
        count -= CHUNK


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


class _ReadAhead:
    """The entries' `_Loaded`s in order, prepared by a small pool of threads up to a bounded distance ahead, in
    batches of consecutive entries (one task per entry costs more in handing over than a small file's read)."""

    def __init__(self, entries: Sequence[Entry], algorithm: str) -> None:
        self._entries = entries
        self._algorithm = algorithm
        self._pool = concurrent.futures.ThreadPoolExecutor(READERS, thread_name_prefix="snapport-read")
        self._pending: deque[tuple[int, concurrent.futures.Future[list[_Loaded]]]] = deque()  # (bytes, batch)
        self._ready: deque[_Loaded] = deque()
        self._submitted = 0
        self._bytes_ahead = 0

    def __enter__(self) -> _ReadAhead:
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

    def next(self) -> _Loaded:
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


def _load_batch(entries: Sequence[Entry], algorithm: str) -> list[_Loaded]:
    """Run in the read-ahead pool; on a failure, the descriptors this batch opened are closed."""
    loaded: list[_Loaded] = []
    try:
        for entry in entries:
            loaded.append(_load(entry, algorithm))
    except BaseException:
        for item in loaded:
            if item.fd is not None:
                os.close(item.fd)
        raise
    return loaded


def _load(entry: Entry, algorithm: str) -> _Loaded:
    """Open (checked), xattrs, holes, and a small file's content and digest."""
    if entry.type is EntryType.HARDLINK:
        return _Loaded()  # the inode's xattrs are stored with its first name
    if entry.type is not EntryType.FILE:
        return _Loaded(read_xattrs(entry.source))
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
            return _Loaded(xattrs, None, None, data, hasher.hexdigest())
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            os.posix_fadvise(fd, 0, 16 * CHUNK, os.POSIX_FADV_WILLNEED)
        return _Loaded(xattrs, extents, fd)
    except OSError as exc:
        os.close(fd)
        raise SystemCommandError(f"cannot read {entry.source} in the exposed copy: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise


# -- the engine --------------------------------------------------------------------------------------------------


class ArchiveEngine:
    """The `archive` engine on the repository directory `repository` (created by the first backup into it): zstd
    `level` for every frame (`compression="fixed"`), at most (`"adaptive"`, down to storing frames uncompressed when
    compressing falls behind the read), or none (`"none"`); `workers` threads compress (0: the caller's)."""

    name = ENGINE_NAME
    capabilities = Capabilities(
        restore=True,
        incremental=False,
        preserves=frozenset(
            {"content", "mode", "owner", "mtime", "symlink", "hardlink", "device", "fifo", "xattr", "acl", "sparse"}
        ),
    )

    def __init__(
        self,
        repository: Path,
        *,
        level: int = DEFAULT_LEVEL,
        compression: str = "fixed",
        workers: int | None = None,
        digest_algorithm: str | None = None,
        progress_interval_s: float = 0.2,
    ) -> None:
        self.repository = Path(repository)
        if compression not in COMPRESSION_MODES:
            raise UsageError(f"compression {compression!r} is not one of {', '.join(COMPRESSION_MODES)}")
        self.level = level  # with adaptive compression, the most any frame gets
        self.compression = compression
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self.digest_algorithm = digest_algorithm or default_digest_algorithm()
        new_hasher(self.digest_algorithm)  # refuse an unavailable algorithm now, not after reading the data
        self.progress_interval_s = progress_interval_s

    @property
    def _frame_level(self) -> int | None:
        """The level of the first frame (`STORED` without compression)."""
        return STORED if self.compression == "none" else self.level

    @property
    def sets_dir(self) -> Path:
        return self.repository / SETS_DIR

    def _open(self, *, create: bool) -> None:
        """Check the repository is ours; with `create`, make one in an absent or empty directory."""
        marker = self.repository / MARKER_FILE
        if create and not marker.exists():
            if self.repository.is_dir() and not _is_blank(self.repository):
                raise UsageError(f"{self.repository} is neither empty nor a snapport archive repository")
            self.repository.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
            self.sets_dir.mkdir(mode=_DIR_MODE, exist_ok=True)
            tmp = self.repository / f".{MARKER_FILE}.{secrets.token_hex(4)}"
            _write_file(tmp, (json.dumps({"format": REPOSITORY_FORMAT, "engine": ENGINE_NAME}) + "\n").encode())
            tmp.replace(marker)
            fsync_dir(self.repository)
            return
        if not self.repository.is_dir():
            raise ObjectNotFound(f"no archive repository at {self.repository}")
        try:
            info = json.loads(_read_file(marker))
            version = field(info, "format", int)
        except FileNotFoundError:
            raise ObjectNotFound(f"{self.repository} is not a snapport archive repository (no {MARKER_FILE})") from None
        except (OSError, ValueError, AttributeError) as exc:
            raise UsageError(f"{marker} is unreadable: {exc}") from None
        if version != REPOSITORY_FORMAT or info.get("engine") != ENGINE_NAME:
            raise UsageError(f"{self.repository} is a repository of format {version}; this snapport reads format 1")
        if create:
            self.sets_dir.mkdir(mode=_DIR_MODE, exist_ok=True)

    def _lock(self) -> FileLock:
        """The repository lock: held briefly to create or publish a set's directory, and to prune."""
        return FileLock(self.repository / "lock", timeout_s=PUBLISH_LOCK_WAIT_S, what="the repository lock")

    def prune_incomplete(self) -> tuple[Path, ...]:
        """Remove what interrupted backups left; the temporary directory of a backup still running stays."""
        self._open(create=False)
        removed = []
        with self._lock():
            for path in incomplete_sets(self.repository):
                try:
                    with _locked_dir(path):
                        shutil.rmtree(path)
                except (BlockingIOError, FileNotFoundError):
                    continue  # a live backup holds it, or it just went
                removed.append(path)
        if removed:
            fsync_dir(self.sets_dir)
        return tuple(removed)

    def list(self) -> tuple[SetSummary, ...]:
        """The published sets, oldest first; a set whose `set.json` cannot be read is listed as unreadable."""
        self._open(create=False)
        found = []
        for path in self.sets_dir.iterdir() if self.sets_dir.is_dir() else ():
            try:
                set_id = uuid.UUID(path.name)
            except ValueError:
                continue  # temporary directories and anything else
            if str(set_id) != path.name or not path.is_dir():
                continue
            try:
                record = SetRecord.from_bytes(_read_file(path / SET_FILE))
            except (OSError, ValueError):
                found.append(SetSummary(set_id, readable=False))
                continue
            found.append(
                SetSummary(
                    set_id=set_id,
                    originating_host=record.originating_host,
                    created=record.created,
                    components=tuple(c.component for c in record.components),
                    files=record.files,
                    bytes=record.content_bytes,
                    stored_bytes=record.archive.size + record.manifest.size,
                )
            )
        epoch = datetime.min.replace(tzinfo=UTC)
        return tuple(sorted(found, key=lambda s: (s.created or epoch, str(s.set_id))))

    # -- backup -------------------------------------------------------------------------------------------------

    def backup(
        self,
        documents: SetDocuments,
        components: Sequence[ComponentSource],
        mapping: PathMapper,
        progress: ProgressCallback | None = None,
    ) -> BackupResult:
        """Back up `components` from the exposed copy behind `mapping`; publish all of the set or nothing."""
        started = time.monotonic()
        try:
            self._open(create=True)
        except OSError as exc:
            raise SystemCommandError(f"cannot use {self.repository} as a repository: {exc}") from exc
        set_id = documents.set_id
        final = self.sets_dir / str(set_id)
        if final.exists():
            raise BadState(f"set {set_id} is already in repository {self.repository}; a set is never overwritten")
        meter = _Meter(progress, self.progress_interval_s)
        meter(Phase.SCAN, 0, 0, force=True)
        inject("engine.scan")
        selection = select(components, mapping, tick=lambda n: meter(Phase.SCAN, n, 0))
        tmp = self.sets_dir / f"{TMP_PREFIX}{set_id}-{secrets.token_hex(6)}"
        published = False
        try:
            with contextlib.ExitStack() as stack:
                with self._lock():  # so that prune_incomplete never sees the directory before it is locked
                    tmp.mkdir(mode=_DIR_MODE)
                    stack.enter_context(_locked_dir(tmp))
                record = self._write_set(tmp, documents, components, selection, meter)
                totals = (record.files, record.content_bytes)
                meter(Phase.PUBLISH, *totals, totals, force=True)
                inject("engine.publish")  # the temporary set is complete and fsynced; not yet renamed into place
                with self._lock():
                    if final.exists():
                        raise BadState(f"set {set_id} appeared in repository {self.repository} during this backup")
                    tmp.rename(final)  # atomic; refused if a (non-empty) set directory is there
                    published = True
            fsync_dir(self.sets_dir)
        except OSError as exc:
            raise SystemCommandError(f"backup of set {set_id} into {self.repository} failed: {exc}") from exc
        finally:
            if not published:
                shutil.rmtree(tmp, ignore_errors=True)
        return BackupResult(
            set_id=set_id,
            engine=self.name,
            location=str(final),
            digest_algorithm=record.digest_algorithm,
            components=record.components,
            files=record.files,
            bytes=record.content_bytes,
            stored_bytes=record.archive.size + record.manifest.size,
            duration_s=time.monotonic() - started,
        )

    def _write_set(
        self,
        tmp: Path,
        documents: SetDocuments,
        components: Sequence[ComponentSource],
        selection: Selection,
        meter: _Meter,
    ) -> SetRecord:
        """Every file of the set into `tmp`, each fsynced: documents, archive, manifest, and set.json last."""
        algorithm = self.digest_algorithm
        # The documents first: they are validated as they are written, so a bad one fails before any data is read.
        saved = save_documents(tmp, documents.bcd, documents.writers)
        doc_digests = tuple(
            sorted((p.relative_to(tmp).as_posix(), digest_bytes(algorithm, _read_file(p))) for p in saved)
        )
        digests, extras, archive = self._write_archive(tmp / ARCHIVE_FILE, selection.entries, meter)
        entries = tuple(
            ManifestEntry.of(e, d, x.xattrs, x.data_map)
            for e, d, x in zip(selection.entries, digests, extras, strict=True)
        )
        results = []
        lines = [e.line() for e in entries]
        for source, members, skipped in zip(components, selection.members, selection.skipped, strict=True):
            mine = [entries[i] for i in members]
            results.append(
                ComponentResult(
                    writer_id=source.writer_id,
                    component=source.full_path,
                    files=sum(1 for e in mine if e.type is not EntryType.DIRECTORY),
                    bytes=sum(e.size for e in mine),
                    digest=component_digest(algorithm, (lines[i] for i in members)),
                    skipped=skipped,
                )
            )
        manifest = Manifest(documents.set_id, algorithm, entries, tuple(zip(results, selection.members, strict=True)))
        manifest_bytes = manifest.to_bytes(lines)
        _write_file(tmp / MANIFEST_FILE, manifest_bytes)
        stored = [e for e in entries if e.type is not EntryType.DIRECTORY]
        record = SetRecord(
            set_id=documents.set_id,
            originating_host=documents.bcd.originating_host,
            context=documents.bcd.snapshot_set.context.value,
            created=datetime.now(UTC),
            digest_algorithm=algorithm,
            components=tuple(results),
            entries=len(entries),
            files=len(stored),
            content_bytes=sum(e.size for e in stored if e.type is EntryType.FILE),
            archive=archive,
            manifest=Part(len(manifest_bytes), digest_bytes(algorithm, manifest_bytes)),
            documents=doc_digests,
            compression_level=self.level,
        )
        _write_file(tmp / SET_FILE, record.to_bytes())
        fsync_dir(tmp / WRITERS_DIR_NAME)
        fsync_dir(tmp)
        return record

    def _write_archive(
        self, path: Path, entries: Sequence[Entry], meter: _Meter
    ) -> tuple[tuple[str, ...], tuple[_Loaded, ...], Part]:
        """Stream every entry into `path`; returns each entry's content digest ("" if none), what was read beside
        its content (xattrs, sparse map), and the archive's size and digest. A pool of threads opens, reads and
        digests the next files (small ones whole), so a cold device sees many reads in flight rather than one; this
        thread builds headers and streams larger files into the archive's buffer; the `_FrameSink`'s threads
        compress."""
        total = (
            sum(1 for e in entries if e.type is not EntryType.DIRECTORY),
            sum(e.size for e in entries if e.type is EntryType.FILE),
        )
        archive_hasher = new_hasher(self.digest_algorithm)
        digests: list[str] = []
        extras: list[_Loaded] = []
        by_path: dict[str, str] = {}
        done = [0, 0]  # files, bytes
        injected = False

        def progress(bytes_done: int) -> None:
            meter(Phase.BACKUP, done[0], bytes_done, total)
            reached(bytes_done)

        def reached(bytes_done: int) -> None:
            nonlocal injected
            if not injected and bytes_done * 2 >= total[1]:
                injected = True
                inject("engine.backup")  # mid-way (inside a streamed file, if one crosses it): nothing published

        with (
            memory.streaming(),
            _ReadAhead(entries, self.digest_algorithm) as ahead,
            _create(path) as raw,
            _FrameSink(
                raw, self._frame_level, self.workers, archive_hasher, adapt=self.compression == "adaptive"
            ) as sink,
        ):
            meter(Phase.BACKUP, 0, 0, total, force=True)
            for entry in entries:
                loaded = ahead.next()
                try:
                    sink.write(tar_header(entry, loaded.xattrs, loaded.data_map))
                except BaseException:
                    if loaded.fd is not None:  # not yet handed to `_stream`, which closes it
                        os.close(loaded.fd)
                    raise
                digest = ""
                if entry.type is EntryType.FILE:
                    if loaded.data is not None:
                        digest = loaded.digest
                        sink.write(loaded.data)
                    else:
                        digest = self._stream(entry, loaded, sink, lambda n: progress(done[1] + n))
                    sink.write(_ZEROS[: -sink.tar_bytes % _BLOCK])
                    by_path[entry.path] = digest
                    done[1] += entry.size
                elif entry.type is EntryType.HARDLINK:
                    digest = by_path[entry.link_target]
                digests.append(digest)
                extras.append(_Loaded(loaded.xattrs, loaded.data_map) if loaded.xattrs or loaded.data_map else _PLAIN)
                if entry.type is not EntryType.DIRECTORY:
                    done[0] += 1
                meter(Phase.BACKUP, done[0], done[1], total)
                if entry.type is EntryType.FILE:
                    reached(done[1])
            sink.finish()
            raw.flush()
            os.fsync(raw.fileno())
        meter(Phase.BACKUP, done[0], done[1], total, force=True)
        return tuple(digests), tuple(extras), Part(sink.stored_bytes, archive_hasher.hexdigest())

    def _stream(self, entry: Entry, loaded: _Loaded, sink: _FrameSink, advance: Callable[[int], None]) -> str:
        """Append one larger file's content (a sparse file's data extents only) to the archive, read straight into
        the archive's buffer; returns the digest of the whole content (holes digested as the zeros they read as)."""
        hasher = new_hasher(self.digest_algorithm)
        fd = loaded.fd
        assert fd is not None
        try:
            extents = loaded.data_map if loaded.data_map is not None else ((0, entry.size),)
            position = 0
            for offset, length in extents:
                _digest_zeros(hasher, offset - position)
                done = 0
                while done < length:
                    if done % (4 * CHUNK) == 0:  # keep the device reading ahead of this thread
                        with contextlib.suppress(OSError):
                            os.posix_fadvise(fd, offset + done + 4 * CHUNK, 16 * CHUNK, os.POSIX_FADV_WILLNEED)
                    space = sink.space()
                    chunk = space[: min(len(space), CHUNK, length - done)]
                    n = os.preadv(fd, [chunk], offset + done)
                    if not n:
                        raise BadState(f"{entry.path} shrank while it was backed up: the exposed copy is not stable")
                    hasher.update(chunk[:n])
                    sink.advance(n)
                    done += n
                    advance(offset + done)
                position = offset + length
            _digest_zeros(hasher, entry.size - position)
        finally:
            os.close(fd)
        return hasher.hexdigest()

    # -- documents and restore ----------------------------------------------------------------------------------

    def _set_dir(self, set_id: uuid.UUID) -> Path:
        self._open(create=False)
        set_dir = self.sets_dir / str(set_id)
        if not set_dir.is_dir():
            raise ObjectNotFound(f"no set {set_id} in repository {self.repository}")
        return set_dir

    def documents(self, set_id: uuid.UUID) -> SetDocuments:
        """The set's BCD and WMDs as stored (parsed and schema-validated as any document is)."""
        bcd, writers = load_documents(self._set_dir(set_id))
        return SetDocuments(bcd, tuple(writers))

    def restore(
        self,
        set_id: uuid.UUID,
        target: Path,
        *,
        components: Sequence[ComponentKey] | None = None,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> RestoreResult:
        """Restore the set (or the chosen components) under `target`; see `archive_restore` for the guarantees."""
        started = time.monotonic()
        inject("engine.restore")
        set_dir = self._set_dir(set_id)
        try:
            record = SetRecord.from_bytes(_read_file(set_dir / SET_FILE))
            data = _read_file(set_dir / MANIFEST_FILE)
            if Part(len(data), digest_bytes(record.digest_algorithm, data)) != record.manifest:
                raise ValueError("the manifest differs from its digest in set.json")
            manifest = Manifest.from_bytes(data)
            if manifest.set_id != set_id or record.set_id != set_id:
                raise ValueError("set.json or the manifest describe another set")
        except (OSError, ValueError, KeyError, UsageError) as exc:
            raise BadState(f"set {set_id} is damaged ({exc}); `snapport verify` names the damage") from None
        for entry in manifest.entries:
            target_parts(entry.path)  # every name is checked before anything is written
            if entry.type is EntryType.HARDLINK:
                target_parts(entry.link_target)
        meter = _Meter(progress, self.progress_interval_s)
        job = Restore(set_id, manifest, -1, overwrite, lambda f, b, force: None)
        keys, members = job.chosen(components)  # an unknown component is refused before the target is touched
        totals = (
            sum(1 for i in members if manifest.entries[i].type is not EntryType.DIRECTORY),
            sum(manifest.entries[i].size for i in members if manifest.entries[i].type is EntryType.FILE),
        )
        target_fd, made = prepare_target(Path(target), overwrite)
        job.target_fd = target_fd
        job.tick = lambda files, nbytes, force: meter(Phase.RESTORE, files, nbytes, totals, force=force)
        meter(Phase.RESTORE, 0, 0, totals, force=True)
        try:
            with (set_dir / ARCHIVE_FILE).open("rb") as raw, ZstdFile(raw, "r") as stream:
                forward = _ForwardReader(stream)
                tar = tarfile.open(fileobj=forward, mode="r:")  # noqa: SIM115  (closes nothing it was given)
                job.run(members, tar, forward)
        except BaseException as exc:
            job.undo()
            os.close(target_fd)
            if made:
                with contextlib.suppress(OSError):
                    Path(target).rmdir()
            if isinstance(exc, (tarfile.TarError, EOFError)) or type(exc).__name__ == "ZstdError":
                raise BadState(f"set {set_id} is damaged ({exc}); `snapport verify` names the damage") from None
            if isinstance(exc, OSError):
                raise SystemCommandError(f"restore of set {set_id} into {target} failed: {exc}") from exc
            raise
        os.close(target_fd)
        return RestoreResult(set_id, self.name, Path(target), keys, job.files, job.bytes, time.monotonic() - started)

    # -- verify -------------------------------------------------------------------------------------------------

    def verify(self, set_id: uuid.UUID, progress: ProgressCallback | None = None) -> VerifyReport:
        """Re-read the whole set: every part against its digest, the documents, and every archive member against
        the manifest (type, metadata, size, content digest). Damage is reported, not raised."""
        started = time.monotonic()
        inject("engine.verify")
        self._open(create=False)
        set_dir = self.sets_dir / str(set_id)
        if not set_dir.is_dir():
            raise ObjectNotFound(f"no set {set_id} in repository {self.repository}")
        check = _Verification(set_dir, set_id, self.digest_algorithm, _Meter(progress, self.progress_interval_s))
        check.run()
        return VerifyReport(
            set_id, self.name, tuple(check.problems), check.files, check.bytes, time.monotonic() - started
        )


class _Verification:
    """One verify run over one set directory; collects problems instead of stopping at the first."""

    def __init__(self, set_dir: Path, set_id: uuid.UUID, algorithm: str, meter: _Meter) -> None:
        self.set_dir = set_dir
        self.set_id = set_id
        self.algorithm = algorithm
        self.meter = meter
        self.problems: list[Problem] = []
        self.record: SetRecord | None = None
        self.manifest: Manifest | None = None
        self.files = 0
        self.bytes = 0

    def problem(self, kind: ProblemKind, path: str | None, detail: str = "") -> None:
        self.problems.append(Problem(kind, path, detail))

    def run(self) -> None:
        self.record = self._record()
        if self.record is not None:
            self.algorithm = self.record.digest_algorithm
        self.manifest = self._manifest()
        self._documents()
        self._extra_parts()
        self._archive()

    def _record(self) -> SetRecord | None:
        try:
            record = SetRecord.from_bytes(_read_file(self.set_dir / SET_FILE))
            new_hasher(record.digest_algorithm)
        except FileNotFoundError:
            self.problem(ProblemKind.MISSING_PART, SET_FILE, "the set's description is missing")
            return None
        except (OSError, ValueError, UsageError) as exc:
            self.problem(ProblemKind.SET_INVALID, SET_FILE, f"unreadable: {exc}")
            return None
        if record.set_id != self.set_id:
            self.problem(ProblemKind.SET_INVALID, SET_FILE, f"describes set {record.set_id}")
        return record

    def _manifest(self) -> Manifest | None:
        record, algorithm = self.record, self.algorithm
        try:
            data = _read_file(self.set_dir / MANIFEST_FILE)
        except FileNotFoundError:
            self.problem(ProblemKind.MISSING_PART, MANIFEST_FILE)
            return None
        if record is not None and Part(len(data), digest_bytes(algorithm, data)) != record.manifest:
            self.problem(ProblemKind.MANIFEST_DIGEST, MANIFEST_FILE, "differs from its digest in set.json")
        try:
            manifest = Manifest.from_bytes(data)
        except (ValueError, KeyError) as exc:
            self.problem(ProblemKind.MANIFEST_INVALID, MANIFEST_FILE, str(exc))
            return None
        if manifest.set_id != self.set_id or manifest.digest_algorithm != algorithm:
            self.problem(ProblemKind.MANIFEST_INVALID, MANIFEST_FILE, "set id or digest algorithm differ from set.json")
        in_record: dict[tuple[uuid.UUID, str], str] = (
            {(c.writer_id, c.component): c.digest for c in record.components} if record else {}
        )
        for component, members in manifest.components:
            actual = component_digest(algorithm, (manifest.entries[i].line() for i in members))
            recorded = {component.digest, in_record.get((component.writer_id, component.component), actual)}
            if recorded != {actual}:
                self.problem(ProblemKind.COMPONENT_DIGEST, component.component, f"of writer {component.writer_id}")
        if record is not None:
            stored = [e for e in manifest.entries if e.type is not EntryType.DIRECTORY]
            totals = (len(manifest.entries), len(stored), sum(e.size for e in stored if e.type is EntryType.FILE))
            if totals != (record.entries, record.files, record.content_bytes) or len(in_record) != len(
                manifest.components
            ):
                self.problem(ProblemKind.SET_INVALID, SET_FILE, "its totals or components disagree with the manifest")
        return manifest

    def _documents(self) -> None:
        for name, digest in self.record.documents if self.record else ():
            try:
                actual = digest_bytes(self.algorithm, _read_file(self.set_dir / name))
            except FileNotFoundError:
                self.problem(ProblemKind.MISSING_PART, name)
                continue
            if actual != digest:
                self.problem(ProblemKind.DOCUMENT_DIGEST, name, "differs from its digest in set.json")
        try:
            bcd, _ = load_documents(self.set_dir)
        except DocumentError as exc:
            self.problem(ProblemKind.DOCUMENT_INVALID, None, exc.message)
            return
        if bcd.set_id != self.set_id:
            self.problem(ProblemKind.DOCUMENT_INVALID, BCD_FILE_NAME, f"describes set {bcd.set_id}")

    def _extra_parts(self) -> None:
        expected = {SET_FILE, MANIFEST_FILE, ARCHIVE_FILE, BCD_FILE_NAME, WRITERS_DIR_NAME}
        expected |= {name for name, _ in self.record.documents} if self.record else set()
        for path in sorted(self.set_dir.rglob("*")):
            name = path.relative_to(self.set_dir).as_posix()
            if name not in expected and (self.record is not None or not name.startswith(f"{WRITERS_DIR_NAME}/")):
                self.problem(ProblemKind.EXTRA_PART, name, "not described by set.json")

    def _archive(self) -> None:
        """Stream the archive once: each member against the manifest, the tar structure, zstd's frame checksum,
        and the digest of the compressed file itself (which catches a flipped byte anywhere)."""
        record = self.record
        entries = self.manifest.entries if self.manifest else ()
        expected = {member_name(e.path): e for e in entries}
        seen: set[str] = set()
        archive_hasher = new_hasher(self.algorithm)
        try:
            raw = (self.set_dir / ARCHIVE_FILE).open("rb")
        except FileNotFoundError:
            self.problem(ProblemKind.MISSING_PART, ARCHIVE_FILE)
            return
        failure: Problem | None = None
        with raw:
            reader = _HashingReader(raw, archive_hasher)
            try:
                with ZstdFile(reader, "r") as stream:
                    # "r:" reads members straight from the zstd stream with large reads; every seek it makes on a
                    # sequential walk is forward (it does not close the stream it was given).
                    tar = tarfile.open(fileobj=_ForwardReader(stream), mode="r:")  # noqa: SIM115
                    for member in tar:
                        if self.manifest is None:
                            continue  # nothing to compare with: the stream itself is still checked to its end
                        entry = expected.get(member.name)
                        if entry is None or member.name in seen:
                            self.problem(ProblemKind.EXTRA_MEMBER, "/" + member.name.lstrip("/"))
                            continue
                        seen.add(member.name)
                        self._member(tar, member, entry)
                    while block := stream.read(CHUNK):  # the rest: zero padding, then zstd's checksum is checked
                        if block.count(0) != len(block):
                            failure = Problem(
                                ProblemKind.CORRUPT, ARCHIVE_FILE, "data after the end of the tar archive"
                            )
                            break
            except EOFError as exc:
                failure = Problem(ProblemKind.TRUNCATED, ARCHIVE_FILE, f"the compressed stream ends early ({exc})")
            except Exception as exc:  # whatever damage makes zstd or tarfile raise is damage to report
                failure = Problem(ProblemKind.CORRUPT, ARCHIVE_FILE, f"{type(exc).__name__}: {exc}")
            reader.drain()
        recorded = record.archive if record else None
        if failure is not None:
            if recorded is not None and reader.size < recorded.size:  # a short file explains the damage
                failure = Problem(ProblemKind.TRUNCATED, ARCHIVE_FILE, failure.detail)
            self.problems.append(failure)
        if recorded is not None and Part(reader.size, archive_hasher.hexdigest()) != recorded:
            sizes = f"{reader.size} bytes, set.json says {recorded.size}"
            detail = sizes if reader.size != recorded.size else "same size, different content"
            self.problem(ProblemKind.ARCHIVE_DIGEST, ARCHIVE_FILE, detail)
        missing = [e for e in entries if member_name(e.path) not in seen]
        if failure is not None and missing:
            self.problem(ProblemKind.MISSING_FILE, None, f"{len(missing)} of {len(entries)} entries could not be read")
        else:
            for e in missing:
                self.problem(ProblemKind.MISSING_FILE, e.path, "in the manifest, not in the archive")
        self.meter(Phase.VERIFY, self.files, self.bytes, self._total(), force=True)

    def _total(self) -> tuple[int, int] | None:
        return (self.record.files, self.record.content_bytes) if self.record else None

    def _member(self, tar: tarfile.TarFile, member: tarfile.TarInfo, entry: ManifestEntry) -> None:
        """Compare one member with its manifest entry, content included."""
        kind = ENTRY_TYPES.get(member.type)
        if kind is not entry.type:
            found = kind.value if kind else repr(member.type)
            self.problem(ProblemKind.METADATA_MISMATCH, entry.path, f"type {found}, manifest {entry.type.value}")
            return
        if kind is not EntryType.DIRECTORY:
            self.files += 1
        link = member_name(entry.link_target) if kind is EntryType.HARDLINK else entry.link_target
        device = (member.devmajor, member.devminor)
        differences = [
            f"{what} {found}, manifest {wanted}"
            for what, found, wanted in (
                ("mode", oct(member.mode), oct(entry.mode)),
                ("uid", member.uid, entry.uid),
                ("gid", member.gid, entry.gid),
                ("mtime_ns", member_mtime_ns(member), entry.mtime_ns),
                ("link target", member.linkname, link),
                ("device", device, entry.rdev or device),
                ("xattrs", _names(member_xattrs(member)), _names(entry.xattrs)),
                ("data map", member_data_map(member), entry.data_map),
            )
            if found != wanted
        ]
        if not differences and member_xattrs(member) != entry.xattrs:
            differences.append("xattr values differ from the manifest")
        if differences:
            self.problem(ProblemKind.METADATA_MISMATCH, entry.path, "; ".join(differences))
        if kind is EntryType.FILE:
            self._content(tar, member, entry)
        self.meter(Phase.VERIFY, self.files, self.bytes, self._total())

    def _content(self, tar: tarfile.TarFile, member: tarfile.TarInfo, entry: ManifestEntry) -> None:
        if member.size != entry.size:
            self.problem(ProblemKind.SIZE_MISMATCH, entry.path, f"{member.size} bytes, manifest {entry.size}")
        data = tar.extractfile(member)
        if data is None:
            self.problem(ProblemKind.CORRUPT, entry.path, "a file member without content")
            return
        hasher = new_hasher(self.algorithm)
        with data:
            while chunk := data.read(CHUNK):
                hasher.update(chunk)
                self.bytes += len(chunk)
                self.meter(Phase.VERIFY, self.files, self.bytes, self._total())
        if hasher.hexdigest() != entry.digest:
            self.problem(ProblemKind.DIGEST_MISMATCH, entry.path, "content differs from the manifest")


def _names(xattrs: Sequence[tuple[str, bytes]]) -> list[str]:
    return [name for name, _ in xattrs]


def incomplete_sets(repository: Path) -> list[Path]:
    """Temporary set directories in `repository`: backups being written, or left by interrupted ones."""
    sets_dir = repository / SETS_DIR
    return sorted(sets_dir.glob(f"{TMP_PREFIX}*")) if sets_dir.is_dir() else []
