"""The `archive` engine: the Engine protocol's methods over a directory repository (`repository`), each wiring the
parts that do the work: the walk (`engines.walk`), the set writer (`backup`, which drives `readahead` and
`frames`), `verify` and `restore`. See docs/engines.md.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from snapport.documents import load_documents
from snapport.engines.archive.backup import Settings, write_set
from snapport.engines.archive.format import ENGINE_NAME, MARKER_FILE
from snapport.engines.archive.frames import COMPRESSION_MODES, DEFAULT_LEVEL
from snapport.engines.archive.progress import Meter
from snapport.engines.archive.repository import Repository
from snapport.engines.archive.restore import restore_set
from snapport.engines.archive.verify import Verification
from snapport.engines.base import (
    BackupResult,
    Capabilities,
    ComponentKey,
    ComponentSource,
    Forgotten,
    PathMapper,
    Phase,
    ProgressCallback,
    RestoreResult,
    SetDocuments,
    SetSummary,
    VerifyReport,
)
from snapport.engines.digest import default_digest_algorithm, new_hasher
from snapport.engines.walk import select
from snapport.errors import BadState, SystemCommandError, UsageError
from snapport.faults import inject


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
        private_mount_namespace=False,
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
        self._repository = Repository(self.repository)

    @staticmethod
    def recognises(directory: Path) -> bool:
        """Whether `directory` is an archive repository (it holds the marker file)."""
        return (directory / MARKER_FILE).is_file()

    @property
    def sets_dir(self) -> Path:
        return self._repository.sets_dir

    def prune_incomplete(self) -> tuple[str, ...]:
        """Remove what interrupted backups and forgets left; the temporary directory of a backup still running
        stays."""
        return tuple(str(path) for path in self._repository.prune_incomplete())

    def forget(self, set_ids: Sequence[uuid.UUID]) -> Forgotten:
        """Remove the sets named, each whole; one being verified or restored is kept (in use)."""
        return self._repository.forget(set_ids)

    def list(self) -> tuple[SetSummary, ...]:
        """The published sets, oldest first; a set whose `set.json` cannot be read is listed as unreadable."""
        return self._repository.list()

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
            self._repository.open(create=True)
        except OSError as exc:
            raise SystemCommandError(f"cannot use {self.repository} as a repository: {exc}") from exc
        set_id = documents.set_id
        final = self.sets_dir / str(set_id)
        if final.exists():
            raise BadState(f"set {set_id} is already in repository {self.repository}; a set is never overwritten")
        meter = Meter(progress, self.progress_interval_s)
        meter(Phase.SCAN, 0, 0, force=True)
        inject("engine.scan")
        selection = select(components, mapping, tick=lambda n: meter(Phase.SCAN, n, 0))
        settings = Settings(self.level, self.compression, self.workers, self.digest_algorithm)
        try:
            with self._repository.new_set(set_id) as tmp:
                record = write_set(tmp, documents, components, selection, settings=settings, meter=meter)
                totals = (record.files, record.content_bytes)
                meter(Phase.PUBLISH, *totals, totals, force=True)
                inject("engine.publish")  # the temporary set is complete and fsynced; not yet renamed into place
        except OSError as exc:
            raise SystemCommandError(f"backup of set {set_id} into {self.repository} failed: {exc}") from exc
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

    def documents(self, set_id: uuid.UUID) -> SetDocuments:
        """The set's BCD and WMDs as stored (parsed and schema-validated as any document is)."""
        bcd, writers = load_documents(self._repository.set_dir(set_id))
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
        """Restore the set (or the chosen components) under `target`; see `archive.restore` for the guarantees."""
        started = time.monotonic()
        inject("engine.restore")
        meter = Meter(progress, self.progress_interval_s)
        with self._repository.reading(set_id) as set_dir:
            done = restore_set(set_dir, set_id, target, components=components, overwrite=overwrite, meter=meter)
        elapsed = time.monotonic() - started
        return RestoreResult(set_id, self.name, Path(target), done.components, done.files, done.bytes, elapsed)

    def verify(self, set_id: uuid.UUID, progress: ProgressCallback | None = None) -> VerifyReport:
        """Re-read the whole set: every part against its digest, the documents, and every archive member against
        the manifest (type, metadata, size, content digest). Damage is reported, not raised."""
        started = time.monotonic()
        inject("engine.verify")
        with self._repository.reading(set_id) as set_dir:
            check = Verification(set_dir, set_id, self.digest_algorithm, Meter(progress, self.progress_interval_s))
            check.run()
        return VerifyReport(
            set_id, self.name, tuple(check.problems), check.files, check.bytes, time.monotonic() - started
        )
