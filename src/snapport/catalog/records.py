"""What the catalog returns besides model objects: small frozen records of events, writers, imports, exposures,
leases, sessions and jobs."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from snapport.model import JobState, SetOrigin, WriterState


@dataclass(frozen=True, slots=True)
class CatalogEvent:
    """One line of the audit trail; `set_id` is None for events about no particular set."""

    id: int
    at: datetime
    kind: str  # an `EventKind` value; text, since rows an older snapport wrote may carry kinds it no longer knows
    message: str
    set_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class WriterEventRecord:
    """One step a writer took for a set (identify, prepare, freeze, thaw, ...), with how long it took."""

    id: int
    set_id: uuid.UUID
    writer_id: str
    event: str
    started_at: datetime
    duration_ms: float
    ok: bool
    error: str | None = None


@dataclass(frozen=True, slots=True)
class WriterRecord:
    """The last known state of a writer on this host (`snapport writers`, like `vssadmin list writers`)."""

    writer_id: str
    class_id: str
    kind: str
    name: str
    instance_name: str
    state: WriterState
    updated_at: datetime
    last_error: str | None = None
    last_freeze_ms: float | None = None


@dataclass(frozen=True, slots=True)
class ImportRecord:
    """A set imported on a host; at most one per (set, host): a re-import returns the first record."""

    set_id: uuid.UUID
    host: str
    imported_at: datetime
    import_ms: float | None = None
    document_sha256: str | None = None


@dataclass(frozen=True, slots=True)
class Exposure:
    """A snapshot mounted read-only at `path` on `host`; `removed_at` is set once it is unexposed."""

    id: int
    snapshot_id: uuid.UUID
    host: str
    path: str
    since: datetime
    removed_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.removed_at is None


@dataclass(frozen=True, slots=True)
class Lease:
    """A bounded wait granted to `holder` (the backup host) on a set, kept by `keeper_host`.

    Expiry never compares two hosts' clocks: only the keeper decides, from its own boot-time clock
    (`renewed_monotonic`, seconds since boot, meaningful only while `boot_id` is the keeper's current boot) and the
    stored `duration_s`. `granted_at` and `renewed_at` are wall-clock UTC, for people to read, never for expiry.
    """

    id: uuid.UUID
    set_id: uuid.UUID
    holder: str
    duration_s: float
    keeper_host: str
    boot_id: str
    granted_at: datetime
    renewed_at: datetime
    renewed_monotonic: float
    released_at: datetime | None = None

    def expired(self, *, boot_id: str, now_monotonic: float) -> bool:
        """Whether the lease has run out, judged by its keeper (this boot's clock); a reboot ends every lease."""
        if self.released_at is not None:
            return False
        if boot_id != self.boot_id:
            return True
        return now_monotonic - self.renewed_monotonic > self.duration_s


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What the backup session of a set needs after a restart: its backup type, its writers (as the `--writer`
    specs that recreate them), where its documents are and which flow made the set (None: `snapport create`); and
    whether BackupComplete was claimed, once."""

    set_id: uuid.UUID
    backup_type: str | None
    writer_specs: tuple[str, ...]
    documents_dir: str | None
    updated_at: datetime
    completed_at: datetime | None = None
    succeeded: bool | None = None
    origin: SetOrigin | None = None

    @property
    def completed(self) -> bool:
        return self.completed_at is not None


@dataclass(frozen=True, slots=True)
class JobProgress:
    """How far a running job is: its phase and, where the job can tell, a fraction and counts."""

    phase: str | None = None
    fraction: float | None = None
    bytes_done: int | None = None
    files_done: int | None = None


@dataclass(frozen=True, slots=True)
class JobRecord:
    """One long operation of a host's agent. `params_json` and `result_json` are JSON texts owned by the job's
    kind; `error_code` is a stable error name (`snapport.errors`) when the job failed."""

    id: uuid.UUID
    kind: str
    state: JobState
    params_json: str
    created_at: datetime
    updated_at: datetime
    requested_by: str | None = None
    set_id: uuid.UUID | None = None
    progress: JobProgress = JobProgress()
    cancel_requested: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result_json: str | None = None
    error_code: str | None = None
    error_message: str | None = None
