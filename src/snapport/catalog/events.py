"""The audit trail: a line per change, about a set or about none in particular (the `events` table)."""

from __future__ import annotations

import uuid

from sqlalchemy import Connection, RowMapping, insert, select

from snapport.catalog import schema as t
from snapport.catalog.clock import utc_now
from snapport.catalog.core import CatalogCore, new_id
from snapport.catalog.records import CatalogEvent
from snapport.model import EventKind


class EventStore(CatalogCore):
    """Recording and reading the audit trail."""

    def record_event(self, set_id: uuid.UUID | None, kind: EventKind, message: str) -> CatalogEvent:
        """Add a line to the audit trail, about a set or (`set_id` None) about none in particular."""
        with self._write() as conn:
            return insert_event(conn, kind, message, set_id)

    def events(self, set_id: uuid.UUID | None = None, *, kind: EventKind | None = None) -> list[CatalogEvent]:
        """The audit trail, oldest first: all of it, or one set's, or one kind's."""
        query = select(t.events).order_by(t.events.c.id)
        if set_id is not None:
            query = query.where(t.events.c.set_id == str(set_id))
        if kind is not None:
            query = query.where(t.events.c.kind == EventKind(kind).value)
        with self._read() as conn:
            return [_catalog_event(row) for row in conn.execute(query).mappings()]


def insert_event(conn: Connection, kind: EventKind, message: str, set_id: uuid.UUID | None) -> CatalogEvent:
    """Add a line to the audit trail inside the caller's transaction (so a change and its event commit together);
    the message is folded to one line."""
    at = utc_now()
    text = EventKind(kind).value  # refuses a bare string that is no kind, even from an untyped caller
    message = " ".join(message.split())
    result = conn.execute(
        insert(t.events).values(set_id=None if set_id is None else str(set_id), kind=text, message=message, at=at)
    )
    return CatalogEvent(new_id(result), at, text, message, set_id)


def _catalog_event(row: RowMapping) -> CatalogEvent:
    set_id = row["set_id"]
    return CatalogEvent(
        id=row["id"],
        at=row["at"],
        kind=row["kind"],
        message=row["message"],
        set_id=None if set_id is None else uuid.UUID(set_id),
    )
