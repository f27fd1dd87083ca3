"""The Engine protocol: what backs up a snapshot set's components from an exposed copy into a repository.

Contract, method by method (restic's Backend habit):

- `backup` reads the components' files from the exposed copy through the `PathMapper` it is given (original path
  on the production host → path in the exposed copy) and writes one set into the repository. All or nothing: a
  failed or interrupted backup publishes nothing and leaves the repository as it was (at most an incomplete
  temporary area that `prune_incomplete` removes). Not idempotent: a set already in the repository is refused
  with `BadState`, never overwritten; after any failure it is safe to retry. It never follows a symbolic link
  (links are stored as links) and never reads outside what the mapper returns. No freeze is held while it runs.
  Raising from the progress callback aborts the backup (that is how a caller cancels it).
- `verify` is read-only and idempotent: damage is reported in the `VerifyReport`, never raised. It raises
  `ObjectNotFound` only when the repository or the set does not exist.
- `list` is read-only; incomplete (unpublished) sets are never listed.
- `documents` returns the set's BCD and WMDs as the repository holds them (what a restore's writers are told).
- `restore` writes the set's files (all, or the chosen components') under `target`, each original path `P` at
  `target / P.lstrip("/")`, with the metadata the engine preserves. It refuses a `target` that is not empty unless
  `overwrite` (then it replaces what it restores and leaves everything else alone). Never writes outside `target`
  (no member may escape it, whatever the repository says) and never follows a link it did not restore itself.
  Phases report progress as `Phase.RESTORE`.
- `forget` removes the published sets named, all of each or nothing of it, under the repository's lock; a set
  being verified or restored is not removed (listed as in use, to be forgotten by a later run). Idempotent: a set
  already gone is neither removed nor an error. Which sets to name is `retention.plan`'s business, not the engine's.
- `prune_incomplete` removes what interrupted backups (and forgets) left, never what a running one is writing, and
  says what it removed.

Errors: `BadState` (the set exists), `ObjectNotFound`, `UsageError` (not a repository), `PathEscape` (a mapped
path leaves the exposed copy), `SystemCommandError` (the OS refused a read or write; retryable once fixed).
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from snapport.errors import DocumentError
from snapport.model import BackupComponents, Component, FileSpec, WriterMetadata

PathMapper = Callable[[str], Path]
"""Where an original path (absolute, on the production host) is inside the exposed copy."""


class Phase(enum.Enum):
    SCAN = "scan"  # walking the components' file specs; totals not known yet
    BACKUP = "backup"  # reading, digesting and storing file contents
    PUBLISH = "publish"  # fsync and atomic rename
    VERIFY = "verify"
    RESTORE = "restore"


@dataclass(frozen=True, slots=True)
class Progress:
    """One progress event; `total_*` are None while unknown (during the scan)."""

    phase: Phase
    files: int
    bytes: int
    total_files: int | None = None
    total_bytes: int | None = None


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an engine can do and keep (the restic `Properties` habit)."""

    restore: bool
    incremental: bool
    preserves: frozenset[str]  # e.g. {"content", "mode", "owner", "mtime", "symlink", "hardlink"}
    # runs in its own mount namespace (restic: the exposed copies at their original paths), so it needs root
    private_mount_namespace: bool


@dataclass(frozen=True, slots=True)
class SetDocuments:
    """The set's description as the backup host received it: the BCD and the writers' metadata documents."""

    bcd: BackupComponents
    writers: tuple[WriterMetadata, ...] = ()

    @property
    def set_id(self) -> uuid.UUID:
        return self.bcd.set_id


@dataclass(frozen=True, slots=True)
class ComponentSource:
    """A selected component and the file specs its writer excludes from it."""

    writer_id: uuid.UUID
    component: Component
    excludes: tuple[FileSpec, ...] = ()

    @property
    def full_path(self) -> str:
        return self.component.full_path


def select_components(
    documents: SetDocuments, writer_ids: Sequence[uuid.UUID] | None = None
) -> tuple[ComponentSource, ...]:
    """The components the BCD selects, resolved against the writers' documents (optionally only some writers)."""
    by_id = {w.writer_id: w for w in documents.writers}
    chosen: list[ComponentSource] = []
    for selected in documents.bcd.writers:
        if writer_ids is not None and selected.writer_id not in writer_ids:
            continue
        wmd = by_id.get(selected.writer_id)
        if wmd is None:
            raise DocumentError(f"the BCD selects writer {selected.writer_id}, which has no metadata document")
        for component in selected.components:
            found = wmd.component(component.full_path)
            if found is None:
                raise DocumentError(f"writer {wmd.name} ({wmd.writer_id}) has no component {component.full_path!r}")
            chosen.append(ComponentSource(wmd.writer_id, found, wmd.excludes))
    return tuple(chosen)


@dataclass(frozen=True, slots=True)
class ComponentResult:
    """What one component's backup stored; `digest` is the digest of the component's part of the manifest."""

    writer_id: uuid.UUID
    component: str  # the component's full path within its writer
    files: int  # every non-directory entry (files, links, devices)
    bytes: int  # content bytes of its regular files
    digest: str
    skipped: tuple[str, ...] = ()  # "original path: why", e.g. sockets and other filesystems


@dataclass(frozen=True, slots=True)
class BackupResult:
    set_id: uuid.UUID
    engine: str
    location: str  # where the set is, for people (a directory, a restic snapshot id)
    digest_algorithm: str
    components: tuple[ComponentResult, ...]
    files: int  # distinct non-directory entries in the set
    bytes: int  # distinct content bytes read
    stored_bytes: int  # what the set occupies in the repository
    duration_s: float


class ProblemKind(enum.Enum):
    MISSING_PART = "missing-part"  # a file of the set (archive, manifest, document) is absent
    EXTRA_PART = "extra-part"  # a file in the set that it does not describe
    SET_INVALID = "set-invalid"  # the set's own description is unreadable or inconsistent
    MANIFEST_INVALID = "manifest-invalid"
    MANIFEST_DIGEST = "manifest-digest-mismatch"
    COMPONENT_DIGEST = "component-digest-mismatch"
    DOCUMENT_INVALID = "document-invalid"
    DOCUMENT_DIGEST = "document-digest-mismatch"
    ARCHIVE_DIGEST = "archive-digest-mismatch"
    TRUNCATED = "truncated-archive"
    CORRUPT = "corrupt-archive"
    MISSING_FILE = "missing-file"  # in the manifest, not in the archive
    EXTRA_MEMBER = "extra-member"  # in the archive, not in the manifest
    SIZE_MISMATCH = "size-mismatch"
    DIGEST_MISMATCH = "digest-mismatch"
    METADATA_MISMATCH = "metadata-mismatch"  # type, mode, owner, mtime or link target


@dataclass(frozen=True, slots=True)
class Problem:
    kind: ProblemKind
    path: str | None  # the original path, or the set's file, concerned
    detail: str = ""

    def __str__(self) -> str:
        where = f" {self.path}" if self.path else ""
        return f"{self.kind.value}{where}" + (f": {self.detail}" if self.detail else "")


@dataclass(frozen=True, slots=True)
class VerifyReport:
    set_id: uuid.UUID
    engine: str
    problems: tuple[Problem, ...] = ()
    files: int = 0  # members checked
    bytes: int = 0  # content bytes re-read and digested
    duration_s: float = 0.0

    @property
    def intact(self) -> bool:
        return not self.problems


ComponentKey = tuple[uuid.UUID, str]
"""A component of a set: its writer's id and its full path within that writer (as in `ComponentResult`)."""


@dataclass(frozen=True, slots=True)
class RestoreResult:
    set_id: uuid.UUID
    engine: str
    target: Path
    components: tuple[ComponentKey, ...]  # what was restored
    files: int  # non-directory entries written
    bytes: int  # content bytes written
    duration_s: float


@dataclass(frozen=True, slots=True)
class SetSummary:
    """A set in a repository as `list` shows it; `readable` is False when its description cannot be read."""

    set_id: uuid.UUID
    originating_host: str = ""
    created: datetime | None = None
    components: tuple[str, ...] = ()
    files: int = 0
    bytes: int = 0
    stored_bytes: int = 0
    readable: bool = True


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What a `forget` did: the sets removed, and those kept because a verify or restore was reading them."""

    removed: tuple[uuid.UUID, ...]
    in_use: tuple[uuid.UUID, ...] = ()


class Engine(Protocol):
    """A backup engine bound to one repository (see the module docstring for each method's contract). The engine
    conformance suite checks every implementation against it, signatures included."""

    @property
    def name(self) -> str: ...

    @property
    def capabilities(self) -> Capabilities: ...

    def backup(
        self,
        documents: SetDocuments,
        components: Sequence[ComponentSource],
        mapping: PathMapper,
        progress: ProgressCallback | None = None,
    ) -> BackupResult: ...

    def verify(self, set_id: uuid.UUID, progress: ProgressCallback | None = None) -> VerifyReport: ...

    def list(self) -> tuple[SetSummary, ...]: ...

    def documents(self, set_id: uuid.UUID) -> SetDocuments: ...

    def restore(
        self,
        set_id: uuid.UUID,
        target: Path,
        *,
        components: Sequence[ComponentKey] | None = None,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> RestoreResult: ...

    def forget(self, set_ids: Sequence[uuid.UUID]) -> Forgotten: ...

    def prune_incomplete(self) -> tuple[str, ...]: ...
