"""One archive backup: every file of a set written into a (temporary) set directory, each fsynced: the documents,
the archive, the manifest, and set.json last.

The archive is written by three kinds of thread: the read-ahead pool (`readahead`) opens, reads and digests the
next files; the caller's thread builds each member's header and streams larger files straight into the archive's
buffer; the frame sink's threads (`frames`) compress and write. Every 64 MiB the writeback of what was written
starts, so the final fsync has little left to do.
"""

from __future__ import annotations

import contextlib
import os
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from snapport.documents import WRITERS_DIR_NAME, save_documents
from snapport.engines.archive.format import (
    ARCHIVE_FILE,
    MANIFEST_FILE,
    SET_FILE,
    Manifest,
    ManifestEntry,
    Part,
    SetRecord,
    component_digest,
)
from snapport.engines.archive.frames import STORED, FrameSink
from snapport.engines.archive.members import tar_header
from snapport.engines.archive.progress import Meter
from snapport.engines.archive.readahead import Loaded, ReadAhead
from snapport.engines.archive.repository import create_file, read_file, write_file
from snapport.engines.archive.stream import CHUNK
from snapport.engines.base import ComponentResult, ComponentSource, Phase, SetDocuments
from snapport.engines.digest import digest_bytes, digest_zeros, new_hasher
from snapport.engines.walk import Entry, EntryType, Selection
from snapport.errors import BadState
from snapport.faults import inject
from snapport.osal import memory
from snapport.osal.atomic import fsync_dir

_BLOCK = tarfile.BLOCKSIZE
_PADDING = bytes(_BLOCK)  # a file member's data ends on a block boundary
_PLAIN = Loaded()


@dataclass(frozen=True, slots=True)
class Settings:
    """How a backup compresses and digests (the engine's constructor arguments, validated there)."""

    level: int  # zstd level of every frame (fixed), or the most any frame gets (adaptive)
    compression: str  # one of frames.COMPRESSION_MODES
    workers: int  # compressing threads; 0: in the caller's thread
    digest_algorithm: str

    @property
    def first_frame_level(self) -> int | None:
        """The level of the first frame (`STORED` without compression)."""
        return STORED if self.compression == "none" else self.level


def write_set(
    tmp: Path,
    documents: SetDocuments,
    components: Sequence[ComponentSource],
    selection: Selection,
    *,
    settings: Settings,
    meter: Meter,
) -> SetRecord:
    """Every file of the set into `tmp`, each fsynced: documents, archive, manifest, and set.json last."""
    algorithm = settings.digest_algorithm
    # The documents first: they are validated as they are written, so a bad one fails before any data is read.
    saved = save_documents(tmp, documents.bcd, documents.writers)
    doc_digests = tuple(sorted((p.relative_to(tmp).as_posix(), digest_bytes(algorithm, read_file(p))) for p in saved))
    digests, extras, archive = _write_archive(tmp / ARCHIVE_FILE, selection.entries, settings, meter)
    entries = tuple(
        ManifestEntry.of(e, d, x.xattrs, x.data_map) for e, d, x in zip(selection.entries, digests, extras, strict=True)
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
    write_file(tmp / MANIFEST_FILE, manifest_bytes)
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
        compression_level=settings.level,
    )
    write_file(tmp / SET_FILE, record.to_bytes())
    fsync_dir(tmp / WRITERS_DIR_NAME)
    fsync_dir(tmp)
    return record


def _write_archive(
    path: Path, entries: Sequence[Entry], settings: Settings, meter: Meter
) -> tuple[tuple[str, ...], tuple[Loaded, ...], Part]:
    """Stream every entry into `path`; returns each entry's content digest ("" if none), what was read beside
    its content (xattrs, sparse map), and the archive's size and digest. A pool of threads opens, reads and
    digests the next files (small ones whole), so a cold device sees many reads in flight rather than one; this
    thread builds headers and streams larger files into the archive's buffer; the `FrameSink`'s threads
    compress."""
    total = (
        sum(1 for e in entries if e.type is not EntryType.DIRECTORY),
        sum(e.size for e in entries if e.type is EntryType.FILE),
    )
    archive_hasher = new_hasher(settings.digest_algorithm)
    digests: list[str] = []
    extras: list[Loaded] = []
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
        ReadAhead(entries, settings.digest_algorithm) as ahead,
        create_file(path) as raw,
        FrameSink(
            raw,
            settings.first_frame_level,
            settings.workers,
            archive_hasher,
            adapt=settings.compression == "adaptive",
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
                    digest = _stream(entry, loaded, sink, settings.digest_algorithm, lambda n: progress(done[1] + n))
                sink.write(_PADDING[: -sink.tar_bytes % _BLOCK])
                by_path[entry.path] = digest
                done[1] += entry.size
            elif entry.type is EntryType.HARDLINK:
                digest = by_path[entry.link_target]
            digests.append(digest)
            extras.append(Loaded(loaded.xattrs, loaded.data_map) if loaded.xattrs or loaded.data_map else _PLAIN)
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


def _stream(entry: Entry, loaded: Loaded, sink: FrameSink, algorithm: str, advance: Callable[[int], None]) -> str:
    """Append one larger file's content (a sparse file's data extents only) to the archive, read straight into
    the archive's buffer; returns the digest of the whole content (holes digested as the zeros they read as)."""
    hasher = new_hasher(algorithm)
    fd = loaded.fd
    assert fd is not None
    try:
        extents = loaded.data_map if loaded.data_map is not None else ((0, entry.size),)
        position = 0
        for offset, length in extents:
            digest_zeros(hasher, offset - position)
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
        digest_zeros(hasher, entry.size - position)
    finally:
        os.close(fd)
    return hasher.hexdigest()
