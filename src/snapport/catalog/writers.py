"""What writers did and where they are: each step a writer took for a set (`writer_events`), and each writer's
last known state on this host (`writers`, what `snapport writers` lists)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, insert, select, update

from snapport.catalog import schema as t
from snapport.catalog.clock import require_aware, utc_now
from snapport.catalog.core import KEEP, RACE_RETRIES, CatalogCore, Keep, lost_insert_race, new_id, one_row
from snapport.catalog.records import WriterEventRecord, WriterRecord
from snapport.catalog.sets import require_set
from snapport.errors import CatalogError
from snapport.model import WriterState


class WriterStore(CatalogCore):
    """Writer events, per set, and writer status, per writer."""

    def record_writer_event(
        self,
        set_id: uuid.UUID,
        writer_id: str,
        event: str,
        *,
        started_at: datetime,
        duration_ms: float,
        ok: bool,
        error: str | None = None,
    ) -> WriterEventRecord:
        """Record one step a writer took for a set (e.g. `freeze`), when it started and how long it took."""
        started_at = require_aware(started_at, "started_at")
        with self._write() as conn:
            require_set(conn, set_id)
            result = conn.execute(
                insert(t.writer_events).values(
                    set_id=str(set_id),
                    writer_id=writer_id,
                    event=event,
                    started_at=started_at,
                    duration_ms=float(duration_ms),
                    ok=ok,
                    error=error,
                )
            )
            event_id = new_id(result)
        return WriterEventRecord(event_id, set_id, writer_id, event, started_at, float(duration_ms), ok, error)

    def writer_events(self, set_id: uuid.UUID) -> list[WriterEventRecord]:
        """A set's writer events in the order they were recorded (empty for an unknown set)."""
        with self._read() as conn:
            rows = conn.execute(
                select(t.writer_events).where(t.writer_events.c.set_id == str(set_id)).order_by(t.writer_events.c.id)
            ).mappings()
            return [_writer_event_record(row) for row in rows]

    def upsert_writer_status(
        self,
        writer_id: str,
        *,
        class_id: str,
        kind: str,
        name: str,
        instance_name: str,
        state: WriterState,
        last_error: str | Keep | None = KEEP,
        last_freeze_ms: float | Keep | None = KEEP,
    ) -> WriterRecord:
        """Record a writer's current state, creating its row on first sight; `last_error` and `last_freeze_ms`
        keep their stored values unless given (None clears them)."""
        values: dict[str, Any] = {
            "class_id": class_id,
            "kind": kind,
            "name": name,
            "instance_name": instance_name,
            "state": WriterState(state).value,
            "updated_at": utc_now(),
        }
        if not isinstance(last_error, Keep):
            values["last_error"] = last_error
        if not isinstance(last_freeze_ms, Keep):
            values["last_freeze_ms"] = last_freeze_ms
        for _attempt in range(RACE_RETRIES):
            try:
                with self._write() as conn:
                    done = conn.execute(update(t.writers).where(t.writers.c.writer_id == writer_id).values(values))
                    if done.rowcount == 0:
                        conn.execute(insert(t.writers).values(writer_id=writer_id, **values))
                    return _load_writer(conn, writer_id)
            except CatalogError as exc:
                # PostgreSQL: another process inserted the same writer between our UPDATE and INSERT; update it.
                if not lost_insert_race(exc):
                    raise
        raise CatalogError(f"writer {writer_id} kept changing while recording its status; retry")

    def get_writer(self, writer_id: str) -> WriterRecord:
        with self._read() as conn:
            return _load_writer(conn, writer_id)

    def list_writers(self) -> list[WriterRecord]:
        """Every writer this host has seen, by name and instance."""
        with self._read() as conn:
            rows = conn.execute(
                select(t.writers).order_by(t.writers.c.name, t.writers.c.instance_name, t.writers.c.writer_id)
            ).mappings()
            return [_writer_record(row) for row in rows]


def _load_writer(conn: Connection, writer_id: str) -> WriterRecord:
    query = select(t.writers).where(t.writers.c.writer_id == writer_id)
    return _writer_record(one_row(conn, query, f"no writer {writer_id!r} in the catalog"))


def _writer_event_record(row: RowMapping) -> WriterEventRecord:
    return WriterEventRecord(
        id=row["id"],
        set_id=uuid.UUID(row["set_id"]),
        writer_id=row["writer_id"],
        event=row["event"],
        started_at=row["started_at"],
        duration_ms=row["duration_ms"],
        ok=bool(row["ok"]),
        error=row["error"],
    )


def _writer_record(row: RowMapping) -> WriterRecord:
    return WriterRecord(
        writer_id=row["writer_id"],
        class_id=row["class_id"],
        kind=row["kind"],
        name=row["name"],
        instance_name=row["instance_name"],
        state=WriterState(row["state"]),
        updated_at=row["updated_at"],
        last_error=row["last_error"],
        last_freeze_ms=row["last_freeze_ms"],
    )
