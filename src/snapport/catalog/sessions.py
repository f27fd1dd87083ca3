"""Backup sessions: what a set's session needs after a restart (`sessions`), which flow made the set, and the
one claim of BackupComplete."""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import Connection, RowMapping, insert, select, update

from snapport.catalog import schema as t
from snapport.catalog.clock import utc_now
from snapport.catalog.core import KEEP, RACE_RETRIES, CatalogCore, Keep, lost_insert_race, one_row
from snapport.catalog.events import insert_event
from snapport.catalog.records import SessionRecord
from snapport.catalog.sets import load_sets, require_set
from snapport.errors import BadState, CatalogError
from snapport.model import EventKind, SetOrigin, SetState, SnapshotSet


class SessionStore(CatalogCore):
    """Session records, one per set made here, and the exactly-once claim of its completion."""

    def record_session(
        self,
        set_id: uuid.UUID,
        *,
        backup_type: str | Keep | None = KEEP,
        writer_specs: Sequence[str] | Keep = KEEP,
        documents_dir: str | Keep | None = KEEP,
        origin: SetOrigin | Keep | None = KEEP,
    ) -> SessionRecord:
        """Create or update the set's session record; fields not given keep their stored values (a new record
        starts with none: no writers, no origin)."""
        values: dict[str, Any] = {"updated_at": utc_now()}
        if not isinstance(backup_type, Keep):
            values["backup_type"] = backup_type
        if not isinstance(writer_specs, Keep):
            values["writer_specs"] = json.dumps(list(writer_specs))
        if not isinstance(documents_dir, Keep):
            values["documents_dir"] = documents_dir
        if not isinstance(origin, Keep):
            values["origin"] = None if origin is None else SetOrigin(origin).value
        for _attempt in range(RACE_RETRIES):
            try:
                with self._write() as conn:
                    require_set(conn, set_id)
                    done = conn.execute(update(t.sessions).where(t.sessions.c.set_id == str(set_id)).values(values))
                    if done.rowcount == 0:
                        conn.execute(insert(t.sessions).values({"set_id": str(set_id), "writer_specs": "[]", **values}))
                    return _load_session(conn, set_id)
            except CatalogError as exc:
                if not lost_insert_race(exc):  # PostgreSQL: a concurrent insert won; update it
                    raise
        raise CatalogError(f"the session of set {set_id} kept changing while recording it; retry")

    def get_session(self, set_id: uuid.UUID) -> SessionRecord:
        """The set's session record; `ObjectNotFound` if it has none."""
        with self._read() as conn:
            return _load_session(conn, set_id)

    def claim_completion(self, set_id: uuid.UUID, *, succeeded: bool) -> SessionRecord:
        """Claim the right to fire BackupComplete for the set: exactly once, however many processes try.

        A conditional update (`WHERE completed_at IS NULL`) decides; the loser gets `BadState`, after the refusal
        is recorded. The claim is committed before it returns, so the writers hear of it only once it is durable.
        """
        outcome = "succeeded" if succeeded else "failed"
        with self._write() as conn:
            current = _load_session(conn, set_id)
            claimed = conn.execute(
                update(t.sessions)
                .where(t.sessions.c.set_id == str(set_id), t.sessions.c.completed_at.is_(None))
                .values(completed_at=utc_now(), succeeded=succeeded, updated_at=utc_now())
            )
            if claimed.rowcount == 1:
                insert_event(conn, EventKind.COMPLETED, f"backup {outcome}: BackupComplete claimed", set_id)
                return _load_session(conn, set_id)
            done = _load_session(conn, set_id) if current.completed_at is None else current
            was = "succeeded" if done.succeeded else "failed"
            at = done.completed_at.isoformat(timespec="seconds") if done.completed_at else "?"
            refused = BadState(f"set {set_id}: completion was already reported ({was}, at {at})")
            insert_event(conn, EventKind.COMPLETION_REFUSED, f"{refused.message}; now {outcome}", set_id)
        raise refused

    def sets_with_origin(
        self, origins: Collection[SetOrigin], states: Collection[SetState] | None = None
    ) -> list[SnapshotSet]:
        """The sets whose session records one of `origins` (and, if given, that are in one of `states`), in the
        order they were recorded. A set without a session record has no origin."""
        made_by = select(t.sessions.c.set_id).where(t.sessions.c.origin.in_([SetOrigin(o).value for o in origins]))
        where = [t.snapshot_sets.c.id.in_(made_by)]
        if states is not None:
            where.append(t.snapshot_sets.c.state.in_([SetState(s).value for s in states]))
        with self._read() as conn:
            return load_sets(conn, *where)


def _load_session(conn: Connection, set_id: uuid.UUID) -> SessionRecord:
    query = select(t.sessions).where(t.sessions.c.set_id == str(set_id))
    return _session_record(one_row(conn, query, f"no session recorded for set {set_id}"))


def _session_record(row: RowMapping) -> SessionRecord:
    succeeded, origin = row["succeeded"], row["origin"]
    return SessionRecord(
        set_id=uuid.UUID(row["set_id"]),
        backup_type=row["backup_type"],
        writer_specs=tuple(str(spec) for spec in json.loads(row["writer_specs"])),
        documents_dir=row["documents_dir"],
        updated_at=row["updated_at"],
        completed_at=row["completed_at"],
        succeeded=None if succeeded is None else bool(succeeded),
        origin=None if origin is None else SetOrigin(origin),
    )
