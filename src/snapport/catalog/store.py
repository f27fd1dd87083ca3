"""The catalog: durable records of snapshot sets and of everything done to them, on SQLite or PostgreSQL.

Every write is one short transaction, committed before the method returns, so a caller that acts after the call
acts on a recorded state ("every state change is in the catalog before it is acted on").
"""

from __future__ import annotations

import enum
import json
import socket
import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from types import TracebackType
from typing import Any

from sqlalchemy import ColumnElement, Connection, CursorResult, Engine, RowMapping, func, insert, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from snapport.catalog import schema as t
from snapport.catalog.clock import boot_id, boot_seconds, require_aware, utc_now
from snapport.catalog.engine import WRITE, describe, make_engine, migrate, parse_url, sqlite_path
from snapport.catalog.records import (
    JOB_TRANSITIONS,
    CatalogEvent,
    EventKind,
    Exposure,
    ImportRecord,
    JobProgress,
    JobRecord,
    JobState,
    Lease,
    SessionRecord,
    WriterEvent,
    WriterStatus,
)
from snapport.errors import BadState, CatalogError, LeaseExpired, MaxVolumes, ObjectNotFound, SnapportError
from snapport.model import (
    INITIAL_STATES,
    MAX_VOLUMES_PER_SET,
    Attr,
    Context,
    Locator,
    LunInformation,
    SetState,
    Snapshot,
    SnapshotSet,
    Volume,
    WriterState,
    check_transition,
)
from snapport.model.paths import volume_path

# How often a conditional update that lost a race is retried before giving up (PostgreSQL only: SQLite's write
# transactions are serialised by BEGIN IMMEDIATE, so there the first attempt always decides).
_RACE_RETRIES = 50


class Keep(enum.Enum):
    """The default of an optional update argument: leave the stored value as it is (None means "clear it")."""

    KEEP = "keep"


KEEP = Keep.KEEP


class Catalog:
    """One host's catalog. Open with `Catalog.open(url)`; safe to use from several threads and processes at once."""

    def __init__(self, engine: Engine, *, host: str) -> None:
        self._engine = engine
        self._host = host
        self._boot_id = boot_id()

    # -- life cycle ---------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, *, host: str | None = None) -> Catalog:
        """Open the catalog at `url` (SQLite file or PostgreSQL), creating it or upgrading its schema to head.

        `host` names this host in the records it keeps (exposures, leases); default: the host name.
        """
        parsed = parse_url(url)
        shown = parsed.render_as_string(hide_password=True)
        path = sqlite_path(parsed)
        if path is not None:
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise CatalogError(f"cannot create the catalog directory {path.parent}: {exc.strerror}") from exc
        engine = make_engine(parsed)
        try:
            migrate(engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise CatalogError(f"cannot open the catalog {shown}: {describe(exc)}") from exc
        except OSError as exc:
            engine.dispose()
            raise CatalogError(f"cannot open the catalog {shown}: {exc}") from exc
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, host=host or socket.gethostname())

    def close(self) -> None:
        """Close every pooled connection; the catalog must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return self._engine.url.render_as_string(hide_password=True)

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._engine.dialect.name

    @property
    def host(self) -> str:
        return self._host

    # -- transactions -------------------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises; database errors become
        `CatalogError`, our own errors pass through unchanged."""
        try:
            with self._engine.connect() as connection:
                if write:
                    connection.execution_options(**{WRITE: True})
                with connection.begin():
                    yield connection
        except SnapportError:
            raise
        except IntegrityError as exc:
            raise CatalogError(f"refused: conflicts with a record already in the catalog ({describe(exc)})") from exc
        except SQLAlchemyError as exc:
            raise CatalogError(f"catalog {'write' if write else 'read'} failed: {describe(exc)}") from exc

    def _write(self) -> AbstractContextManager[Connection]:
        return self._transaction(write=True)

    def _read(self) -> AbstractContextManager[Connection]:
        return self._transaction(write=False)

    # -- snapshot sets ------------------------------------------------------------------------------------------

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
            self._event(
                conn,
                EventKind.SET_ADDED,
                f"{snapshot_set.context.value} set recorded {snapshot_set.state.value} with "
                f"{len(snapshot_set.snapshots)} snapshot(s) of {snapshot_set.originating_host}",
                snapshot_set.id,
            )

    def get_set(self, set_id: uuid.UUID) -> SnapshotSet:
        """The set with its snapshots; `ObjectNotFound` if the catalog has no such set."""
        with self._read() as conn:
            return self._load_set(conn, set_id)

    def list_sets(self, states: Collection[SetState] | None = None) -> list[SnapshotSet]:
        """Every set (or those in `states`), in the order they were recorded."""
        where = [] if states is None else [t.snapshot_sets.c.state.in_([s.value for s in states])]
        with self._read() as conn:
            return self._load_sets(conn, *where)

    def transition(self, set_id: uuid.UUID, new_state: SetState, *, reason: str | None = None) -> SnapshotSet:
        """Move a set to `new_state` if the life cycle allows it, and return the set as it now is.

        Read and update are one transaction, the update conditional on the state read (`WHERE state = :old`), so
        of two processes racing to move a set only one succeeds; the other sees the new state and is refused.
        A refused transition raises `BadState` after the refusal is recorded (and committed) in the events.
        `reason` goes into the event; for `aborted` it also becomes the set's `failure`.
        """
        because = f" ({reason})" if reason else ""
        for _attempt in range(_RACE_RETRIES):
            refused: BadState | None = None
            with self._write() as conn:
                current = self._state_of(conn, set_id)
                try:
                    check_transition(current, new_state)
                except BadState as exc:
                    refused = BadState(f"set {set_id}: {exc.message}")
                    self._event(conn, EventKind.TRANSITION_REFUSED, refused.message + because, set_id)
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
                        self._event(
                            conn, EventKind.TRANSITION, f"{current.value} -> {new_state.value}{because}", set_id
                        )
                        return self._load_set(conn, set_id)
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
            return self._load_set(conn, set_id)

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
            self._event(
                conn,
                EventKind.SNAPSHOT_ADDED,
                f"snapshot {snapshot.id} of {snapshot.volume.mount_point}",
                snapshot.set_id,
            )

    def get_snapshot(self, snapshot_id: uuid.UUID) -> Snapshot:
        with self._read() as conn:
            return self._load_snapshot(conn, snapshot_id)

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
            values["attrs"] = _attrs_text(attrs)
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
            return self._load_snapshot(conn, snapshot_id)

    # -- writers ------------------------------------------------------------------------------------------------

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
    ) -> WriterEvent:
        """Record one step a writer took for a set (e.g. `freeze`), when it started and how long it took."""
        started_at = require_aware(started_at, "started_at")
        with self._write() as conn:
            self._require_set(conn, set_id)
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
            event_id = _new_id(result)
        return WriterEvent(event_id, set_id, writer_id, event, started_at, float(duration_ms), ok, error)

    def writer_events(self, set_id: uuid.UUID) -> list[WriterEvent]:
        """A set's writer events in the order they were recorded (empty for an unknown set)."""
        with self._read() as conn:
            rows = conn.execute(
                select(t.writer_events).where(t.writer_events.c.set_id == str(set_id)).order_by(t.writer_events.c.id)
            ).mappings()
            return [_writer_event(row) for row in rows]

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
    ) -> WriterStatus:
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
        for _attempt in range(_RACE_RETRIES):
            try:
                with self._write() as conn:
                    done = conn.execute(update(t.writers).where(t.writers.c.writer_id == writer_id).values(values))
                    if done.rowcount == 0:
                        conn.execute(insert(t.writers).values(writer_id=writer_id, **values))
                    return self._load_writer(conn, writer_id)
            except CatalogError as exc:
                # PostgreSQL: another process inserted the same writer between our UPDATE and INSERT; update it.
                if not isinstance(exc.__cause__, IntegrityError):
                    raise
        raise CatalogError(f"writer {writer_id} kept changing while recording its status; retry")

    def get_writer(self, writer_id: str) -> WriterStatus:
        with self._read() as conn:
            return self._load_writer(conn, writer_id)

    def list_writers(self) -> list[WriterStatus]:
        """Every writer this host has seen, by name and instance."""
        with self._read() as conn:
            rows = conn.execute(
                select(t.writers).order_by(t.writers.c.name, t.writers.c.instance_name, t.writers.c.writer_id)
            ).mappings()
            return [_writer_status(row) for row in rows]

    # -- imports and exposures ----------------------------------------------------------------------------------

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
        for _attempt in range(_RACE_RETRIES):
            try:
                with self._write() as conn:
                    self._require_set(conn, set_id)
                    existing = self._load_import(conn, set_id, host)
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
                    self._event(conn, EventKind.IMPORTED, f"imported on {host}", set_id)
                    return ImportRecord(set_id, host, at, import_ms, document_sha256)
            except CatalogError as exc:
                if not isinstance(exc.__cause__, IntegrityError):  # PostgreSQL: a concurrent import won; re-read
                    raise
        raise CatalogError(f"set {set_id} kept changing while recording its import on {host}; retry")

    def imports(self, set_id: uuid.UUID | None = None) -> list[ImportRecord]:
        query = select(t.imports).order_by(t.imports.c.id)
        if set_id is not None:
            query = query.where(t.imports.c.set_id == str(set_id))
        with self._read() as conn:
            return [_import(row) for row in conn.execute(query).mappings()]

    def record_exposure(self, snapshot_id: uuid.UUID, path: str) -> Exposure:
        """Record that a snapshot is mounted read-only at `path` on this host: sets its `exposed_at`, adds
        `exposed-locally` and keeps the exposure in the history. Idempotent for the same path; `BadState` if it
        is exposed elsewhere."""
        path = volume_path(path)
        for _attempt in range(_RACE_RETRIES):
            with self._write() as conn:
                snap = self._load_snapshot(conn, snapshot_id)
                if snap.exposed_at is not None and snap.exposed_at != path:
                    raise BadState(f"snapshot {snapshot_id} is already exposed at {snap.exposed_at}")
                active = self._active_exposure(conn, snapshot_id)
                if snap.exposed_at == path and active is not None:
                    return active
                claimed = conn.execute(
                    update(t.snapshots)
                    .where(t.snapshots.c.id == str(snapshot_id), _same(t.snapshots.c.exposed_at, snap.exposed_at))
                    .values(exposed_at=path, attrs=_attrs_text(snap.attrs | Attr.EXPOSED_LOCALLY))
                )
                if claimed.rowcount == 1:
                    now = utc_now()
                    result = conn.execute(
                        insert(t.exposures).values(
                            snapshot_id=str(snapshot_id), host=self._host, path=path, exposed_at=now
                        )
                    )
                    self._event(conn, EventKind.EXPOSED, f"snapshot {snapshot_id} exposed at {path}", snap.set_id)
                    return Exposure(_new_id(result), snapshot_id, self._host, path, now)
        raise CatalogError(f"snapshot {snapshot_id} kept changing while recording its exposure; retry")

    def remove_exposure(self, snapshot_id: uuid.UUID) -> Exposure | None:
        """Record that a snapshot is no longer mounted; returns the ended exposure, or None if it was not exposed
        (idempotent, as every undo step is)."""
        for _attempt in range(_RACE_RETRIES):
            with self._write() as conn:
                snap = self._load_snapshot(conn, snapshot_id)
                if snap.exposed_at is None:
                    return None
                cleared = conn.execute(
                    update(t.snapshots)
                    .where(t.snapshots.c.id == str(snapshot_id), t.snapshots.c.exposed_at == snap.exposed_at)
                    .values(exposed_at=None, attrs=_attrs_text(snap.attrs & ~Attr.EXPOSED_LOCALLY))
                )
                if cleared.rowcount != 1:
                    continue
                active = self._active_exposure(conn, snapshot_id)
                now = utc_now()
                conn.execute(
                    update(t.exposures)
                    .where(t.exposures.c.snapshot_id == str(snapshot_id), t.exposures.c.removed_at.is_(None))
                    .values(removed_at=now)
                )
                self._event(conn, EventKind.UNEXPOSED, f"snapshot {snapshot_id} unexposed", snap.set_id)
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
            return [_exposure(row) for row in conn.execute(query).mappings()]

    # -- leases -------------------------------------------------------------------------------------------------
    #
    # A lease bounds how long this host (the keeper) waits for the holder (the backup host). No two hosts' clocks
    # are ever compared: the keeper stamps grants and renewals with its own boot-time clock, stores the duration,
    # and alone judges expiry. A renewal that arrives from the holder is recorded by the keeper, on receipt.

    def grant_lease(
        self, set_id: uuid.UUID, holder: str, duration_s: float, *, now_monotonic: float | None = None
    ) -> Lease:
        """Grant `holder` a lease on the set for `duration_s` seconds, kept (and judged) by this host."""
        if not duration_s > 0:
            raise ValueError(f"a lease lasts a positive number of seconds, not {duration_s}")
        lease_id = uuid.uuid4()
        now = utc_now()
        mono = boot_seconds() if now_monotonic is None else now_monotonic
        with self._write() as conn:
            self._require_set(conn, set_id)
            conn.execute(
                insert(t.leases).values(
                    id=str(lease_id),
                    set_id=str(set_id),
                    holder=holder,
                    duration_s=float(duration_s),
                    keeper_host=self._host,
                    boot_id=self._boot_id,
                    granted_at=now,
                    renewed_at=now,
                    renewed_monotonic=mono,
                )
            )
            self._event(conn, EventKind.LEASE_GRANTED, f"lease {lease_id} to {holder} for {duration_s:g} s", set_id)
        return Lease(lease_id, set_id, holder, float(duration_s), self._host, self._boot_id, now, now, mono)

    def renew_lease(
        self, lease_id: uuid.UUID, *, duration_s: float | None = None, now_monotonic: float | None = None
    ) -> Lease:
        """Extend a live lease from now, by `duration_s` (default: its own duration). `LeaseExpired` if it ran
        out first (a renewal cannot revive it); `BadState` if released, or kept by another host."""
        if duration_s is not None and not duration_s > 0:
            raise ValueError(f"a lease lasts a positive number of seconds, not {duration_s}")
        mono = boot_seconds() if now_monotonic is None else now_monotonic
        for _attempt in range(_RACE_RETRIES):
            with self._write() as conn:
                lease = self._load_lease(conn, lease_id)
                if lease.released_at is not None:
                    raise BadState(f"lease {lease_id} was released; grant a new one")
                if lease.keeper_host != self._host:
                    raise BadState(f"lease {lease_id} is kept by host {lease.keeper_host}; renew it there")
                if lease.expired(boot_id=self._boot_id, now_monotonic=mono):
                    raise LeaseExpired(f"lease {lease_id} of {lease.holder} ran out before it was renewed")
                now = utc_now()
                values = {
                    "renewed_at": now,
                    "renewed_monotonic": mono,
                    "duration_s": lease.duration_s if duration_s is None else float(duration_s),
                }
                done = conn.execute(
                    update(t.leases)
                    .where(
                        t.leases.c.id == str(lease_id),
                        t.leases.c.released_at.is_(None),
                        t.leases.c.renewed_monotonic == lease.renewed_monotonic,
                    )
                    .values(values)
                )
                if done.rowcount == 1:
                    return self._load_lease(conn, lease_id)
        raise CatalogError(f"lease {lease_id} kept changing while renewing it; retry")

    def release_lease(self, lease_id: uuid.UUID) -> Lease:
        """End a lease (the holder is done, or the keeper gave up); idempotent."""
        with self._write() as conn:
            lease = self._load_lease(conn, lease_id)
            if lease.released_at is not None:
                return lease
            conn.execute(
                update(t.leases)
                .where(t.leases.c.id == str(lease_id), t.leases.c.released_at.is_(None))
                .values(released_at=utc_now())
            )
            self._event(conn, EventKind.LEASE_RELEASED, f"lease {lease_id} of {lease.holder} released", lease.set_id)
            return self._load_lease(conn, lease_id)

    def get_lease(self, lease_id: uuid.UUID) -> Lease:
        with self._read() as conn:
            return self._load_lease(conn, lease_id)

    def leases(self, set_id: uuid.UUID | None = None) -> list[Lease]:
        query = select(t.leases).order_by(t.leases.c.granted_at, t.leases.c.id)
        if set_id is not None:
            query = query.where(t.leases.c.set_id == str(set_id))
        with self._read() as conn:
            return [_lease(row) for row in conn.execute(query).mappings()]

    def expired_leases(self, now_monotonic: float | None = None) -> list[Lease]:
        """The unreleased leases this host keeps that have run out by its own clock, or were granted in an
        earlier boot (a reboot ends every session). Leases kept by other hosts are theirs to judge."""
        mono = boot_seconds() if now_monotonic is None else now_monotonic
        query = (
            select(t.leases)
            .where(t.leases.c.keeper_host == self._host, t.leases.c.released_at.is_(None))
            .order_by(t.leases.c.granted_at, t.leases.c.id)
        )
        with self._read() as conn:
            found = [_lease(row) for row in conn.execute(query).mappings()]
        return [lease for lease in found if lease.expired(boot_id=self._boot_id, now_monotonic=mono)]

    # -- sessions -----------------------------------------------------------------------------------------------

    def record_session(
        self,
        set_id: uuid.UUID,
        *,
        backup_type: str | Keep | None = KEEP,
        writer_specs: Sequence[str] | Keep = KEEP,
        documents_dir: str | Keep | None = KEEP,
    ) -> SessionRecord:
        """Create or update the set's session record; fields not given keep their stored values."""
        values: dict[str, Any] = {"updated_at": utc_now()}
        if not isinstance(backup_type, Keep):
            values["backup_type"] = backup_type
        if not isinstance(writer_specs, Keep):
            values["writer_specs"] = json.dumps(list(writer_specs))
        if not isinstance(documents_dir, Keep):
            values["documents_dir"] = documents_dir
        for _attempt in range(_RACE_RETRIES):
            try:
                with self._write() as conn:
                    self._require_set(conn, set_id)
                    done = conn.execute(update(t.sessions).where(t.sessions.c.set_id == str(set_id)).values(values))
                    if done.rowcount == 0:
                        conn.execute(insert(t.sessions).values({"set_id": str(set_id), "writer_specs": "[]", **values}))
                    return self._load_session(conn, set_id)
            except CatalogError as exc:
                if not isinstance(exc.__cause__, IntegrityError):  # PostgreSQL: a concurrent insert won; update it
                    raise
        raise CatalogError(f"the session of set {set_id} kept changing while recording it; retry")

    def get_session(self, set_id: uuid.UUID) -> SessionRecord:
        """The set's session record; `ObjectNotFound` if it has none."""
        with self._read() as conn:
            return self._load_session(conn, set_id)

    def claim_completion(self, set_id: uuid.UUID, *, succeeded: bool) -> SessionRecord:
        """Claim the right to fire BackupComplete for the set: exactly once, however many processes try.

        A conditional update (`WHERE completed_at IS NULL`) decides; the loser gets `BadState`, after the refusal
        is recorded. The claim is committed before it returns, so the writers hear of it only once it is durable.
        """
        outcome = "succeeded" if succeeded else "failed"
        with self._write() as conn:
            current = self._load_session(conn, set_id)
            claimed = conn.execute(
                update(t.sessions)
                .where(t.sessions.c.set_id == str(set_id), t.sessions.c.completed_at.is_(None))
                .values(completed_at=utc_now(), succeeded=succeeded, updated_at=utc_now())
            )
            if claimed.rowcount == 1:
                self._event(conn, EventKind.COMPLETED, f"backup {outcome}: BackupComplete claimed", set_id)
                return self._load_session(conn, set_id)
            done = self._load_session(conn, set_id) if current.completed_at is None else current
            was = "succeeded" if done.succeeded else "failed"
            at = done.completed_at.isoformat(timespec="seconds") if done.completed_at else "?"
            refused = BadState(f"set {set_id}: completion was already reported ({was}, at {at})")
            self._event(conn, EventKind.COMPLETION_REFUSED, f"{refused.message}; now {outcome}", set_id)
        raise refused

    # -- jobs ---------------------------------------------------------------------------------------------------

    def add_job(
        self,
        job_id: uuid.UUID,
        kind: str,
        *,
        params_json: str = "{}",
        requested_by: str | None = None,
        set_id: uuid.UUID | None = None,
    ) -> JobRecord:
        """Record a new job, queued; `CatalogError` if the id is taken."""
        now = utc_now()
        with self._write() as conn:
            if conn.scalar(select(t.jobs.c.id).where(t.jobs.c.id == str(job_id))):
                raise CatalogError(f"job {job_id} is already in the catalog")
            conn.execute(
                insert(t.jobs).values(
                    id=str(job_id),
                    kind=kind,
                    state=JobState.QUEUED.value,
                    params=params_json,
                    requested_by=requested_by,
                    set_id=None if set_id is None else str(set_id),
                    cancel_requested=False,
                    created_at=now,
                    updated_at=now,
                )
            )
            return self._load_job(conn, job_id)

    def update_job(
        self,
        job_id: uuid.UUID,
        *,
        state: JobState | Keep = KEEP,
        progress: JobProgress | Keep = KEEP,
        cancel_requested: bool | Keep = KEEP,
        result_json: str | Keep | None = KEEP,
        error: tuple[str, str] | Keep | None = KEEP,
    ) -> JobRecord:
        """Change a job: move it to `state` (if `JOB_TRANSITIONS` allows it; `BadState` if not), record its progress
        (only while it runs), a cancel request, its result or its error (`(code, message)`); KEEP keeps.

        Moving to running stamps `started_at`, to a final state `finished_at`. The move is a conditional update on
        the state read, so of two processes moving one job only one succeeds.
        """
        values: dict[str, Any] = {}
        if not isinstance(progress, Keep):
            values.update(
                phase=progress.phase,
                fraction=progress.fraction,
                bytes_done=progress.bytes_done,
                files_done=progress.files_done,
            )
        if not isinstance(cancel_requested, Keep):
            values["cancel_requested"] = cancel_requested
        if not isinstance(result_json, Keep):
            values["result"] = result_json
        if not isinstance(error, Keep):
            values["error_code"], values["error_message"] = (None, None) if error is None else error
        for _attempt in range(_RACE_RETRIES):
            with self._write() as conn:
                current = self._load_job(conn, job_id).state
                changes = dict(values, updated_at=utc_now())
                if not isinstance(state, Keep):
                    if state not in JOB_TRANSITIONS[current]:
                        raise BadState(f"job {job_id} is {current.value}; it cannot become {state.value}")
                    changes["state"] = state.value
                    if state is JobState.RUNNING:
                        changes["started_at"] = changes["updated_at"]
                    if state.finished:
                        changes["finished_at"] = changes["updated_at"]
                elif not isinstance(progress, Keep) and current is not JobState.RUNNING:
                    raise BadState(f"job {job_id} is {current.value}; only a running job reports progress")
                moved = conn.execute(
                    update(t.jobs).where(t.jobs.c.id == str(job_id), t.jobs.c.state == current.value).values(changes)
                )
                if moved.rowcount == 1:
                    return self._load_job(conn, job_id)
            # Lost a race (PostgreSQL, READ COMMITTED): the state changed between read and update. Read it again.
        raise CatalogError(f"job {job_id} kept changing while updating it; retry")

    def get_job(self, job_id: uuid.UUID) -> JobRecord:
        """The job; `ObjectNotFound` if the catalog has no such job."""
        with self._read() as conn:
            return self._load_job(conn, job_id)

    def list_jobs(
        self,
        states: Collection[JobState] | None = None,
        *,
        kind: str | None = None,
        set_id: uuid.UUID | None = None,
        limit: int | None = None,
    ) -> list[JobRecord]:
        """Jobs in the order they were created (the newest `limit` of them, if given), optionally filtered."""
        query = select(t.jobs)
        if states is not None:
            query = query.where(t.jobs.c.state.in_([JobState(s).value for s in states]))
        if kind is not None:
            query = query.where(t.jobs.c.kind == kind)
        if set_id is not None:
            query = query.where(t.jobs.c.set_id == str(set_id))
        query = query.order_by(t.jobs.c.created_at.desc(), t.jobs.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return [_job(row) for row in reversed(conn.execute(query).mappings().all())]

    # -- events -------------------------------------------------------------------------------------------------

    def record_event(self, set_id: uuid.UUID | None, kind: EventKind | str, message: str) -> CatalogEvent:
        """Add a line to the audit trail, about a set or (`set_id` None) about none in particular."""
        with self._write() as conn:
            return self._event(conn, kind, message, set_id)

    def events(self, set_id: uuid.UUID | None = None, *, kind: EventKind | str | None = None) -> list[CatalogEvent]:
        """The audit trail, oldest first: all of it, or one set's, or one kind's."""
        query = select(t.events).order_by(t.events.c.id)
        if set_id is not None:
            query = query.where(t.events.c.set_id == str(set_id))
        if kind is not None:
            query = query.where(t.events.c.kind == str(kind))
        with self._read() as conn:
            return [_catalog_event(row) for row in conn.execute(query).mappings()]

    # -- inside a transaction -----------------------------------------------------------------------------------

    def _event(self, conn: Connection, kind: EventKind | str, message: str, set_id: uuid.UUID | None) -> CatalogEvent:
        at = utc_now()
        message = " ".join(message.split())
        result = conn.execute(
            insert(t.events).values(
                set_id=None if set_id is None else str(set_id), kind=str(kind), message=message, at=at
            )
        )
        return CatalogEvent(_new_id(result), at, str(kind), message, set_id)

    def _state_of(self, conn: Connection, set_id: uuid.UUID) -> SetState:
        state = conn.scalar(select(t.snapshot_sets.c.state).where(t.snapshot_sets.c.id == str(set_id)))
        if state is None:
            raise ObjectNotFound(f"no snapshot set {set_id} in the catalog")
        return SetState(state)

    def _require_set(self, conn: Connection, set_id: uuid.UUID) -> None:
        self._state_of(conn, set_id)

    def _load_set(self, conn: Connection, set_id: uuid.UUID) -> SnapshotSet:
        found = self._load_sets(conn, t.snapshot_sets.c.id == str(set_id))
        if not found:
            raise ObjectNotFound(f"no snapshot set {set_id} in the catalog")
        return found[0]

    def _load_sets(self, conn: Connection, *where: ColumnElement[bool]) -> list[SnapshotSet]:
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
                entry[1].append(_snapshot(row, prefix="snap_"))
        return [_snapshot_set(row, snaps) for row, snaps in sets.values()]

    def _load_snapshot(self, conn: Connection, snapshot_id: uuid.UUID) -> Snapshot:
        row = conn.execute(select(t.snapshots).where(t.snapshots.c.id == str(snapshot_id))).mappings().first()
        if row is None:
            raise ObjectNotFound(f"no snapshot {snapshot_id} in the catalog")
        return _snapshot(row)

    def _load_writer(self, conn: Connection, writer_id: str) -> WriterStatus:
        row = conn.execute(select(t.writers).where(t.writers.c.writer_id == writer_id)).mappings().first()
        if row is None:
            raise ObjectNotFound(f"no writer {writer_id!r} in the catalog")
        return _writer_status(row)

    def _load_import(self, conn: Connection, set_id: uuid.UUID, host: str) -> ImportRecord | None:
        row = (
            conn.execute(select(t.imports).where(t.imports.c.set_id == str(set_id), t.imports.c.host == host))
            .mappings()
            .first()
        )
        return None if row is None else _import(row)

    def _active_exposure(self, conn: Connection, snapshot_id: uuid.UUID) -> Exposure | None:
        row = (
            conn.execute(
                select(t.exposures)
                .where(t.exposures.c.snapshot_id == str(snapshot_id), t.exposures.c.removed_at.is_(None))
                .order_by(t.exposures.c.id.desc())
            )
            .mappings()
            .first()
        )
        return None if row is None else _exposure(row)

    def _load_session(self, conn: Connection, set_id: uuid.UUID) -> SessionRecord:
        row = conn.execute(select(t.sessions).where(t.sessions.c.set_id == str(set_id))).mappings().first()
        if row is None:
            raise ObjectNotFound(f"no session recorded for set {set_id}")
        return _session(row)

    def _load_job(self, conn: Connection, job_id: uuid.UUID) -> JobRecord:
        row = conn.execute(select(t.jobs).where(t.jobs.c.id == str(job_id))).mappings().first()
        if row is None:
            raise ObjectNotFound(f"no job {job_id} in the catalog")
        return _job(row)

    def _load_lease(self, conn: Connection, lease_id: uuid.UUID) -> Lease:
        row = conn.execute(select(t.leases).where(t.leases.c.id == str(lease_id))).mappings().first()
        if row is None:
            raise ObjectNotFound(f"no lease {lease_id} in the catalog")
        return _lease(row)


# -- rows <-> records ---------------------------------------------------------------------------------------------


def _new_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _same(column: Any, value: str | None) -> ColumnElement[bool]:
    """`column = value`, or `column IS NULL` for None (SQL's `= NULL` is never true)."""
    result: ColumnElement[bool] = column.is_(None) if value is None else column == value
    return result


def _attrs_text(attrs: Attr) -> str:
    return ",".join(attrs.names())


def _attrs(text: str) -> Attr:
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
        "attrs": _attrs_text(s.attrs),
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
        "attrs": _attrs_text(s.attrs),
        "created_at": None if s.created_at is None else require_aware(s.created_at, "created_at"),
        "device": s.device,
        "exposed_at": s.exposed_at,
    }


def _snapshot(row: RowMapping, prefix: str = "") -> Snapshot:
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
        attrs=_attrs(col("attrs")),
        created_at=col("created_at"),
        device=col("device"),
        exposed_at=col("exposed_at"),
    )


def _snapshot_set(row: RowMapping, snapshots: list[Snapshot]) -> SnapshotSet:
    return SnapshotSet(
        id=uuid.UUID(row["id"]),
        context=Context(row["context"]),
        attrs=_attrs(row["attrs"]),
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


def _writer_event(row: RowMapping) -> WriterEvent:
    return WriterEvent(
        id=row["id"],
        set_id=uuid.UUID(row["set_id"]),
        writer_id=row["writer_id"],
        event=row["event"],
        started_at=row["started_at"],
        duration_ms=row["duration_ms"],
        ok=bool(row["ok"]),
        error=row["error"],
    )


def _writer_status(row: RowMapping) -> WriterStatus:
    return WriterStatus(
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


def _import(row: RowMapping) -> ImportRecord:
    return ImportRecord(
        set_id=uuid.UUID(row["set_id"]),
        host=row["host"],
        imported_at=row["imported_at"],
        import_ms=row["import_ms"],
        document_sha256=row["document_sha256"],
    )


def _exposure(row: RowMapping) -> Exposure:
    return Exposure(
        id=row["id"],
        snapshot_id=uuid.UUID(row["snapshot_id"]),
        host=row["host"],
        path=row["path"],
        since=row["exposed_at"],
        removed_at=row["removed_at"],
    )


def _lease(row: RowMapping) -> Lease:
    return Lease(
        id=uuid.UUID(row["id"]),
        set_id=uuid.UUID(row["set_id"]),
        holder=row["holder"],
        duration_s=row["duration_s"],
        keeper_host=row["keeper_host"],
        boot_id=row["boot_id"],
        granted_at=row["granted_at"],
        renewed_at=row["renewed_at"],
        renewed_monotonic=row["renewed_monotonic"],
        released_at=row["released_at"],
    )


def _session(row: RowMapping) -> SessionRecord:
    succeeded = row["succeeded"]
    return SessionRecord(
        set_id=uuid.UUID(row["set_id"]),
        backup_type=row["backup_type"],
        writer_specs=tuple(str(spec) for spec in json.loads(row["writer_specs"])),
        documents_dir=row["documents_dir"],
        updated_at=row["updated_at"],
        completed_at=row["completed_at"],
        succeeded=None if succeeded is None else bool(succeeded),
    )


def _catalog_event(row: RowMapping) -> CatalogEvent:
    set_id = row["set_id"]
    return CatalogEvent(
        id=row["id"],
        at=row["at"],
        kind=row["kind"],
        message=row["message"],
        set_id=None if set_id is None else uuid.UUID(set_id),
    )


def _job(row: RowMapping) -> JobRecord:
    return JobRecord(
        id=uuid.UUID(row["id"]),
        kind=row["kind"],
        state=JobState(row["state"]),
        params_json=row["params"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        requested_by=row["requested_by"],
        set_id=None if row["set_id"] is None else uuid.UUID(row["set_id"]),
        progress=JobProgress(
            phase=row["phase"], fraction=row["fraction"], bytes_done=row["bytes_done"], files_done=row["files_done"]
        ),
        cancel_requested=bool(row["cancel_requested"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        result_json=row["result"],
        error_code=row["error_code"],
        error_message=row["error_message"],
    )
