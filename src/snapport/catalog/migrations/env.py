"""Alembic environment: migrate the connection `snapport.catalog.migrate` hands over, inside its transaction.

There is no alembic.ini and no engine here: the caller holds the lock and the open transaction, so concurrent first
opens are serialised and a migration is all-or-nothing.
"""

from __future__ import annotations

from alembic import context

from snapport.catalog.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("snapport's migrations run through snapport.catalog.migrate, not the alembic command")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
