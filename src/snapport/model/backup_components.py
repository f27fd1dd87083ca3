"""The requester's record of a backup: what was selected, how it went, and the set to import (VSS: BCD)."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, replace

from snapport.errors import BadState, MaxVolumes, ObjectNotFound
from snapport.model.context import Attr, Context
from snapport.model.snapshot import MAX_VOLUMES_PER_SET, Locator, Volume
from snapport.model.writer_metadata import ComponentType


class BackupType(enum.Enum):
    """The requester's choice (VSS_BACKUP_TYPE); on `copy` no writer may truncate or purge anything."""

    FULL = "full"
    INCREMENTAL = "incremental"
    DIFFERENTIAL = "differential"
    LOG = "log"
    COPY = "copy"


@dataclass(frozen=True, slots=True)
class SelectedComponent:
    """A component the requester included, with its outcome (VSS: COMPONENT in the BCD)."""

    type: ComponentType
    name: str
    logical_path: str = ""
    backup_succeeded: bool | None = None  # None until the backup host reports
    backup_stamp: str | None = None
    previous_backup_stamp: str | None = None
    backup_metadata: str | None = None  # writer-private, opaque (e.g. PostgreSQL's backup label)

    @property
    def full_path(self) -> str:
        return f"{self.logical_path}\\{self.name}" if self.logical_path else self.name


@dataclass(frozen=True, slots=True)
class WriterComponents:
    """The components selected from one writer (VSS: WRITER_COMPONENTS).

    `excluded` says why a writer that was asked to take part was left out instead (the requester chose to go on
    without a failing writer): its components are then absent from the backup.
    """

    writer_id: uuid.UUID
    class_id: uuid.UUID
    instance_name: str = ""
    components: tuple[SelectedComponent, ...] = ()
    excluded: str | None = None

    def __post_init__(self) -> None:
        if self.excluded is not None and (not self.excluded or self.components):
            raise ValueError("an excluded writer has a reason and no components")


@dataclass(frozen=True, slots=True)
class SnapshotDescription:
    """One snapshot as another host needs it to import it (VSS: SNAPSHOT_DESCRIPTION)."""

    snapshot_id: uuid.UUID
    original_volume: Volume
    locator: Locator
    attrs: Attr = Attr.NONE


@dataclass(frozen=True, slots=True)
class SnapshotSetDescription:
    """The whole set, as carried to the importing host (VSS: SNAPSHOT_SET_DESCRIPTION)."""

    set_id: uuid.UUID
    context: Context
    attrs: Attr
    snapshots: tuple[SnapshotDescription, ...] = ()

    def __post_init__(self) -> None:
        if len(self.snapshots) > MAX_VOLUMES_PER_SET:
            raise MaxVolumes(f"a set holds at most {MAX_VOLUMES_PER_SET} volumes; this one has {len(self.snapshots)}")
        ids = [s.snapshot_id for s in self.snapshots]
        if len(set(ids)) != len(ids):
            raise ValueError("a snapshot id appears twice in the set description")


@dataclass(frozen=True, slots=True)
class BackupComponents:
    """The Backup Components Document, in memory."""

    backup_type: BackupType
    snapshot_set: SnapshotSetDescription
    select_components: bool = True
    writers: tuple[WriterComponents, ...] = ()
    originating_host: str = ""
    version: str = "1.0"

    @property
    def set_id(self) -> uuid.UUID:
        return self.snapshot_set.set_id

    def with_result(self, writer_id: uuid.UUID, full_path: str, succeeded: bool) -> BackupComponents:
        """A copy with one component's backup-succeeded flag set (VSS: SetBackupSucceeded)."""
        if Attr.NO_WRITERS in self.snapshot_set.attrs:
            raise BadState(f"context {self.snapshot_set.context.value} has no writers to report results to")
        new_writers = []
        found = False
        for wc in self.writers:
            if wc.writer_id == writer_id:
                comps = []
                for c in wc.components:
                    if c.full_path == full_path:
                        found = True
                        c = replace(c, backup_succeeded=succeeded)
                    comps.append(c)
                wc = replace(wc, components=tuple(comps))
            new_writers.append(wc)
        if not found:
            raise ObjectNotFound(f"component {full_path!r} of writer {writer_id} is not selected in this backup")
        return replace(self, writers=tuple(new_writers))
