"""What the catalog returns besides model objects: small frozen records of events, writers, imports and leases."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from snapport.model import WriterState


class EventKind(enum.StrEnum):
    """The kinds of audit event the catalog itself records; callers may record others with any kind."""

    SET_ADDED = "set-added"
    SNAPSHOT_ADDED = "snapshot-added"
    TRANSITION = "transition"
    TRANSITION_REFUSED = "transition-refused"
    IMPORTED = "imported"
    EXPOSED = "exposed"
    UNEXPOSED = "unexposed"
    LEASE_GRANTED = "lease-granted"
    LEASE_RELEASED = "lease-released"
    COMPLETED = "completed"
    COMPLETION_REFUSED = "completion-refused"


@dataclass(frozen=True, slots=True)
class CatalogEvent:
    """One line of the audit trail; `set_id` is None for events about no particular set."""

    id: int
    at: datetime
    kind: str
    message: str
    set_id: uuid.UUID | None = None


@dataclass(frozen=True, slots=True)
class WriterEvent:
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
class WriterStatus:
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

    def remaining_s(self, *, boot_id: str, now_monotonic: float) -> float:
        """Seconds left before expiry (0 when expired or from another boot)."""
        if boot_id != self.boot_id:
            return 0.0
        return max(0.0, self.duration_s - (now_monotonic - self.renewed_monotonic))


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """What the backup session of a set needs after a restart: its backup type, its writers (as the `--writer`
    specs that recreate them) and where its documents are; and whether BackupComplete was claimed, once."""

    set_id: uuid.UUID
    backup_type: str | None
    writer_specs: tuple[str, ...]
    documents_dir: str | None
    updated_at: datetime
    completed_at: datetime | None = None
    succeeded: bool | None = None

    @property
    def completed(self) -> bool:
        return self.completed_at is not None
