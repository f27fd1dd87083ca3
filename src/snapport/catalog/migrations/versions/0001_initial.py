"""0001: the initial catalog: sets, snapshots, writer events, writers, events, imports, exposures, leases,
sessions."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

ID = 36
HOST = 255
NAME = 255


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "snapshot_sets",
        sa.Column("id", sa.String(ID), primary_key=True),
        sa.Column("context", sa.String(32), nullable=False),
        sa.Column("attrs", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("originating_host", sa.String(HOST), nullable=False),
        sa.Column("service_host", sa.String(HOST), nullable=False),
        sa.Column("created_at", _utc(), nullable=True),
        sa.Column("recorded_at", _utc(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("freeze_window_ms", sa.Float, nullable=True),
        sa.Column("commit_ms", sa.Float, nullable=True),
        sa.Column("failure", sa.Text, nullable=True),
        sa.Column("description", sa.Text, nullable=False),
    )
    op.create_index("ix_snapshot_sets_state", "snapshot_sets", ["state"])

    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(ID), primary_key=True),
        sa.Column("set_id", sa.String(ID), sa.ForeignKey("snapshot_sets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("volume_host", sa.String(HOST), nullable=False),
        sa.Column("volume_mount_point", sa.Text, nullable=False),
        sa.Column("volume_fs_type", sa.String(32), nullable=False),
        sa.Column("volume_fs_uuid", sa.String(64), nullable=False),
        sa.Column("volume_device", sa.Text, nullable=False),
        sa.Column("provider", sa.String(64), nullable=False),
        sa.Column("locator", sa.Text, nullable=False),
        sa.Column("attrs", sa.Text, nullable=False),
        sa.Column("created_at", _utc(), nullable=True),
        sa.Column("device", sa.Text, nullable=True),
        sa.Column("exposed_at", sa.Text, nullable=True),
        sa.UniqueConstraint("set_id", "position"),
    )
    op.create_index("ix_snapshots_set_id", "snapshots", ["set_id"])

    op.create_table(
        "writer_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("set_id", sa.String(ID), sa.ForeignKey("snapshot_sets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("writer_id", sa.String(NAME), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("duration_ms", sa.Float, nullable=False),
        sa.Column("ok", sa.Boolean, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )
    op.create_index("ix_writer_events_set_id", "writer_events", ["set_id"])

    op.create_table(
        "writers",
        sa.Column("writer_id", sa.String(NAME), primary_key=True),
        sa.Column("class_id", sa.String(NAME), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("name", sa.String(NAME), nullable=False),
        sa.Column("instance_name", sa.String(NAME), nullable=False),
        sa.Column("state", sa.String(64), nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("last_freeze_ms", sa.Float, nullable=True),
        sa.Column("updated_at", _utc(), nullable=False),
    )

    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("set_id", sa.String(ID), nullable=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("at", _utc(), nullable=False),
    )
    op.create_index("ix_events_set_id", "events", ["set_id"])

    op.create_table(
        "imports",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("set_id", sa.String(ID), sa.ForeignKey("snapshot_sets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("host", sa.String(HOST), nullable=False),
        sa.Column("imported_at", _utc(), nullable=False),
        sa.Column("import_ms", sa.Float, nullable=True),
        sa.Column("document_sha256", sa.String(64), nullable=True),
        sa.UniqueConstraint("set_id", "host"),
    )

    op.create_table(
        "exposures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("snapshot_id", sa.String(ID), sa.ForeignKey("snapshots.id", ondelete="CASCADE"), nullable=False),
        sa.Column("host", sa.String(HOST), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("exposed_at", _utc(), nullable=False),
        sa.Column("removed_at", _utc(), nullable=True),
    )
    op.create_index("ix_exposures_snapshot_id", "exposures", ["snapshot_id"])

    op.create_table(
        "leases",
        sa.Column("id", sa.String(ID), primary_key=True),
        sa.Column("set_id", sa.String(ID), sa.ForeignKey("snapshot_sets.id", ondelete="CASCADE"), nullable=False),
        sa.Column("holder", sa.String(HOST), nullable=False),
        sa.Column("duration_s", sa.Float, nullable=False),
        sa.Column("keeper_host", sa.String(HOST), nullable=False),
        sa.Column("boot_id", sa.String(64), nullable=False),
        sa.Column("granted_at", _utc(), nullable=False),
        sa.Column("renewed_at", _utc(), nullable=False),
        sa.Column("renewed_monotonic", sa.Float, nullable=False),
        sa.Column("released_at", _utc(), nullable=True),
    )
    op.create_index("ix_leases_set_id", "leases", ["set_id"])
    op.create_index("ix_leases_keeper_open", "leases", ["keeper_host", "released_at"])

    op.create_table(
        "sessions",
        sa.Column("set_id", sa.String(ID), sa.ForeignKey("snapshot_sets.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("backup_type", sa.String(32), nullable=True),
        sa.Column("writer_specs", sa.Text, nullable=False),
        sa.Column("documents_dir", sa.Text, nullable=True),
        sa.Column("completed_at", _utc(), nullable=True),
        sa.Column("succeeded", sa.Boolean, nullable=True),
        sa.Column("updated_at", _utc(), nullable=False),
    )


def downgrade() -> None:
    for table in ("sessions", "leases", "exposures", "imports", "events", "writers", "writer_events", "snapshots"):
        op.drop_table(table)
    op.drop_table("snapshot_sets")
