"""0003: a session records the flow that made its set (`sessions.origin`), instead of the set's description."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# Until 0003, a set made by `offhost-backup` was known by its description; its session gets the origin that
# description meant, so a set in flight across the upgrade is still recognised. (Frozen here: a migration never
# follows later changes of the code.)
_ORIGIN_OF_DESCRIPTION = {"off-host backup": "offhost-backup", "off-host data mining": "offhost-data-mining"}


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("origin", sa.String(32), nullable=True))
    sessions = sa.table("sessions", sa.column("set_id", sa.String), sa.column("origin", sa.String))
    sets = sa.table("snapshot_sets", sa.column("id", sa.String), sa.column("description", sa.Text))
    for description, origin in _ORIGIN_OF_DESCRIPTION.items():
        described = sa.select(sets.c.id).where(sets.c.description == description)
        op.execute(sessions.update().where(sessions.c.set_id.in_(described)).values(origin=origin))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("origin")
