"""Snapshot sets and their snapshots: recording them, their transitions, and the rows they are stored in."""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, RowMapping, func, insert, select, update

from snapport.catalog import schema as t
from snapport.catalog.clock import require_aware, utc_now
from snapport.catalog.core import KEEP, RACE_RETRIES, CatalogCore, Keep, one_row
from snapport.catalog.events import insert_event
from snapport.errors import BadState, CatalogError, MaxVolumes, ObjectNotFound
from snapport.model import (
    INITIAL_STATES,
    MAX_VOLUMES_PER_SET,
    Attr,
    Context,
    EventKind,
    Locator,
    LunInformation,
    SetState,
    Snapshot,
    SnapshotSet,
    Volume,
    check_transition,
)
from snapport.model.paths import volume_path


class SetStore(CatalogCore):
    """Sets and snapshots: every state a set reaches is reached through `transition`, recorded with its event."""

    def add_set(self, snapshot_set: SnapshotSet) -> None:
        """Record a new set with its snapshots, in one transaction. It must start in an initial state
        (preparing, or importing): every later state is reached through `transition`."""
        if snapshot_set.state not in INITIAL_STATES:
            raise BadState(
                f"a new set starts preparing or importing, not {snapshot_set.state.value}; use transition() after"
            )
        for snapshot in snapshot_set.snapshots:
            if snapshot.set_id != snapshot_set.id:
                raise ValueError(f"snapshot {snapshot.id} belongs to set {snapshot.set_id}, not {snapshot_set.id}")
        now = utc_now()
        with self._write() as conn:
            if conn.scalar(select(t.snapshot_sets.c.id).where(t.snapshot_sets.c.id == str(snapshot_set.id))):
                raise CatalogError(f"set {snapshot_set.id} is already in the catalog")
            conn.execute(insert(t.snapshot_sets).values(_set_values(snapshot_set, now)))
            if snapshot_set.snapshots:
                conn.execute(
                    insert(t.snapshots),
                    [_snapshot_values(s, position) for position, s in enumerate(snapshot_set.snapshots)],
                )
            insert_event(
                conn,
                EventKind.SET_ADDED,
                f"{snapshot_set.context.value} set recorded {snapshot_set.state.value} with "
                f"{len(snapshot_set.snapshots)} snapshot(s) of {snapshot_set.originating_host}",
                snapshot_set.id,
            )

    def get_set(self, set_id: uuid.UUID) -> SnapshotSet:
        """The set with its snapshots; `ObjectNotFound` if the catalog has no such set."""
        with self._read() as conn:
            return load_set(conn, set_id)

    def list_sets(self, states: Collection[SetState] | None = None) -> list[SnapshotSet]:
        """Every set (or those in `states`), in the order they were recorded."""
        where = [] if states is None else [t.snapshot_sets.c.state.in_([s.value for s in states])]
        with self._read() as conn:
            return load_sets(conn, *where)

    def transition(self, set_id: uuid.UUID, new_state: SetState, *, reason: str | None = None) -> SnapshotSet:
        """Move a set to `new_state` if the life cycle allows it, and return the set as it now is.

        Read and update are one transaction, the update conditional on the state read (`WHERE state = :old`), so
        of two processes racing to move a set only one succeeds; the other sees the new state and is refused.
        A refused transition raises `BadState` after the refusal is recorded (and committed) in the events.
        `reason` goes into the event; for `aborted` it also becomes the set's `failure`.
        """
        because = f" ({reason})" if reason else ""
        for _attempt in range(RACE_RETRIES):
            refused: BadState | None = None
            with self._write() as conn:
                current = state_of(conn, set_id)
                try:
                    check_transition(current, new_state)
                except BadState as exc:
                    refused = BadState(f"set {set_id}: {exc.message}")
                    insert_event(conn, EventKind.TRANSITION_REFUSED, refused.message + because, set_id)
                else:
                    values: dict[str, Any] = {"state": new_state.value, "updated_at": utc_now()}
                    if new_state is SetState.ABORTED and reason:
                        values["failure"] = reason
                    moved = conn.execute(
                        update(t.snapshot_sets)
                        .where(t.snapshot_sets.c.id == str(set_id), t.snapshot_sets.c.state == current.value)
                        .values(values)
                    )
                    if moved.rowcount == 1:
                        insert_event(
                            conn, EventKind.TRANSITION, f"{current.value} -> {new_state.value}{because}", set_id
                        )
                        return load_set(conn, set_id)
            if refused is not None:
                raise refused
            # Lost a race (PostgreSQL, READ COMMITTED): the state changed between read and update. Read it again.
        raise CatalogError(f"set {set_id} kept changing while moving it to {new_state.value}; retry")

    def update_set(
        self,
        set_id: uuid.UUID,
        *,
        description: str | None = None,
        failure: str | None = None,
        freeze_window_ms: float | None = None,
        commit_ms: float | None = None,
        created_at: datetime | None = None,
    ) -> SnapshotSet:
        """Set the given fields of a set (None leaves a field as it is); its state changes only by `transition`."""
        values: dict[str, Any] = {
            key: value
            for key, value in {
                "description": description,
                "failure": failure,
                "freeze_window_ms": freeze_window_ms,
                "commit_ms": commit_ms,
                "created_at": None if created_at is None else require_aware(created_at, "created_at"),
            }.items()
            if value is not None
        }
        values["updated_at"] = utc_now()
        with self._write() as conn:
            done = conn.execute(update(t.snapshot_sets).where(t.snapshot_sets.c.id == str(set_id)).values(values))
            if done.rowcount != 1:
                raise ObjectNotFound(f"no snapshot set {set_id} in the catalog")
            return load_set(conn, set_id)

    def record_timings(
        self, set_id: uuid.UUID, *, freeze_window_ms: float | None = None, commit_ms: float | None = None
    ) -> SnapshotSet:
        """Record how long the writers were frozen and how long the provider commit took (DESIGN §4)."""
        return self.update_set(set_id, freeze_window_ms=freeze_window_ms, commit_ms=commit_ms)

    # -- snapshots ----------------------------------------------------------------------------------------------

    def add_snapshot(self, snapshot: Snapshot) -> None:
        """Add a snapshot to its set, which must still be preparing or importing and hold fewer than 64."""
        with self._write() as conn:
            row = conn.execute(
                select(t.snapshot_sets.c.state)
                .where(t.snapshot_sets.c.id == str(snapshot.set_id))
                .with_for_update()  # PostgreSQL: no transition in between (SQLite: the write lock does it)
            ).first()
            if row is None:
                raise ObjectNotFound(f"no snapshot set {snapshot.set_id} in the catalog")
            state = SetState(row.state)
            if state not in INITIAL_STATES:
                raise BadState(f"set {snapshot.set_id} is {state.value}: snapshots are added while preparing")
            count, last = conn.execute(
                select(func.count(), func.max(t.snapshots.c.position)).where(
                    t.snapshots.c.set_id == str(snapshot.set_id)
                )
            ).one()
            if count >= MAX_VOLUMES_PER_SET:
                raise MaxVolumes(f"set {snapshot.set_id} already holds {MAX_VOLUMES_PER_SET} volumes")
            conn.execute(insert(t.snapshots).values(_snapshot_values(snapshot, 0 if last is None else last + 1)))
            insert_event(
                conn,
                EventKind.SNAPSHOT_ADDED,
                f"snapshot {snapshot.id} of {snapshot.volume.mount_point}",
                snapshot.set_id,
            )

    def get_snapshot(self, snapshot_id: uuid.UUID) -> Snapshot:
        with self._read() as conn:
            return load_snapshot(conn, snapshot_id)

    def update_snapshot(
        self,
        snapshot_id: uuid.UUID,
        *,
        device: str | Keep | None = KEEP,
        exposed_at: str | Keep | None = KEEP,
        attrs: Attr | Keep = KEEP,
        created_at: datetime | Keep | None = KEEP,
        locator: Locator | Keep = KEEP,
    ) -> Snapshot:
        """Change where a snapshot is attached or mounted, its attributes, creation time or locator (the provider
        fills it in at commit); None clears, KEEP (the default) keeps.

        Prefer `record_exposure`/`remove_exposure` to mount and unmount: they keep the exposure history too.
        """
        values: dict[str, Any] = {}
        if not isinstance(device, Keep):
            values["device"] = device
        if not isinstance(exposed_at, Keep):
            values["exposed_at"] = None if exposed_at is None else volume_path(exposed_at)
        if not isinstance(attrs, Keep):
            values["attrs"] = attrs_text(attrs)
        if not isinstance(created_at, Keep):
            values["created_at"] = None if created_at is None else require_aware(created_at, "created_at")
        if not isinstance(locator, Keep):
            values["provider"] = locator.provider
            values["locator"] = _locator_text(locator)
        with self._write() as conn:
            if values:
                done = conn.execute(update(t.snapshots).where(t.snapshots.c.id == str(snapshot_id)).values(values))
                if done.rowcount != 1:
                    raise ObjectNotFound(f"no snapshot {snapshot_id} in the catalog")
            return load_snapshot(conn, snapshot_id)


# -- inside a transaction (the other families read sets through these too) ----------------------------------------


def state_of(conn: Connection, set_id: uuid.UUID) -> SetState:
    """The set's state; `ObjectNotFound` if the catalog has no such set."""
    state = conn.scalar(select(t.snapshot_sets.c.state).where(t.snapshot_sets.c.id == str(set_id)))
    if state is None:
        raise ObjectNotFound(f"no snapshot set {set_id} in the catalog")
    return SetState(state)


def require_set(conn: Connection, set_id: uuid.UUID) -> None:
    """`ObjectNotFound` unless the catalog holds the set (before recording anything about it)."""
    state_of(conn, set_id)


def load_set(conn: Connection, set_id: uuid.UUID) -> SnapshotSet:
    found = load_sets(conn, t.snapshot_sets.c.id == str(set_id))
    if not found:
        raise ObjectNotFound(f"no snapshot set {set_id} in the catalog")
    return found[0]


def load_sets(conn: Connection, *where: ColumnElement[bool]) -> list[SnapshotSet]:
    """The sets matching `where` (on `snapshot_sets`' columns), with their snapshots, in the order recorded."""
    # One statement (sets LEFT JOIN snapshots), so the sets and their snapshots are read at one instant on
    # every backend, not only inside SQLite's snapshot isolation.
    snap_columns = [c.label(f"snap_{c.name}") for c in t.snapshots.c]
    query = (
        select(*t.snapshot_sets.c, *snap_columns)
        .select_from(t.snapshot_sets.outerjoin(t.snapshots, t.snapshots.c.set_id == t.snapshot_sets.c.id))
        .where(*where)
        .order_by(t.snapshot_sets.c.recorded_at, t.snapshot_sets.c.id, t.snapshots.c.position)
    )
    sets: dict[str, tuple[RowMapping, list[Snapshot]]] = {}
    for row in conn.execute(query).mappings():
        entry = sets.setdefault(row["id"], (row, []))
        if row["snap_id"] is not None:
            entry[1].append(_snapshot_from_row(row, prefix="snap_"))
    return [_set_from_row(row, snaps) for row, snaps in sets.values()]


def load_snapshot(conn: Connection, snapshot_id: uuid.UUID) -> Snapshot:
    query = select(t.snapshots).where(t.snapshots.c.id == str(snapshot_id))
    return _snapshot_from_row(one_row(conn, query, f"no snapshot {snapshot_id} in the catalog"))


# -- rows <-> records ---------------------------------------------------------------------------------------------


def attrs_text(attrs: Attr) -> str:
    return ",".join(attrs.names())


def _attrs_from_text(text: str) -> Attr:
    return Attr.from_names(text.split(",")) if text else Attr.NONE


def _lun_json(lun: LunInformation | None) -> dict[str, Any] | None:
    if lun is None:
        return None
    return {
        "array_id": lun.array_id,
        "lun_id": lun.lun_id,
        "serial": lun.serial,
        "size_bytes": lun.size_bytes,
        "vendor": lun.vendor,
        "product": lun.product,
    }


def _lun(data: dict[str, Any] | None) -> LunInformation | None:
    if data is None:
        return None
    return LunInformation(
        array_id=data["array_id"],
        lun_id=data["lun_id"],
        serial=data["serial"],
        size_bytes=int(data["size_bytes"]),
        vendor=data["vendor"],
        product=data["product"],
    )


def _locator_text(locator: Locator) -> str:
    return json.dumps(
        {
            "provider": locator.provider,
            "source": _lun_json(locator.source),
            "destination": _lun_json(locator.destination),
            "properties": [[key, value] for key, value in locator.properties],
        },
        sort_keys=True,
    )


def _locator(text: str) -> Locator:
    data = json.loads(text)
    return Locator(
        provider=data["provider"],
        source=_lun(data["source"]),
        destination=_lun(data["destination"]),
        properties=tuple((str(k), str(v)) for k, v in data["properties"]),
    )


def _set_values(s: SnapshotSet, now: datetime) -> dict[str, Any]:
    return {
        "id": str(s.id),
        "context": s.context.value,
        "attrs": attrs_text(s.attrs),
        "state": s.state.value,
        "originating_host": s.originating_host,
        "service_host": s.service_host,
        "created_at": None if s.created_at is None else require_aware(s.created_at, "created_at"),
        "recorded_at": now,
        "updated_at": now,
        "freeze_window_ms": s.freeze_window_ms,
        "commit_ms": s.commit_ms,
        "failure": s.failure,
        "description": s.description,
    }


def _snapshot_values(s: Snapshot, position: int) -> dict[str, Any]:
    return {
        "id": str(s.id),
        "set_id": str(s.set_id),
        "position": position,
        "volume_host": s.volume.host,
        "volume_mount_point": s.volume.mount_point,
        "volume_fs_type": s.volume.fs_type,
        "volume_fs_uuid": s.volume.fs_uuid,
        "volume_device": s.volume.device,
        "provider": s.locator.provider,
        "locator": _locator_text(s.locator),
        "attrs": attrs_text(s.attrs),
        "created_at": None if s.created_at is None else require_aware(s.created_at, "created_at"),
        "device": s.device,
        "exposed_at": s.exposed_at,
    }


def _snapshot_from_row(row: RowMapping, prefix: str = "") -> Snapshot:
    def col(name: str) -> Any:
        return row[prefix + name]

    return Snapshot(
        id=uuid.UUID(col("id")),
        set_id=uuid.UUID(col("set_id")),
        volume=Volume(
            host=col("volume_host"),
            mount_point=col("volume_mount_point"),
            fs_type=col("volume_fs_type"),
            fs_uuid=col("volume_fs_uuid"),
            device=col("volume_device"),
        ),
        locator=_locator(col("locator")),
        attrs=_attrs_from_text(col("attrs")),
        created_at=col("created_at"),
        device=col("device"),
        exposed_at=col("exposed_at"),
    )


def _set_from_row(row: RowMapping, snapshots: list[Snapshot]) -> SnapshotSet:
    return SnapshotSet(
        id=uuid.UUID(row["id"]),
        context=Context(row["context"]),
        attrs=_attrs_from_text(row["attrs"]),
        state=SetState(row["state"]),
        originating_host=row["originating_host"],
        service_host=row["service_host"],
        created_at=row["created_at"],
        snapshots=tuple(snapshots),
        freeze_window_ms=row["freeze_window_ms"],
        commit_ms=row["commit_ms"],
        failure=row["failure"],
        description=row["description"],
    )
