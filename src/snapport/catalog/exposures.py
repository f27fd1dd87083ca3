"""Where a set went: the hosts that imported it (`imports`) and where its snapshots were mounted (`exposures`,
history kept)."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Connection, RowMapping, insert, select, update

from snapport.catalog import schema as t
from snapport.catalog.clock import require_aware, utc_now
from snapport.catalog.core import RACE_RETRIES, CatalogCore, lost_insert_race, new_id, same
from snapport.catalog.events import insert_event
from snapport.catalog.records import Exposure, ImportRecord
from snapport.catalog.sets import attrs_text, load_snapshot, require_set
from snapport.errors import BadState, CatalogError
from snapport.model import Attr, EventKind
from snapport.model.paths import volume_path


class ExposureStore(CatalogCore):
    """Imports, once per (set, host), and exposures of snapshots on this host."""

    def record_import(
        self,
        set_id: uuid.UUID,
        host: str,
        *,
        import_ms: float | None = None,
        document_sha256: str | None = None,
        imported_at: datetime | None = None,
    ) -> ImportRecord:
        """Record that `host` imported the set; idempotent: a second import of the same set on the same host
        returns the first record unchanged (the VSS rule for re-import)."""
        at = utc_now() if imported_at is None else require_aware(imported_at, "imported_at")
        for _attempt in range(RACE_RETRIES):
            try:
                with self._write() as conn:
                    require_set(conn, set_id)
                    existing = _load_import(conn, set_id, host)
                    if existing is not None:
                        return existing
                    conn.execute(
                        insert(t.imports).values(
                            set_id=str(set_id),
                            host=host,
                            imported_at=at,
                            import_ms=import_ms,
                            document_sha256=document_sha256,
                        )
                    )
                    insert_event(conn, EventKind.IMPORTED, f"imported on {host}", set_id)
                    return ImportRecord(set_id, host, at, import_ms, document_sha256)
            except CatalogError as exc:
                if not lost_insert_race(exc):  # PostgreSQL: a concurrent import won; re-read
                    raise
        raise CatalogError(f"set {set_id} kept changing while recording its import on {host}; retry")

    def imports(self, set_id: uuid.UUID | None = None) -> list[ImportRecord]:
        query = select(t.imports).order_by(t.imports.c.id)
        if set_id is not None:
            query = query.where(t.imports.c.set_id == str(set_id))
        with self._read() as conn:
            return [_import_record(row) for row in conn.execute(query).mappings()]

    def record_exposure(self, snapshot_id: uuid.UUID, path: str) -> Exposure:
        """Record that a snapshot is mounted read-only at `path` on this host: sets its `exposed_at`, adds
        `exposed-locally` and keeps the exposure in the history. Idempotent for the same path; `BadState` if it
        is exposed elsewhere."""
        path = volume_path(path)
        for _attempt in range(RACE_RETRIES):
            with self._write() as conn:
                snap = load_snapshot(conn, snapshot_id)
                if snap.exposed_at is not None and snap.exposed_at != path:
                    raise BadState(f"snapshot {snapshot_id} is already exposed at {snap.exposed_at}")
                active = _active_exposure(conn, snapshot_id)
                if snap.exposed_at == path and active is not None:
                    return active
                claimed = conn.execute(
                    update(t.snapshots)
                    .where(t.snapshots.c.id == str(snapshot_id), same(t.snapshots.c.exposed_at, snap.exposed_at))
                    .values(exposed_at=path, attrs=attrs_text(snap.attrs | Attr.EXPOSED_LOCALLY))
                )
                if claimed.rowcount == 1:
                    now = utc_now()
                    result = conn.execute(
                        insert(t.exposures).values(
                            snapshot_id=str(snapshot_id), host=self._host, path=path, exposed_at=now
                        )
                    )
                    insert_event(conn, EventKind.EXPOSED, f"snapshot {snapshot_id} exposed at {path}", snap.set_id)
                    return Exposure(new_id(result), snapshot_id, self._host, path, now)
        raise CatalogError(f"snapshot {snapshot_id} kept changing while recording its exposure; retry")

    def remove_exposure(self, snapshot_id: uuid.UUID) -> Exposure | None:
        """Record that a snapshot is no longer mounted; returns the ended exposure, or None if it was not exposed
        (idempotent, as every undo step is)."""
        for _attempt in range(RACE_RETRIES):
            with self._write() as conn:
                snap = load_snapshot(conn, snapshot_id)
                if snap.exposed_at is None:
                    return None
                cleared = conn.execute(
                    update(t.snapshots)
                    .where(t.snapshots.c.id == str(snapshot_id), t.snapshots.c.exposed_at == snap.exposed_at)
                    .values(exposed_at=None, attrs=attrs_text(snap.attrs & ~Attr.EXPOSED_LOCALLY))
                )
                if cleared.rowcount != 1:
                    continue
                active = _active_exposure(conn, snapshot_id)
                now = utc_now()
                conn.execute(
                    update(t.exposures)
                    .where(t.exposures.c.snapshot_id == str(snapshot_id), t.exposures.c.removed_at.is_(None))
                    .values(removed_at=now)
                )
                insert_event(conn, EventKind.UNEXPOSED, f"snapshot {snapshot_id} unexposed", snap.set_id)
                if active is None:  # exposed_at had been set by update_snapshot, without an exposure record
                    return Exposure(0, snapshot_id, self._host, snap.exposed_at, now, now)
                return Exposure(active.id, snapshot_id, active.host, active.path, active.since, now)
        raise CatalogError(f"snapshot {snapshot_id} kept changing while recording its unexposure; retry")

    def exposures(self, snapshot_id: uuid.UUID | None = None, *, active_only: bool = False) -> list[Exposure]:
        query = select(t.exposures).order_by(t.exposures.c.id)
        if snapshot_id is not None:
            query = query.where(t.exposures.c.snapshot_id == str(snapshot_id))
        if active_only:
            query = query.where(t.exposures.c.removed_at.is_(None))
        with self._read() as conn:
            return [_exposure_record(row) for row in conn.execute(query).mappings()]


def _load_import(conn: Connection, set_id: uuid.UUID, host: str) -> ImportRecord | None:
    row = (
        conn.execute(select(t.imports).where(t.imports.c.set_id == str(set_id), t.imports.c.host == host))
        .mappings()
        .first()
    )
    return None if row is None else _import_record(row)


def _active_exposure(conn: Connection, snapshot_id: uuid.UUID) -> Exposure | None:
    row = (
        conn.execute(
            select(t.exposures)
            .where(t.exposures.c.snapshot_id == str(snapshot_id), t.exposures.c.removed_at.is_(None))
            .order_by(t.exposures.c.id.desc())
        )
        .mappings()
        .first()
    )
    return None if row is None else _exposure_record(row)


def _import_record(row: RowMapping) -> ImportRecord:
    return ImportRecord(
        set_id=uuid.UUID(row["set_id"]),
        host=row["host"],
        imported_at=row["imported_at"],
        import_ms=row["import_ms"],
        document_sha256=row["document_sha256"],
    )


def _exposure_record(row: RowMapping) -> Exposure:
    return Exposure(
        id=row["id"],
        snapshot_id=uuid.UUID(row["snapshot_id"]),
        host=row["host"],
        path=row["path"],
        since=row["exposed_at"],
        removed_at=row["removed_at"],
    )
