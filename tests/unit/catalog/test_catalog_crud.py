"""The catalog's records and transitions, run on SQLite and on a throwaway PostgreSQL server (conftest.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

from snapport.catalog import KEEP, Catalog, JobProgress, head_revision
from snapport.catalog.engine import current_revision
from snapport.catalog.schema import metadata
from snapport.errors import BadState, CatalogError, LeaseExpired, MaxVolumes, ObjectNotFound, PathEscape
from snapport.model import (
    MAX_VOLUMES_PER_SET,
    Attr,
    Context,
    EventKind,
    JobState,
    Locator,
    LunInformation,
    SetOrigin,
    SetState,
    Snapshot,
    SnapshotSet,
    Volume,
    WriterState,
)
from tests.unit.catalog.catalog_worker import ask, ready, workers
from tests.unit.catalog.postgres_server import PostgresServer

# -- one catalog per test, on SQLite and on PostgreSQL ------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'home' / 'catalog.db'}"
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    name = request.getfixturevalue("pg_database")
    server.empty_database(name)
    yield server.url(name)


@pytest.fixture
def catalog(url: str) -> Iterator[Catalog]:
    with Catalog.open(url, host="systemone") as opened:
        yield opened


# -- helpers ------------------------------------------------------------------------------------------------------

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def snapshot(set_id: uuid.UUID, i: int = 0, **changes: object) -> Snapshot:
    made = Snapshot(
        id=uuid.uuid4(),
        set_id=set_id,
        volume=Volume("systemone", f"/srv/vol{i}", "xfs", f"fs-uuid-{i}", f"/dev/loop{i}"),
        locator=Locator(
            "reflink_array",
            LunInformation("array-1", f"lun-src-{i}", f"SRC{i}", 1 << 30, product="file-array"),
            LunInformation("array-1", f"lun-snap-{i}", f"SNAP{i}", 1 << 30),
            (("image", f"luns/snap-{i}.img"), ("clone", "ficlone")),
        ),
        attrs=Attr.TRANSPORTABLE | Attr.PLEX,
        created_at=T0 + timedelta(seconds=i),
    )
    return replace(made, **changes)  # type: ignore[arg-type]


def snapshot_set(n: int = 2, state: SetState = SetState.PREPARING, **changes: object) -> SnapshotSet:
    set_id = uuid.uuid4()
    made = SnapshotSet(
        id=set_id,
        context=Context.APP_BACKUP,
        attrs=Attr.PERSISTENT | Attr.NO_AUTO_RELEASE | Attr.TRANSPORTABLE,
        state=state,
        originating_host="systemone",
        service_host="systemone",
        created_at=T0,
        snapshots=tuple(snapshot(set_id, i) for i in range(n)),
        description="nightly",
    )
    return replace(made, **changes)  # type: ignore[arg-type]


def created_set(catalog: Catalog, n: int = 1) -> SnapshotSet:
    s = snapshot_set(n)
    catalog.add_set(s)
    catalog.transition(s.id, SetState.SNAPSHOTTING)
    return catalog.transition(s.id, SetState.CREATED)


# -- sets and transitions -----------------------------------------------------------------------------------------


def test_open_creates_the_schema_at_head(catalog: Catalog) -> None:
    assert head_revision() == "0003"
    with catalog._engine.connect() as conn:
        assert current_revision(conn) == head_revision()


@pytest.mark.postgresql
def test_two_processes_opening_a_fresh_postgresql_catalog_at_once(pg_server: PostgresServer) -> None:
    with workers(("open", "-"), ("open", "-")) as procs:
        ready(procs)
        for _round in range(3):
            name = pg_server.create_database()
            try:
                assert ask(procs, pg_server.url(name)) == ["opened postgresql"] * 2
                with Catalog.open(pg_server.url(name)) as catalog, catalog._engine.connect() as conn:
                    assert current_revision(conn) == head_revision()
                    assert compare_metadata(MigrationContext.configure(conn), metadata) == []
            finally:
                pg_server.drop_database(name)


def test_a_set_round_trips_exactly(catalog: Catalog) -> None:
    s = snapshot_set(3, freeze_window_ms=12.5, commit_ms=3.25)
    catalog.add_set(s)
    got = catalog.get_set(s.id)
    assert got == s
    assert got.created_at is not None and got.created_at.tzinfo is UTC
    assert [snap.id for snap in got.snapshots] == [snap.id for snap in s.snapshots]


def test_a_set_without_snapshots_or_times_round_trips(catalog: Catalog) -> None:
    s = snapshot_set(0, state=SetState.IMPORTING, created_at=None, attrs=Attr.NONE, description="")
    catalog.add_set(s)
    assert catalog.get_set(s.id) == s


def test_unknown_ids_are_object_not_found(catalog: Catalog) -> None:
    missing = uuid.uuid4()
    with pytest.raises(ObjectNotFound):
        catalog.get_set(missing)
    with pytest.raises(ObjectNotFound):
        catalog.transition(missing, SetState.ABORTED)
    with pytest.raises(ObjectNotFound):
        catalog.update_set(missing, description="x")
    with pytest.raises(ObjectNotFound):
        catalog.add_snapshot(snapshot(missing))
    with pytest.raises(ObjectNotFound):
        catalog.get_snapshot(missing)
    with pytest.raises(ObjectNotFound):
        catalog.record_writer_event(missing, "w", "freeze", started_at=T0, duration_ms=1, ok=True)
    with pytest.raises(ObjectNotFound):
        catalog.grant_lease(missing, "systemtwo", 30)
    with pytest.raises(ObjectNotFound):
        catalog.get_writer("nobody")
    assert catalog.events() == []  # nothing was recorded for objects that do not exist


def test_add_set_refuses_duplicates_later_states_and_strangers_snapshots(catalog: Catalog) -> None:
    s = snapshot_set(1)
    catalog.add_set(s)
    with pytest.raises(CatalogError, match="already"):
        catalog.add_set(s)
    with pytest.raises(BadState):
        catalog.add_set(snapshot_set(1, state=SetState.CREATED))
    other = snapshot_set(0)
    with pytest.raises(ValueError, match="belongs to set"):
        catalog.add_set(replace(other, snapshots=(snapshot(uuid.uuid4()),)))
    # A snapshot id already used: the whole set is refused, nothing of it is kept.
    clash = snapshot_set(0)
    clash = replace(clash, snapshots=(replace(s.snapshots[0], set_id=clash.id),))
    with pytest.raises(CatalogError):
        catalog.add_set(clash)
    with pytest.raises(ObjectNotFound):
        catalog.get_set(clash.id)
    assert [x.id for x in catalog.list_sets()] == [s.id]


def test_list_sets_in_recorded_order_and_by_state(catalog: Catalog) -> None:
    sets = [snapshot_set(i % 3) for i in range(5)]
    for s in sets:
        catalog.add_set(s)
    catalog.transition(sets[1].id, SetState.ABORTED)
    catalog.transition(sets[3].id, SetState.SNAPSHOTTING)
    assert [s.id for s in catalog.list_sets()] == [s.id for s in sets]
    assert [s.id for s in catalog.list_sets({SetState.PREPARING})] == [sets[0].id, sets[2].id, sets[4].id]
    both = catalog.list_sets([SetState.ABORTED, SetState.SNAPSHOTTING])
    assert [(s.id, s.state) for s in both] == [(sets[1].id, SetState.ABORTED), (sets[3].id, SetState.SNAPSHOTTING)]
    assert catalog.list_sets(set()) == []
    assert [len(s.snapshots) for s in catalog.list_sets()] == [0, 1, 2, 0, 1]


def test_the_whole_life_cycle_is_recorded(catalog: Catalog) -> None:
    s = snapshot_set(1)
    catalog.add_set(s)
    path = [SetState.SNAPSHOTTING, SetState.CREATED, SetState.EXPOSED, SetState.CREATED, SetState.DELETING]
    path.append(SetState.DELETED)
    for state in path:
        moved = catalog.transition(s.id, state, reason="test")
        assert moved.state is state
        assert moved.snapshots == s.snapshots
    events = catalog.events(s.id)
    assert [e.kind for e in events] == [EventKind.SET_ADDED] + [EventKind.TRANSITION] * len(path)
    assert events[2].message == "snapshotting -> created (test)"
    assert all(e.set_id == s.id and e.at.tzinfo is UTC for e in events)
    assert [e.id for e in events] == sorted(e.id for e in events)


def test_an_illegal_transition_raises_and_its_refusal_is_committed(catalog: Catalog, url: str) -> None:
    s = snapshot_set(1)
    catalog.add_set(s)
    with pytest.raises(BadState, match="from preparing to created"):
        catalog.transition(s.id, SetState.CREATED, reason="skipping the freeze")
    assert catalog.get_set(s.id).state is SetState.PREPARING
    # Another connection (another process would see the same) finds the refusal: it was committed.
    with Catalog.open(url) as other:
        refused = other.events(s.id, kind=EventKind.TRANSITION_REFUSED)
    assert len(refused) == 1
    assert "from preparing to created" in refused[0].message
    assert refused[0].message.endswith("(skipping the freeze)")
    # Final states refuse everything.
    catalog.transition(s.id, SetState.ABORTED)
    for state in SetState:
        with pytest.raises(BadState):
            catalog.transition(s.id, state)
    assert len(catalog.events(s.id, kind=EventKind.TRANSITION_REFUSED)) == 1 + len(SetState)


def test_abort_reason_becomes_the_failure(catalog: Catalog) -> None:
    s = snapshot_set(1)
    catalog.add_set(s)
    catalog.transition(s.id, SetState.SNAPSHOTTING)
    aborted = catalog.transition(s.id, SetState.ABORTED, reason="FREEZE_TIMEOUT: writer sqlite did not freeze")
    assert aborted.failure == "FREEZE_TIMEOUT: writer sqlite did not freeze"
    assert catalog.get_set(s.id) == aborted


def test_update_set_and_record_timings(catalog: Catalog) -> None:
    s = snapshot_set(1, description="before")
    catalog.add_set(s)
    timed = catalog.record_timings(s.id, freeze_window_ms=41.5, commit_ms=7.0)
    assert (timed.freeze_window_ms, timed.commit_ms, timed.description) == (41.5, 7.0, "before")
    later = T0 + timedelta(hours=1)
    updated = catalog.update_set(s.id, description="after", failure="nope", created_at=later)
    assert (updated.freeze_window_ms, updated.commit_ms) == (41.5, 7.0)
    assert (updated.description, updated.failure, updated.created_at) == ("after", "nope", later)
    assert updated.state is SetState.PREPARING
    assert catalog.get_set(s.id) == updated


# -- snapshots ----------------------------------------------------------------------------------------------------


def test_snapshots_are_added_only_while_preparing_and_at_most_64(catalog: Catalog) -> None:
    s = snapshot_set(0)
    catalog.add_set(s)
    added = [snapshot(s.id, i) for i in range(MAX_VOLUMES_PER_SET)]
    for snap in added:
        catalog.add_snapshot(snap)
    assert catalog.get_set(s.id).snapshots == tuple(added)
    with pytest.raises(MaxVolumes):
        catalog.add_snapshot(snapshot(s.id, 99))
    later = snapshot_set(0)
    catalog.add_set(later)
    catalog.transition(later.id, SetState.SNAPSHOTTING)
    with pytest.raises(BadState, match="snapshotting"):
        catalog.add_snapshot(snapshot(later.id))
    assert catalog.get_set(later.id).snapshots == ()


def test_update_snapshot_sets_keeps_and_clears(catalog: Catalog) -> None:
    s = created_set(catalog)
    snap = s.snapshots[0]
    assert catalog.get_snapshot(snap.id) == snap
    attached = catalog.update_snapshot(snap.id, device="/dev/loop9", attrs=snap.attrs | Attr.IMPORTED)
    assert (attached.device, attached.exposed_at, attached.attrs) == ("/dev/loop9", None, snap.attrs | Attr.IMPORTED)
    assert attached.volume == snap.volume and attached.locator == snap.locator
    mounted = catalog.update_snapshot(snap.id, exposed_at="/mnt/x/")
    assert (mounted.device, mounted.exposed_at) == ("/dev/loop9", "/mnt/x")
    cleared = catalog.update_snapshot(snap.id, device=None, exposed_at=None, attrs=Attr.NONE, created_at=None)
    assert (cleared.device, cleared.exposed_at, cleared.attrs, cleared.created_at) == (None, None, Attr.NONE, None)
    assert catalog.update_snapshot(snap.id) == cleared
    assert catalog.update_snapshot(snap.id, device=KEEP) == cleared
    with pytest.raises(PathEscape):
        catalog.update_snapshot(snap.id, exposed_at="relative/mount")


# -- writers ------------------------------------------------------------------------------------------------------


def test_writer_events_keep_their_order_and_timings(catalog: Catalog) -> None:
    s = created_set(catalog)
    steps = ["identify", "prepare-backup", "freeze", "thaw"]
    for i, step in enumerate(steps):
        catalog.record_writer_event(
            s.id, "sqlite:/srv/app.db", step, started_at=T0 + timedelta(seconds=i), duration_ms=i * 1.5, ok=i != 3
        )
    recorded = catalog.record_writer_event(
        s.id, "hook", "freeze", started_at=T0, duration_ms=2, ok=False, error="exit 3"
    )
    events = catalog.writer_events(s.id)
    assert [e.event for e in events] == [*steps, "freeze"]
    assert events[-1] == recorded
    assert (events[2].duration_ms, events[2].ok, events[3].ok) == (3.0, True, False)
    assert events[0].started_at == T0
    assert catalog.writer_events(uuid.uuid4()) == []


def test_writer_status_is_upserted_and_keeps_what_is_not_given(catalog: Catalog) -> None:
    identity = {"class_id": "sqlite", "kind": "sqlite", "name": "SQLite writer", "instance_name": "/srv/app.db"}
    first = catalog.upsert_writer_status("w1", state=WriterState.STABLE, **identity)
    assert (first.state, first.last_error, first.last_freeze_ms) == (WriterState.STABLE, None, None)
    catalog.upsert_writer_status("w1", state=WriterState.FROZEN, last_freeze_ms=40.0, **identity)
    failed = catalog.upsert_writer_status("w1", state=WriterState.FAILED_AT_THAW, last_error="thaw: EIO", **identity)
    assert (failed.last_freeze_ms, failed.last_error, failed.state.failed) == (40.0, "thaw: EIO", True)
    assert failed.updated_at >= first.updated_at
    stable = catalog.upsert_writer_status("w1", state=WriterState.STABLE, last_error=None, **identity)
    assert (stable.last_error, stable.last_freeze_ms) == (None, 40.0)
    catalog.upsert_writer_status(
        "w0", state=WriterState.WAITING_FOR_FREEZE, **{**identity, "name": "Hook writer", "kind": "hook"}
    )
    assert [(w.writer_id, w.state) for w in catalog.list_writers()] == [
        ("w0", WriterState.WAITING_FOR_FREEZE),
        ("w1", WriterState.STABLE),
    ]
    assert catalog.get_writer("w1") == catalog.list_writers()[1]


# -- imports, exposures -------------------------------------------------------------------------------------------


def test_an_import_is_recorded_once_per_host(catalog: Catalog) -> None:
    s = snapshot_set(1, state=SetState.IMPORTING)
    catalog.add_set(s)
    first = catalog.record_import(s.id, "systemtwo", import_ms=120.5, document_sha256="ab" * 32)
    again = catalog.record_import(s.id, "systemtwo", import_ms=999.0)
    assert again == first
    elsewhere = catalog.record_import(s.id, "systemthree", imported_at=T0)
    assert catalog.imports(s.id) == [first, elsewhere]
    assert catalog.imports() == [first, elsewhere]
    assert len(catalog.events(s.id, kind=EventKind.IMPORTED)) == 2
    with pytest.raises(ObjectNotFound):
        catalog.record_import(uuid.uuid4(), "systemtwo")


def test_exposures_mark_the_snapshot_and_keep_history(catalog: Catalog) -> None:
    s = created_set(catalog, n=2)
    snap = s.snapshots[0]
    exposure = catalog.record_exposure(snap.id, "/mnt/snapport/a")
    assert (exposure.path, exposure.host, exposure.active) == ("/mnt/snapport/a", "systemone", True)
    exposed = catalog.get_snapshot(snap.id)
    assert exposed.exposed_at == "/mnt/snapport/a" and Attr.EXPOSED_LOCALLY in exposed.attrs
    assert catalog.record_exposure(snap.id, "/mnt/snapport/a/") == exposure  # idempotent, normalised path
    with pytest.raises(BadState, match="already exposed"):
        catalog.record_exposure(snap.id, "/mnt/elsewhere")
    with pytest.raises(PathEscape):
        catalog.record_exposure(s.snapshots[1].id, "/mnt/../etc")
    ended = catalog.remove_exposure(snap.id)
    assert ended is not None and ended.id == exposure.id and ended.removed_at is not None
    assert catalog.remove_exposure(snap.id) is None  # idempotent
    back = catalog.get_snapshot(snap.id)
    assert back.exposed_at is None and back.attrs == snap.attrs
    again = catalog.record_exposure(snap.id, "/mnt/elsewhere")
    assert [e.id for e in catalog.exposures(snap.id)] == [exposure.id, again.id]
    assert catalog.exposures(active_only=True) == [again]
    kinds = [e.kind for e in catalog.events(s.id) if e.kind in (EventKind.EXPOSED, EventKind.UNEXPOSED)]
    assert kinds == [EventKind.EXPOSED, EventKind.UNEXPOSED, EventKind.EXPOSED]


# -- leases -------------------------------------------------------------------------------------------------------


def test_lease_grant_renew_expire_release(catalog: Catalog) -> None:
    s = created_set(catalog)
    lease = catalog.grant_lease(s.id, "systemtwo", 30, now_monotonic=1000.0)
    assert (lease.holder, lease.keeper_host, lease.duration_s) == ("systemtwo", "systemone", 30.0)
    assert catalog.get_lease(lease.id) == lease
    assert catalog.expired_leases(now_monotonic=1029.0) == []
    renewed = catalog.renew_lease(lease.id, now_monotonic=1029.0)
    assert renewed.renewed_monotonic == 1029.0 and renewed.renewed_at >= lease.renewed_at
    assert catalog.expired_leases(now_monotonic=1058.0) == []
    assert [x.id for x in catalog.expired_leases(now_monotonic=1059.5)] == [lease.id]
    with pytest.raises(LeaseExpired):
        catalog.renew_lease(lease.id, now_monotonic=1059.5)
    longer = catalog.renew_lease(lease.id, duration_s=120, now_monotonic=1050.0)
    assert longer.duration_s == 120.0
    assert catalog.expired_leases(now_monotonic=1160.0) == []
    released = catalog.release_lease(lease.id)
    assert released.released_at is not None
    assert catalog.release_lease(lease.id) == released  # idempotent
    assert catalog.expired_leases(now_monotonic=1e9) == []
    with pytest.raises(BadState, match="released"):
        catalog.renew_lease(lease.id)
    assert catalog.leases(s.id) == [released]
    kinds = [e.kind for e in catalog.events(s.id) if e.kind.startswith("lease")]
    assert kinds == [EventKind.LEASE_GRANTED, EventKind.LEASE_RELEASED]
    with pytest.raises(ValueError, match="positive"):
        catalog.grant_lease(s.id, "systemtwo", 0)


def test_leases_are_judged_only_by_their_keeper_within_one_boot(catalog: Catalog, url: str) -> None:
    s = created_set(catalog)
    mine = catalog.grant_lease(s.id, "systemtwo", 30)
    assert catalog.expired_leases() == []
    with Catalog.open(url, host="systemtwo") as other:
        theirs = other.grant_lease(s.id, "systemone", 30, now_monotonic=0.0)
        # Another host's lease is never judged here, however old it looks by this host's clock.
        assert [x.id for x in catalog.expired_leases(now_monotonic=1e9)] == [mine.id]
        with pytest.raises(BadState, match="kept by host systemone"):
            other.renew_lease(mine.id)
        assert [x.id for x in other.expired_leases(now_monotonic=1.0)] == []
        assert theirs.id not in [x.id for x in catalog.leases() if x.keeper_host == "systemone"]
    # After a reboot (another boot id) the boot-time clock restarted: every earlier lease is over.
    catalog._boot_id = str(uuid.uuid4())
    assert [x.id for x in catalog.expired_leases(now_monotonic=0.0)] == [mine.id]
    with pytest.raises(LeaseExpired):
        catalog.renew_lease(mine.id, now_monotonic=0.0)


# -- sessions -----------------------------------------------------------------------------------------------------


def test_a_session_is_recorded_in_steps_and_completed_once(catalog: Catalog) -> None:
    s = created_set(catalog)
    with pytest.raises(ObjectNotFound):
        catalog.get_session(s.id)
    first = catalog.record_session(s.id, backup_type="full", writer_specs=["sqlite:/srv/app.db", "hook:/h.sh"])
    assert (first.backup_type, first.writer_specs, first.documents_dir) == (
        "full",
        ("sqlite:/srv/app.db", "hook:/h.sh"),
        None,
    )
    assert not first.completed
    later = catalog.record_session(s.id, documents_dir="/var/lib/snapport/sets/x")
    assert (later.backup_type, later.writer_specs, later.documents_dir) == (
        "full",
        ("sqlite:/srv/app.db", "hook:/h.sh"),
        "/var/lib/snapport/sets/x",
    )
    assert catalog.get_session(s.id) == later
    claimed = catalog.claim_completion(s.id, succeeded=True)
    assert claimed.completed and claimed.succeeded is True
    with pytest.raises(BadState, match="already reported"):
        catalog.claim_completion(s.id, succeeded=False)
    assert catalog.get_session(s.id) == claimed
    kinds = [e.kind for e in catalog.events(s.id) if "complet" in e.kind]
    assert kinds == [EventKind.COMPLETED, EventKind.COMPLETION_REFUSED]
    with pytest.raises(ObjectNotFound):
        catalog.record_session(uuid.uuid4(), backup_type="full")
    with pytest.raises(ObjectNotFound):
        catalog.claim_completion(uuid.uuid4(), succeeded=True)


def test_a_session_records_the_origin_of_its_set_and_sets_are_found_by_it(catalog: Catalog) -> None:
    made_here, offhost, mining, _no_session = (created_set(catalog) for _ in range(4))  # the last has no session
    assert catalog.record_session(made_here.id, backup_type="full").origin is None  # `snapport create`
    first = catalog.record_session(offhost.id, backup_type="full", origin=SetOrigin.OFFHOST_BACKUP)
    assert first.origin is SetOrigin.OFFHOST_BACKUP
    assert catalog.record_session(offhost.id, documents_dir="/d").origin is SetOrigin.OFFHOST_BACKUP  # kept
    catalog.record_session(mining.id, origin=SetOrigin.OFFHOST_DATA_MINING)
    assert catalog.get_session(mining.id).origin is SetOrigin.OFFHOST_DATA_MINING
    both = {SetOrigin.OFFHOST_BACKUP, SetOrigin.OFFHOST_DATA_MINING}
    assert [s.id for s in catalog.sets_with_origin(both)] == [offhost.id, mining.id]  # in the order recorded
    assert catalog.sets_with_origin([SetOrigin.OFFHOST_DATA_MINING]) == [catalog.get_set(mining.id)]
    catalog.transition(offhost.id, SetState.EXPOSED)
    assert [s.id for s in catalog.sets_with_origin(both, {SetState.CREATED})] == [mining.id]
    assert [s.id for s in catalog.sets_with_origin(both, {SetState.EXPOSED})] == [offhost.id]
    assert catalog.sets_with_origin(both, set()) == []
    assert catalog.sets_with_origin(set()) == []
    cleared = catalog.record_session(offhost.id, origin=None)
    assert cleared.origin is None and catalog.sets_with_origin(both) == [catalog.get_set(mining.id)]


def test_the_provider_fills_in_the_locator_at_commit(catalog: Catalog) -> None:
    s = snapshot_set(1)
    s = replace(s, snapshots=(replace(s.snapshots[0], locator=Locator("btrfs"), created_at=None),))
    catalog.add_set(s)
    locator = Locator("btrfs", properties=(("subvolume", "/srv/.snapshots/x"),))
    updated = catalog.update_snapshot(s.snapshots[0].id, locator=locator, created_at=T0)
    assert (updated.locator, updated.created_at) == (locator, T0)
    assert catalog.get_set(s.id).snapshots == (updated,)


# -- events, times, errors ----------------------------------------------------------------------------------------


def test_events_can_be_recorded_and_filtered(catalog: Catalog) -> None:
    s = snapshot_set(0)
    catalog.add_set(s)
    note = catalog.record_event(None, EventKind.RECONCILED, "found a stale loop device\n/dev/loop3")
    about = catalog.record_event(s.id, EventKind.TRANSITION_REFUSED, "by hand")
    assert note.message == "found a stale loop device /dev/loop3" and note.set_id is None
    assert (note.kind, about.kind) == ("reconciled", "transition-refused")  # the stored text is the kind's value
    assert catalog.events()[-2:] == [note, about]
    assert catalog.events(kind=EventKind.RECONCILED) == [note]
    assert catalog.events(s.id, kind=EventKind.TRANSITION_REFUSED) == [about]


def test_an_event_kind_is_one_of_the_enum_and_old_rows_of_other_kinds_still_read(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="doctor"):
        catalog.record_event(None, "doctor", "free text is no kind")  # type: ignore[arg-type]
    assert catalog.events() == []
    # A row an older snapport wrote, under a kind it took from a writer process, reads back as it was stored.
    with catalog._engine.begin() as conn:
        conn.execute(text("INSERT INTO events (kind, message, at) VALUES ('app-note', 'kept', :at)"), {"at": T0})
    (old,) = catalog.events()
    assert (old.kind, old.message, old.set_id) == ("app-note", "kept", None)


def test_naive_datetimes_are_refused(catalog: Catalog) -> None:
    naive = datetime(2026, 1, 1, 12, 0)
    with pytest.raises(ValueError, match="timezone-aware"):
        catalog.add_set(snapshot_set(0, created_at=naive))
    s = created_set(catalog)
    with pytest.raises(ValueError, match="timezone-aware"):
        catalog.record_writer_event(s.id, "w", "freeze", started_at=naive, duration_ms=1, ok=True)
    other_zone = datetime(2026, 1, 1, 14, 0, tzinfo=UTC) + timedelta(0)
    event = catalog.record_writer_event(s.id, "w", "freeze", started_at=other_zone, duration_ms=1, ok=True)
    assert catalog.writer_events(s.id) == [event]


def test_racing_transitions_and_completions_have_exactly_one_winner(catalog: Catalog, url: str) -> None:
    with workers(("race", url), ("race", url)) as procs:
        ready(procs)
        for _round in range(8):
            s = created_set(catalog)
            assert sorted(ask(procs, f"transition {s.id} deleting")) == ["lost", "won"]
            assert catalog.get_set(s.id).state is SetState.DELETING
            assert len(catalog.events(s.id, kind=EventKind.TRANSITION_REFUSED)) == 1
            moves = [e.message for e in catalog.events(s.id, kind=EventKind.TRANSITION)]
            assert moves.count("created -> deleting") == 1
            catalog.record_session(s.id, backup_type="full")
            assert sorted(ask(procs, f"complete {s.id}")) == ["lost", "won"]
            assert len(catalog.events(s.id, kind=EventKind.COMPLETED)) == 1
            assert len(catalog.events(s.id, kind=EventKind.COMPLETION_REFUSED)) == 1


def test_sqlite_durability_settings(tmp_path: Path) -> None:
    with Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}") as catalog, catalog._engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 10000


def test_an_in_memory_catalog_works_for_one_thread() -> None:
    with Catalog.open("sqlite://") as catalog:
        s = created_set(catalog)
        assert catalog.get_set(s.id).state is SetState.CREATED


def test_bad_urls_and_unreachable_databases_are_catalog_errors(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="unsupported"):
        Catalog.open("mysql://localhost/x")
    with pytest.raises(CatalogError, match="not a catalog URL"):
        Catalog.open("no url at all")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(CatalogError, match="cannot create"):
        Catalog.open(f"sqlite:///{blocker / 'home' / 'catalog.db'}")
    with pytest.raises(CatalogError, match="cannot open the catalog"):
        Catalog.open(f"postgresql://nobody@/x?host={tmp_path / 'no-socket-here'}&port=5")


# -- agent jobs (revision 0002) -------------------------------------------------------------------------------------


def test_a_job_round_trips_through_its_life(catalog: Catalog) -> None:
    job_id, set_id = uuid.uuid4(), uuid.uuid4()
    queued = catalog.add_job(job_id, "backup", params_json='{"a": 1}', requested_by="systemone", set_id=set_id)
    assert (queued.state, queued.params_json, queued.requested_by, queued.set_id) == (
        JobState.QUEUED,
        '{"a": 1}',
        "systemone",
        set_id,
    )
    assert queued.started_at is None and queued.finished_at is None and not queued.cancel_requested
    running = catalog.update_job(job_id, state=JobState.RUNNING)
    assert running.started_at is not None and running.finished_at is None
    progress = JobProgress(phase="copy", fraction=0.5, bytes_done=5 << 40, files_done=12)
    assert catalog.update_job(job_id, progress=progress).progress == progress  # bytes beyond 32 bits
    done = catalog.update_job(job_id, state=JobState.SUCCEEDED, result_json='{"ok": true}')
    assert done.finished_at is not None and done.result_json == '{"ok": true}'
    assert catalog.get_job(job_id) == done
    assert done.started_at is not None and done.started_at.tzinfo is UTC


def test_job_moves_are_checked_and_progress_needs_a_running_job(catalog: Catalog) -> None:
    job_id = uuid.uuid4()
    catalog.add_job(job_id, "backup")
    with pytest.raises(BadState, match="only a running job"):
        catalog.update_job(job_id, progress=JobProgress(phase="x"))
    with pytest.raises(BadState, match="cannot become succeeded"):
        catalog.update_job(job_id, state=JobState.SUCCEEDED)
    failed = catalog.update_job(job_id, state=JobState.FAILED, error=("JOB_INTERRUPTED", "agent stopped"))
    assert (failed.error_code, failed.error_message) == ("JOB_INTERRUPTED", "agent stopped")
    for state in JobState:
        with pytest.raises(BadState):
            catalog.update_job(job_id, state=state)
    with pytest.raises(ObjectNotFound):
        catalog.get_job(uuid.uuid4())
    with pytest.raises(ObjectNotFound):
        catalog.update_job(uuid.uuid4(), cancel_requested=True)
    with pytest.raises(CatalogError, match="already"):
        catalog.add_job(job_id, "backup")


def test_jobs_are_listed_in_creation_order_and_filtered(catalog: Catalog) -> None:
    set_id = uuid.uuid4()
    ids = [catalog.add_job(uuid.uuid4(), "a" if i % 2 else "b", set_id=set_id if i == 3 else None).id for i in range(5)]
    catalog.update_job(ids[0], state=JobState.RUNNING)
    assert [j.id for j in catalog.list_jobs()] == ids
    assert [j.id for j in catalog.list_jobs(limit=2)] == ids[3:]  # the newest two, oldest first
    assert [j.id for j in catalog.list_jobs([JobState.RUNNING])] == ids[:1]
    assert [j.id for j in catalog.list_jobs(kind="a")] == [ids[1], ids[3]]
    assert [j.id for j in catalog.list_jobs(set_id=set_id)] == [ids[3]]
