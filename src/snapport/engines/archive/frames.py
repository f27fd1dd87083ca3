"""The archive's compressed stream: tar bytes in, independent zstd frames out, one per `SEGMENT` of tar, compressed
side by side by a pool of threads and written in order by a writer thread; with adaptive compression the level
steps down while zstd falls behind the read (to frames stored uncompressed at the last) and back up when it has
time to spare. docs/engines.md ("Throughput") says why these sizes and levels.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import tarfile
import threading
from collections import deque
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

from backports.zstd import CompressionParameter, ZstdCompressor

from snapport.engines.digest import Hasher

if TYPE_CHECKING:
    from typing_extensions import Buffer

DEFAULT_LEVEL = 1  # half the CPU of zstd's default 3; negative levels gain little speed for many more bytes (docs)
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
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


class FrameSink:
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

    def __enter__(self) -> FrameSink:
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
