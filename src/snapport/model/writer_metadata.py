"""What a writer says about its data: components, their files, and how to restore them (VSS: WMD)."""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from snapport.model.paths import file_pattern, relative_path, volume_path


class UsageType(enum.Enum):
    """What kind of data a writer guards (VSS_USAGE_TYPE)."""

    USER_DATA = "user-data"
    BOOTABLE_SYSTEM_STATE = "bootable-system-state"
    SYSTEM_SERVICE = "system-service"
    OTHER = "other"


class ComponentType(enum.Enum):
    """A component is a database (data files plus log files) or a group of plain files."""

    DATABASE = "database"
    FILE_GROUP = "filegroup"


class RestoreMethod(enum.Enum):
    """How a writer's data goes back (VSS_RESTOREMETHOD_ENUM)."""

    RESTORE_IF_NOT_THERE = "restore-if-not-there"
    RESTORE_IF_CAN_REPLACE = "restore-if-can-replace"
    STOP_RESTORE_START = "stop-restore-start"
    RESTORE_TO_ALTERNATE_LOCATION = "restore-to-alternate-location"
    RESTORE_AT_REBOOT = "restore-at-reboot"
    CUSTOM = "custom"


class WriterRestore(enum.Enum):
    """Whether the writer takes part in restore events (VSS_WRITERRESTORE_ENUM)."""

    NEVER = "never"
    IF_REPLACE_FAILS = "if-replace-fails"
    ALWAYS = "always"


class BackupSchema(enum.Flag):
    """Backup types and options a writer supports beyond a full backup (VSS_BACKUP_SCHEMA)."""

    NONE = 0
    DIFFERENTIAL = enum.auto()
    INCREMENTAL = enum.auto()
    LOG = enum.auto()
    COPY = enum.auto()
    TIMESTAMPED = enum.auto()
    LAST_MODIFY = enum.auto()
    WRITER_SUPPORTS_RESTORE_WITH_MOVE = enum.auto()

    def names(self) -> list[str]:
        return [m.name.lower().replace("_", "-") for m in BackupSchema if m.name and m.value and m in self]

    @classmethod
    def from_names(cls, words: list[str] | tuple[str, ...]) -> BackupSchema:
        result = cls.NONE
        for word in words:
            try:
                result |= cls[word.upper().replace("-", "_")]
            except KeyError:
                raise ValueError(f"unknown backup schema flag {word!r}") from None
        return result


@dataclass(frozen=True, slots=True)
class FileSpec:
    """A set of files on one volume (VSS: FILE_LIST / file descriptor).

    `path` and `alternate_location` are relative to `volume` and validated so that they can never leave it,
    which makes mapping onto an exposed copy safe by construction.
    """

    volume: str
    path: str
    pattern: str = "*"
    recursive: bool = False
    alternate_location: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "volume", volume_path(self.volume))
        object.__setattr__(self, "path", relative_path(self.path))
        object.__setattr__(self, "pattern", file_pattern(self.pattern))
        if self.alternate_location is not None:
            object.__setattr__(self, "alternate_location", relative_path(self.alternate_location))

    @property
    def original_path(self) -> str:
        """The absolute path on the original host."""
        if not self.path:
            return self.volume
        return ("" if self.volume == "/" else self.volume) + "/" + self.path


@dataclass(frozen=True, slots=True)
class Component:
    """A unit of backup and restore (VSS: COMPONENT; FILE_GROUP or DATABASE in the WMD)."""

    type: ComponentType
    name: str
    logical_path: str = ""
    caption: str = ""
    selectable: bool = True
    selectable_for_restore: bool = True
    files: tuple[FileSpec, ...] = ()  # FILE_GROUP members
    database_files: tuple[FileSpec, ...] = ()  # DATABASE_FILES
    log_files: tuple[FileSpec, ...] = ()  # DATABASE_LOGFILES

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a component needs a name")
        if self.type is ComponentType.FILE_GROUP and (self.database_files or self.log_files):
            raise ValueError(f"file group {self.name!r} cannot have database or log files")
        if self.type is ComponentType.DATABASE and self.files:
            raise ValueError(f"database {self.name!r} lists its files as database or log files")

    @property
    def full_path(self) -> str:
        """`logical_path\\name`, the component's unique name within its writer."""
        return f"{self.logical_path}\\{self.name}" if self.logical_path else self.name

    def all_files(self) -> tuple[FileSpec, ...]:
        return self.files + self.database_files + self.log_files


@dataclass(frozen=True, slots=True)
class RestoreMethodSpec:
    """How to restore a writer's components (VSS: RESTORE_METHOD)."""

    method: RestoreMethod = RestoreMethod.RESTORE_IF_CAN_REPLACE
    service: str = ""
    writer_restore: WriterRestore = WriterRestore.NEVER
    reboot_required: bool = False


@dataclass(frozen=True, slots=True)
class WriterMetadata:
    """One writer's Writer Metadata Document, in memory."""

    writer_id: uuid.UUID  # this writer instance; names its document writers/<writer-id>.xml
    class_id: uuid.UUID  # the kind of writer (all SQLite writers share one)
    name: str  # friendly name, e.g. "sqlite"
    instance_name: str = ""
    usage: UsageType = UsageType.USER_DATA
    components: tuple[Component, ...] = ()
    excludes: tuple[FileSpec, ...] = ()
    restore_method: RestoreMethodSpec = RestoreMethodSpec()
    backup_schema: BackupSchema = BackupSchema.NONE
    version: str = "1.0"

    def __post_init__(self) -> None:
        names = [c.full_path for c in self.components]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"writer {self.name!r} lists component(s) twice: {', '.join(dupes)}")

    def component(self, full_path: str) -> Component | None:
        return next((c for c in self.components if c.full_path == full_path), None)
