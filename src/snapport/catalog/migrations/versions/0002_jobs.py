"""0002: the agent's jobs (long operations with a state, progress, result or error)."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

ID = 36
HOST = 255


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(ID), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("requested_by", sa.String(HOST), nullable=True),
        sa.Column("set_id", sa.String(ID), nullable=True),
        sa.Column("phase", sa.String(64), nullable=True),
        sa.Column("fraction", sa.Float, nullable=True),
        sa.Column("bytes_done", sa.BigInteger, nullable=True),
        sa.Column("files_done", sa.BigInteger, nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("started_at", _utc(), nullable=True),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.Column("result", sa.Text, nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_message", sa.Text, nullable=True),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_set_id", "jobs", ["set_id"])


def downgrade() -> None:
    op.drop_table("jobs")
