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

import contextlib
import fcntl
import io
import json
import os
import secrets
import shutil
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol

from backports.zstd import CompressionParameter, ZstdCompressor, ZstdFile

from snapport.documents import BCD_FILE_NAME, WRITERS_DIR_NAME, load_documents, save_documents
from snapport.engines.archive_format import (
    ARCHIVE_FILE,
    ENGINE_NAME,
    ENTRY_TYPES,
    FORMAT_VERSION,
    MANIFEST_FILE,
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
    member_mtime_ns,
    member_name,
    new_hasher,
    tar_header,
)
from snapport.engines.base import (
    BackupResult,
    Capabilities,
    ComponentResult,
    ComponentSource,
    PathMapper,
    Phase,
    Problem,
    ProblemKind,
    Progress,
    ProgressCallback,
    SetDocuments,
    SetSummary,
    VerifyReport,
)
from snapport.engines.walk import Entry, EntryType, Selection, open_checked, select
from snapport.errors import BadState, DocumentError, ObjectNotFound, SystemCommandError, UsageError
from snapport.faults import inject
from snapport.osal.atomic import fsync_dir
from snapport.osal.lock import FileLock

if TYPE_CHECKING:
    from typing_extensions import Buffer

MARKER_FILE = "snapport-repository.json"
SETS_DIR = "sets"
TMP_PREFIX = ".tmp-"
CHUNK = 1 << 20
DEFAULT_LEVEL = 1  # ~30% less CPU than zstd's default 3 for 1-2% more bytes on mixed data (bench/archive_engine.py)
PUBLISH_LOCK_WAIT_S = 60.0
_FILE_MODE = 0o600  # a backup holds every secret of the volume it copies
_DIR_MODE = 0o700
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE


# -- streams -----------------------------------------------------------------------------------------------------


class _ArchiveSink:
    """Tar bytes in, one zstd frame out to `raw`; the compressed bytes are digested and counted as they go."""

    def __init__(self, raw: IO[bytes], compressor: ZstdCompressor, hasher: Hasher) -> None:
        self._raw = raw
        self._compressor = compressor
        self._hasher = hasher
        self._pending = bytearray()
        self.tar_bytes = 0
        self.stored_bytes = 0

    def write(self, data: bytes | memoryview) -> None:
        self.tar_bytes += len(data)
        if len(data) >= CHUNK // 4:
            self._flush_pending()
            self._emit(self._compressor.compress(data))
            return
        self._pending += data  # headers and small files are batched: zstd is called per MiB, not per block
        if len(self._pending) >= CHUNK:
            self._flush_pending()

    def finish(self) -> None:
        """The end-of-archive marker (two zero blocks), padding to a whole record, and the end of the frame."""
        end = 2 * _BLOCK
        self.write(bytes(end + (-(self.tar_bytes + end) % _RECORD)))
        self._flush_pending()
        self._emit(self._compressor.flush())

    def _flush_pending(self) -> None:
        if self._pending:
            self._emit(self._compressor.compress(self._pending))
            self._pending.clear()

    def _emit(self, out: bytes) -> None:
        if out:
            self._raw.write(out)
            self._hasher.update(out)
            self.stored_bytes += len(out)


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


# -- the engine --------------------------------------------------------------------------------------------------


class ArchiveEngine:
    """The `archive` engine on the repository directory `repository` (created by the first backup into it)."""

    name = ENGINE_NAME
    capabilities = Capabilities(
        restore=False,
        incremental=False,
        preserves=frozenset({"content", "mode", "owner", "mtime", "symlink", "hardlink", "device", "fifo"}),
    )

    def __init__(
        self,
        repository: Path,
        *,
        level: int = DEFAULT_LEVEL,
        workers: int | None = None,
        digest_algorithm: str | None = None,
        progress_interval_s: float = 0.2,
    ) -> None:
        self.repository = Path(repository)
        self.level = level
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self.digest_algorithm = digest_algorithm or default_digest_algorithm()
        new_hasher(self.digest_algorithm)  # refuse an unavailable algorithm now, not after reading the data
        self.progress_interval_s = progress_interval_s

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
            _write_file(tmp, (json.dumps({"format": FORMAT_VERSION, "engine": ENGINE_NAME}) + "\n").encode())
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
        if version != FORMAT_VERSION or info.get("engine") != ENGINE_NAME:
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
        digests, archive = self._write_archive(tmp / ARCHIVE_FILE, selection.entries, meter)
        entries = tuple(ManifestEntry.of(e, d) for e, d in zip(selection.entries, digests, strict=True))
        results = []
        for source, members, skipped in zip(components, selection.members, selection.skipped, strict=True):
            mine = [entries[i] for i in members]
            results.append(
                ComponentResult(
                    writer_id=source.writer_id,
                    component=source.full_path,
                    files=sum(1 for e in mine if e.type is not EntryType.DIRECTORY),
                    bytes=sum(e.size for e in mine),
                    digest=component_digest(algorithm, mine),
                    skipped=skipped,
                )
            )
        manifest = Manifest(documents.set_id, algorithm, entries, tuple(zip(results, selection.members, strict=True)))
        manifest_bytes = manifest.to_bytes()
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

    def _write_archive(self, path: Path, entries: Sequence[Entry], meter: _Meter) -> tuple[tuple[str, ...], Part]:
        """Stream every entry into `path`; returns each entry's content digest ("" if none) and the archive's."""
        total = (
            sum(1 for e in entries if e.type is not EntryType.DIRECTORY),
            sum(e.size for e in entries if e.type is EntryType.FILE),
        )
        options: dict[int, int] = {
            CompressionParameter.compression_level: self.level,
            CompressionParameter.checksum_flag: 1,  # zstd checks the content of the frame on decompression
        }
        if self.workers > 0:  # zstd compresses in its own threads while this one reads and digests
            options[CompressionParameter.nb_workers] = self.workers
        archive_hasher = new_hasher(self.digest_algorithm)
        view = memoryview(bytearray(CHUNK))
        digests: list[str] = []
        by_path: dict[str, str] = {}
        done = [0, 0]  # files, bytes
        injected = False
        with _create(path) as raw:
            sink = _ArchiveSink(raw, ZstdCompressor(options=options), archive_hasher)
            meter(Phase.BACKUP, 0, 0, total, force=True)
            for entry in entries:
                sink.write(tar_header(entry))
                digest = ""
                if entry.type is EntryType.FILE:
                    digest = self._copy(entry, sink, view, lambda n: meter(Phase.BACKUP, done[0], done[1] + n, total))
                    by_path[entry.path] = digest
                    done[1] += entry.size
                elif entry.type is EntryType.HARDLINK:
                    digest = by_path[entry.link_target]
                digests.append(digest)
                if entry.type is not EntryType.DIRECTORY:
                    done[0] += 1
                meter(Phase.BACKUP, done[0], done[1], total)
                if not injected and entry.type is EntryType.FILE and done[1] * 2 >= total[1]:
                    injected = True
                    inject("engine.backup")  # mid-way: data written, nothing published
            sink.finish()
            raw.flush()
            os.fsync(raw.fileno())
        meter(Phase.BACKUP, done[0], done[1], total, force=True)
        return tuple(digests), Part(sink.stored_bytes, archive_hasher.hexdigest())

    def _copy(self, entry: Entry, sink: _ArchiveSink, view: memoryview, advance: Callable[[int], None]) -> str:
        """Append one regular file's content, then tar's padding, to the archive; returns the content's digest."""
        hasher = new_hasher(self.digest_algorithm)
        fd = open_checked(entry.source, entry.dev, entry.ino)
        with os.fdopen(fd, "rb", buffering=0) as f:
            with contextlib.suppress(OSError):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            done = 0
            while done < entry.size:
                n = f.readinto(view[: min(CHUNK, entry.size - done)])
                if not n:
                    raise BadState(f"{entry.path} shrank while it was backed up: the exposed copy is not stable")
                chunk = view[:n]
                hasher.update(chunk)
                sink.write(chunk)
                done += n
                if entry.size > CHUNK:
                    advance(done)
        sink.write(bytes(-entry.size % _BLOCK))
        return hasher.hexdigest()

    # -- verify -------------------------------------------------------------------------------------------------

    def verify(self, set_id: uuid.UUID, progress: ProgressCallback | None = None) -> VerifyReport:
        """Re-read the whole set: every part against its digest, the documents, and every archive member against
        the manifest (type, metadata, size, content digest). Damage is reported, not raised."""
        started = time.monotonic()
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
            actual = component_digest(algorithm, [manifest.entries[i] for i in members])
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
            )
            if found != wanted
        ]
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


def incomplete_sets(repository: Path) -> list[Path]:
    """Temporary set directories in `repository`: backups being written, or left by interrupted ones."""
    sets_dir = repository / SETS_DIR
    return sorted(sets_dir.glob(f"{TMP_PREFIX}*")) if sets_dir.is_dir() else []
