"""The catalog's tables at the head revision, in SQLAlchemy Core (the migrations build the same thing step by step).

Ids are UUIDs as 36-character strings; flags are their kebab-case names joined by commas (stable across releases,
unlike the integer values of an `enum.Flag`); times are timezone-aware UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)

# Named constraints, so a later migration can alter them by name (SQLite batch mode needs names).
NAMING_CONVENTION: dict[str, str] = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID = 36  # a UUID's text form
HOST = 255
NAME = 255


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite has no time zones: it stores UTC, read back as UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} refused; the catalog stores UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData(naming_convention=NAMING_CONVENTION)

snapshot_sets = Table(
    "snapshot_sets",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("context", String(32), nullable=False),
    Column("attrs", Text, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("originating_host", String(HOST), nullable=False),
    Column("service_host", String(HOST), nullable=False),
    Column("created_at", UTCDateTime, nullable=True),
    Column("recorded_at", UTCDateTime, nullable=False),  # when the catalog first held it: the listing order
    Column("updated_at", UTCDateTime, nullable=False),
    Column("freeze_window_ms", Float, nullable=True),
    Column("commit_ms", Float, nullable=True),
    Column("failure", Text, nullable=True),
    Column("description", Text, nullable=False),
)

snapshots = Table(
    "snapshots",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("set_id", String(ID), ForeignKey("snapshot_sets.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("position", Integer, nullable=False),  # order within the set, as the set's tuple has it
    Column("volume_host", String(HOST), nullable=False),
    Column("volume_mount_point", Text, nullable=False),
    Column("volume_fs_type", String(32), nullable=False),
    Column("volume_fs_uuid", String(64), nullable=False),
    Column("volume_device", Text, nullable=False),
    Column("provider", String(64), nullable=False),
    Column("locator", Text, nullable=False),  # JSON: the provider's LUN mapping and properties
    Column("attrs", Text, nullable=False),
    Column("created_at", UTCDateTime, nullable=True),
    Column("device", Text, nullable=True),
    Column("exposed_at", Text, nullable=True),
    UniqueConstraint("set_id", "position"),
)

writer_events = Table(
    "writer_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("set_id", String(ID), ForeignKey("snapshot_sets.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("writer_id", String(NAME), nullable=False),
    Column("event", String(64), nullable=False),
    Column("started_at", UTCDateTime, nullable=False),
    Column("duration_ms", Float, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("error", Text, nullable=True),
)

writers = Table(
    "writers",
    metadata,
    Column("writer_id", String(NAME), primary_key=True),
    Column("class_id", String(NAME), nullable=False),
    Column("kind", String(64), nullable=False),
    Column("name", String(NAME), nullable=False),
    Column("instance_name", String(NAME), nullable=False),
    Column("state", String(64), nullable=False),
    Column("last_error", Text, nullable=True),
    Column("last_freeze_ms", Float, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
)

# The audit trail. `set_id` has no foreign key on purpose: an event may name a set this catalog never held
# (a refused import) and must outlive any clean-up of the set's rows.
events = Table(
    "events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("set_id", String(ID), nullable=True, index=True),
    Column("kind", String(64), nullable=False),
    Column("message", Text, nullable=False),
    Column("at", UTCDateTime, nullable=False),
)

imports = Table(
    "imports",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("set_id", String(ID), ForeignKey("snapshot_sets.id", ondelete="CASCADE"), nullable=False),
    Column("host", String(HOST), nullable=False),
    Column("imported_at", UTCDateTime, nullable=False),
    Column("import_ms", Float, nullable=True),
    Column("document_sha256", String(64), nullable=True),
    UniqueConstraint("set_id", "host"),
)

exposures = Table(
    "exposures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("snapshot_id", String(ID), ForeignKey("snapshots.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("host", String(HOST), nullable=False),
    Column("path", Text, nullable=False),
    Column("exposed_at", UTCDateTime, nullable=False),
    Column("removed_at", UTCDateTime, nullable=True),
)

leases = Table(
    "leases",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("set_id", String(ID), ForeignKey("snapshot_sets.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("holder", String(HOST), nullable=False),
    Column("duration_s", Float, nullable=False),
    Column("keeper_host", String(HOST), nullable=False),
    Column("boot_id", String(64), nullable=False),
    Column("granted_at", UTCDateTime, nullable=False),
    Column("renewed_at", UTCDateTime, nullable=False),
    Column("renewed_monotonic", Float, nullable=False),
    Column("released_at", UTCDateTime, nullable=True),
)

# What a backup session needs after a restart to fire BackupComplete exactly once (DESIGN §6).
sessions = Table(
    "sessions",
    metadata,
    Column("set_id", String(ID), ForeignKey("snapshot_sets.id", ondelete="CASCADE"), primary_key=True),
    Column("backup_type", String(32), nullable=True),
    Column("writer_specs", Text, nullable=False),  # JSON list of the --writer SPEC strings
    Column("documents_dir", Text, nullable=True),
    Column("completed_at", UTCDateTime, nullable=True),
    Column("succeeded", Boolean, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("origin", String(32), nullable=True),  # revision 0003: the flow that made the set (`SetOrigin`)
)

Index("ix_leases_keeper_open", leases.c.keeper_host, leases.c.released_at)

# An agent's long operations (revision 0002). `set_id` has no foreign key: a job may concern a set this catalog does
# not hold (the proxy's job for a set kept on systemOne).
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(ID), primary_key=True),
    Column("kind", String(64), nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("params", Text, nullable=False),  # JSON, owned by the job's kind
    Column("requested_by", String(HOST), nullable=True),
    Column("set_id", String(ID), nullable=True, index=True),
    Column("phase", String(64), nullable=True),
    Column("fraction", Float, nullable=True),
    Column("bytes_done", BigInteger, nullable=True),
    Column("files_done", BigInteger, nullable=True),
    Column("cancel_requested", Boolean, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("started_at", UTCDateTime, nullable=True),
    Column("finished_at", UTCDateTime, nullable=True),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("result", Text, nullable=True),  # JSON
    Column("error_code", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
)
