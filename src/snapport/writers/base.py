"""The Writer protocol: applications taking part in a backup (VSS: writer).

Every event carries a `Deadline`. The coordinator wraps each call (`writers.guarded`) so a writer that overruns
is marked failed and the set aborted; a writer must still keep its own waits inside the deadline.

Contract: `identify` keeps no state (anyone may call it). `freeze` is the last chance to veto; heavy work belongs
in `prepare_snapshot`. `thaw` and `abort` are idempotent and may arrive more than once, or without a freeze
before them; after `abort` the application runs as if no backup had started. `backup_complete` comes at most once,
only after the backup host reported success, and never for a failed set; on a `copy` backup a writer must not
truncate or purge anything. `backup_shutdown` ends the session whatever happened. `pre_restore` comes before any
file of a restore is written and may veto it (nothing is written then); `post_restore` comes after every file is in
place, and prepares what the application needs to start on them. Both may come in a process that never saw the
backup (on another host): what they need comes with the `RestoreContext`. `class_id` is known before `identify`;
`take_event_log` hands over, once each, the lines a writer wants in the set's event log.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Protocol, runtime_checkable

from snapport.errors import PathEscape
from snapport.model import Attr, BackupType, Context, EventKind, Volume, WriterMetadata, WriterState


class WriterEvent(enum.Enum):
    IDENTIFY = "identify"
    PREPARE_BACKUP = "prepare-backup"
    PREPARE_SNAPSHOT = "prepare-snapshot"
    FREEZE = "freeze"
    THAW = "thaw"
    POST_SNAPSHOT = "post-snapshot"
    ABORT = "abort"
    BACKUP_COMPLETE = "backup-complete"
    BACKUP_SHUTDOWN = "backup-shutdown"
    PRE_RESTORE = "pre-restore"
    POST_RESTORE = "post-restore"


class WriterPhase(enum.Enum):
    """Where a writer is in the backup sequence, as `GuardedWriter` follows it: VSS_WRITER_STATE folded to five
    phases (a failure's event is kept beside it, in `WriterStatus.failed_at`; `WriterStatus.reported_state` unfolds
    the two into the `WriterState` that `snapport writers` and the catalog show)."""

    STABLE = "stable"
    WAITING_FOR_FREEZE = "waiting-for-freeze"
    FROZEN = "frozen"  # waiting for thaw
    WAITING_FOR_BACKUP_COMPLETE = "waiting-for-backup-complete"
    FAILED = "failed"


class Tier(enum.IntEnum):
    """Freeze order: applications first, then filesystems; thaw in reverse."""

    APPLICATION = 0
    FILESYSTEM = 1


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute point on the monotonic clock by which a call must return."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at


@dataclass(frozen=True, slots=True)
class Session:
    """What a writer is told about the backup it takes part in."""

    set_id: uuid.UUID
    context: Context
    attrs: Attr
    backup_type: BackupType
    volumes: tuple[Volume, ...]
    freeze_window_s: float = 60.0  # the hard bound: whatever holds a freeze must let go by then
    # BackupComplete only: this writer's components' private metadata from the BCD, by component full path (VSS:
    # IVssComponent::GetBackupMetadata), e.g. the log position up to which it may truncate.
    backup_metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RestoreContext:
    """What a writer is told about a restore of its components (VSS: the components of PreRestore/PostRestore).

    Files land under `target`: an original path `P` is restored at `target / P.lstrip("/")` (`location`); a
    `target` of `/` restores in place.
    """

    set_id: uuid.UUID
    backup_type: BackupType
    target: Path
    components: tuple[str, ...]  # this writer's components being restored (full paths)
    # This writer's components' private metadata from the BCD, by component full path (e.g. a backup label).
    backup_metadata: Mapping[str, str] = field(default_factory=dict)
    originating_host: str = ""

    def __post_init__(self) -> None:
        if not self.target.is_absolute():
            raise ValueError(f"a restore target must be absolute, not {str(self.target)!r}")

    @property
    def in_place(self) -> bool:
        """True when the files go back where they were (the target is `/`)."""
        return self.target == Path("/")

    def location(self, original: str | Path) -> Path:
        """Where the original path (absolute, on the host that made the set) is restored; never outside `target`."""
        path = PurePosixPath(original)
        if not path.is_absolute() or ".." in path.parts or "\x00" in str(original):
            raise PathEscape(f"{str(original)!r} is not an absolute path without '..'; it cannot be restored")
        relative = str(path).lstrip("/")
        return self.target / relative if relative else self.target


@dataclass(frozen=True, slots=True)
class WriterStatus:
    """A guarded writer's live status: its phase, and what its last failure and freeze were."""

    writer_id: uuid.UUID
    name: str
    instance_name: str
    phase: WriterPhase
    last_error: str | None = None
    failed_at: WriterEvent | None = None
    last_freeze_ms: float | None = None

    @property
    def reported_state(self) -> WriterState:
        """The state as `snapport writers` and the catalog spell it (VSS's `failed-at-<event>` included)."""
        if self.phase is WriterPhase.FAILED:
            event = self.failed_at.value if self.failed_at is not None else "identify"
            return WriterState(f"failed-at-{event}")
        return WriterState(self.phase.value)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """A line a writer asks to be kept in the catalog's event log of the set (e.g. a hook's output)."""

    kind: EventKind
    message: str


@runtime_checkable
class Writer(Protocol):
    """A writer. Implementations subclass it (so mypy checks them against it where they are defined, and they
    inherit the default `take_event_log`); a structural match works too, if it defines every member."""

    # `kind`, `tier` and `class_id` are class constants in every in-process implementation; the protocol reads them
    # as properties so that a wrapper (`writers.guarded.GuardedWriter`) or a proxy (`writers.remote.RemoteWriter`,
    # which learns them from its writer process) can answer for the writer behind it.
    @property
    def kind(self) -> str: ...

    @property
    def tier(self) -> Tier: ...

    @property
    def class_id(self) -> uuid.UUID | None:
        """The kind of writer (VSS: its writer class id), the one `identify` reports, known before it: every
        in-process writer declares one. None only from a writer process that did not say (or was not reached)."""
        ...

    writer_id: uuid.UUID
    instance_name: str

    def take_event_log(self) -> list[LogEntry]:
        """The lines for the set's event log since the last call, each handed over once (a hook's output).

        Default: none. Called from any thread, between events or during one.
        """
        return []

    def identify(self, deadline: Deadline) -> WriterMetadata: ...

    def prepare_backup(self, session: Session, components: tuple[str, ...], deadline: Deadline) -> None: ...

    def prepare_snapshot(self, session: Session, deadline: Deadline) -> None: ...

    def freeze(self, session: Session, deadline: Deadline) -> None: ...

    def thaw(self, session: Session, deadline: Deadline) -> None: ...

    def post_snapshot(self, session: Session, deadline: Deadline) -> Mapping[str, str]:
        """Per-component private backup metadata to store in the BCD (component full path → text)."""
        ...

    def abort(self, session: Session, deadline: Deadline) -> None: ...

    def backup_complete(self, session: Session, succeeded: Mapping[str, bool], deadline: Deadline) -> None: ...

    def backup_shutdown(self, session: Session, deadline: Deadline) -> None: ...

    def pre_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        """Before any file is restored: veto (raise) if the restore would harm what runs at its target."""
        ...

    def post_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        """After every file is in place: prepare what the application needs to start on the restored files."""
        ...
