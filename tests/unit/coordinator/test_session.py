"""`BackupSession` without root: its sequence, its rollback after a failure at every step, writer exclusion and the
rollback of interrupted sets, with fake providers and writers (tests/support/fakes.py) on a real SQLite catalog.

The fakes note every call in one journal; the journal also notes each change of the set's state in the catalog,
so the order of events and state changes is asserted in full. Whether real providers and writers do their part
is for the real-device tests (tests/integration/coordinator)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from snapport.catalog import Catalog, catalog_url
from snapport.coordinator.host import Host
from snapport.coordinator.session import (
    BackupSession,
    OnWriterFailure,
    SessionOptions,
    describe_failure,
    roll_back_interrupted,
)
from snapport.documents import load_documents
from snapport.errors import FreezeTimeout, HoldTimeout, ObjectNotFound, ProviderError, WriterError
from snapport.model import Attr, Context, Locator, SetState, Snapshot, SnapshotSet, Volume
from snapport.osal.runner import RecordingRunner
from snapport.providers.base import Provider, ProviderHost
from snapport.writers.base import Tier, WriterEvent
from tests.support.fakes import (
    FakeMountTable,
    FakeProvider,
    FakeWriter,
    Journal,
    blkid_answers,
    by_name,
    device_mount,
    resolving_to,
)

pytestmark = pytest.mark.timeout(60)

HOST = "one"
DEVICES = {"data": ("/dev/fake-data", "xfs", "0b5e3c1d-data"), "logs": ("/dev/fake-logs", "ext4", "77aa01f2-logs")}

Step = str | frozenset[str]  # one journal line, or lines that come in any order (an event sent in parallel)

# The whole sequence for writers `app` (application tier) and `fs` (filesystem tier) on one fake provider.
SEQUENCE: list[Step] = [
    "state preparing",
    "app identify",
    "fs identify",
    "app prepare-backup",
    "fs prepare-backup",
    frozenset({"app prepare-snapshot", "fs prepare-snapshot"}),
    "fake prepare",
    "state snapshotting",
    "app freeze",  # applications first ...
    "fs freeze",  # ... then filesystems
    "fake commit",
    "fs thaw",  # thawed in reverse
    "app thaw",
    "fake post-commit",
    "app post-snapshot",
    "fs post-snapshot",
]
# A rollback: filesystems aborted first, then applications, then every writer's session ended; then the provider
# removes what it made.
ROLLBACK: list[Step] = [
    "fs abort",
    "app abort",
    frozenset({"app backup-shutdown", "fs backup-shutdown"}),
    "fake abort",
]

# A create that finds a set left by a dead process: that set's snapshots are removed before the new set exists.
ROLLED_BACK_FIRST = ["state absent", "fake abort", "state preparing", "app identify"]


def _lines(step: Step) -> frozenset[str]:
    return step if isinstance(step, frozenset) else frozenset({step})


def assert_journal(journal: Journal, expected: Sequence[Step]) -> None:
    """The journal holds exactly `expected`, in order (lines of a parallel step in any order)."""
    at = 0
    for step in expected:
        lines = _lines(step)
        got = journal.entries[at : at + len(lines)]
        assert frozenset(got) == lines, f"at line {at} expected {sorted(lines)}, got {got}; journal {journal.entries}"
        at += len(lines)
    assert at == len(journal.entries), f"unexpected lines after {at}: {journal.entries[at:]}"


def through(entry: str) -> list[Step]:
    """SEQUENCE up to and including the step with `entry`."""
    cut = next(i for i, step in enumerate(SEQUENCE) if entry in _lines(step))
    return SEQUENCE[: cut + 1]


@dataclass
class World:
    """A host with two volumes on fake devices (blkid answered by its RecordingRunner), one fake provider, and
    writers `app` and `fs` noting into one journal."""

    tmp: Path
    host: Host
    runner: RecordingRunner
    journal: Journal
    provider: FakeProvider
    volumes: dict[str, Path]

    def writers(self, **behaviour: Any) -> list[FakeWriter]:
        """`app` (application tier) and `fs` (filesystem tier); `behaviour` names a writer's `fail_at`/`hang_at`,
        e.g. app={"fail_at": WriterEvent.FREEZE}."""
        return [
            FakeWriter("app", self.journal, **behaviour.get("app", {})),
            FakeWriter("fs", self.journal, tier=Tier.FILESYSTEM, **behaviour.get("fs", {})),
        ]

    def session(self, writers: Sequence[FakeWriter], **options: Any) -> BackupSession:
        """A session over both volumes, on the one fake provider."""
        resolve = resolving_to(self.provider)
        session = BackupSession(self.host, SessionOptions(**options), writers, resolve_provider=resolve)
        for name in ("data", "logs"):
            session.add_volume(str(self.volumes[name]))
        self.journal.watch = lambda: _state(self.host, session.set_id)
        return session

    def get_set(self, set_id: uuid.UUID) -> SnapshotSet:
        return self.host.catalog.get_set(set_id)

    def event_kinds(self, set_id: uuid.UUID) -> list[str]:
        return [e.kind for e in self.host.catalog.events(set_id)]


def _state(host: Host, set_id: uuid.UUID) -> str:
    try:
        return host.catalog.get_set(set_id).state.value
    except ObjectNotFound:
        return "absent"


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    tmp = tmp_path.resolve()
    volumes = {name: tmp / "volumes" / name for name in DEVICES}
    for path in volumes.values():
        path.mkdir(parents=True)
    runner = RecordingRunner([blkid_answers({dev: (fs_type, fs_uuid) for dev, fs_type, fs_uuid in DEVICES.values()})])
    journal = Journal()
    provider = FakeProvider(journal)
    home = tmp / "home"
    catalog = Catalog.open(catalog_url(home), host=HOST)
    host = Host(
        name=HOST,
        home=home,
        catalog=catalog,
        runner=runner,
        run_dir=tmp / "run",
        mounts=FakeMountTable([device_mount(volumes[n], DEVICES[n][0], DEVICES[n][1]) for n in DEVICES]),
        provider_factory=by_name(provider),
    )
    yield World(tmp, host, runner, journal, provider, volumes)
    catalog.close()


def assert_rolled_back(world: World, session: BackupSession, *, because: str) -> None:
    """Aborted with the reason, and nothing the provider made is left."""
    snapshot_set = world.get_set(session.set_id)
    assert snapshot_set.state is SetState.ABORTED
    assert snapshot_set.failure is not None
    assert because in snapshot_set.failure, snapshot_set.failure
    assert world.provider.made == set()
    assert [set(ids) for ids in world.provider.aborted] == [{s.id for s in snapshot_set.snapshots}]
    assert not (world.host.documents_dir(session.set_id) / "backup-components.xml").exists()


# -- the sequence ------------------------------------------------------------------------------------------------


def test_the_sequence_runs_in_order_and_the_set_is_created_with_its_documents(world: World) -> None:
    writers = world.writers()
    session = world.session(writers)
    created = session.create()
    world.journal.note("done")  # notes the state the set ended in

    assert_journal(world.journal, [*SEQUENCE, "state created", "done"])
    assert created.snapshot_set.state is SetState.CREATED
    snapshot_ids = {s.id for s in created.snapshot_set.snapshots}
    assert [set(ids) for ids in world.provider.committed] == [snapshot_ids]  # one commit for the whole set
    assert world.provider.made == snapshot_ids
    assert world.provider.aborted == []

    # The volumes as the mount table and blkid (through the host's runner) describe them.
    volumes = {Path(s.volume.mount_point).name: s.volume for s in created.snapshot_set.snapshots}
    for name, (device, fs_type, fs_uuid) in DEVICES.items():
        assert (volumes[name].device, volumes[name].fs_type, volumes[name].fs_uuid) == (device, fs_type, fs_uuid)
    assert sorted(world.runner.calls) == sorted(("blkid", "-p", "-o", "export", d) for d, _, _ in DEVICES.values())

    # The catalog has the provider's locators and the writers' every event; the documents are saved.
    stored = world.get_set(session.set_id)
    assert stored.freeze_window_ms is not None and stored.commit_ms is not None
    for snap in stored.snapshots:
        assert snap.locator.property("volume") == snap.volume.mount_point
    events = [(e.writer_id, e.event, e.ok) for e in world.host.catalog.writer_events(session.set_id)]
    for writer in writers:
        done = [event for writer_id, event, ok in events if writer_id == str(writer.writer_id) and ok]
        assert done == ["identify", "prepare-backup", "prepare-snapshot", "freeze", "thaw", "post-snapshot"]
    bcd, wmds = load_documents(created.documents)
    assert bcd == created.bcd and sorted(w.instance_name for w in wmds) == ["app", "fs"]
    metadata = {w.instance_name: [c.backup_metadata for c in w.components] for w in bcd.writers}
    assert metadata == {"app": ["app metadata"], "fs": ["fs metadata"]}
    assert world.host.catalog.get_session(session.set_id).documents_dir == str(created.documents)


def test_the_resolver_is_asked_per_volume_and_one_provider_commits_the_whole_set(world: World) -> None:
    asked: list[tuple[str, ProviderHost, Attr, str | None]] = []
    second = FakeProvider(world.journal)  # another instance of the same provider: the first one takes both volumes
    hand_out = resolving_to(world.provider, second)

    def resolve(volume: Volume, host: ProviderHost, attrs: Attr, preferred: str | None) -> Provider:
        asked.append((volume.mount_point, host, attrs, preferred))
        return hand_out(volume, host, attrs, preferred)

    options = SessionOptions(provider="fake")
    session = BackupSession(world.host, options, resolve_provider=resolve)
    for name in ("data", "logs"):
        session.add_volume(str(world.volumes[name]))
    session.create()

    assert asked == [(str(world.volumes[n]), world.host.provider_host, session.attrs, "fake") for n in DEVICES]
    assert len(world.provider.committed) == 1 and len(world.provider.committed[0]) == 2
    assert second.committed == []


def test_a_provider_refusing_the_request_stops_add_volume_before_anything_is_recorded(world: World) -> None:
    world.provider.refuse = Attr.TRANSPORTABLE
    options = SessionOptions(context=Context.FILE_SHARE_BACKUP, modifiers=Attr.TRANSPORTABLE)
    session = BackupSession(world.host, options, resolve_provider=resolving_to(world.provider))
    with pytest.raises(ProviderError, match="refuses"):
        session.add_volume(str(world.volumes["data"]))
    assert session.volumes == ()
    assert world.host.catalog.list_sets() == []
    assert world.journal.entries == []


# -- a failure at each step rolls everything back ----------------------------------------------------------------

SENT_BEFORE_THE_SNAPSHOTS = [
    WriterEvent.IDENTIFY,
    WriterEvent.PREPARE_BACKUP,
    WriterEvent.PREPARE_SNAPSHOT,
    WriterEvent.FREEZE,
    WriterEvent.THAW,
    WriterEvent.POST_SNAPSHOT,
]


@pytest.mark.parametrize("writer", ["app", "fs"])
@pytest.mark.parametrize("event", SENT_BEFORE_THE_SNAPSHOTS, ids=lambda e: e.value)
def test_a_writer_failing_at_any_event_aborts_every_writer_thaws_and_removes_the_snapshots(
    world: World, writer: str, event: WriterEvent
) -> None:
    session = world.session(world.writers(**{writer: {"fail_at": event}}))
    with pytest.raises(WriterError, match=f"{writer} fails at {event.value}"):
        session.create()

    if event is WriterEvent.FREEZE:  # the tiers frozen so far (the failing one included) are thawed, in reverse
        expected = [*through(f"{writer} freeze"), *(["app thaw"] if writer == "app" else ["fs thaw", "app thaw"])]
    elif event is WriterEvent.THAW:  # one thaw failing does not stop the others
        expected = through("app thaw")
    else:
        expected = through(f"{writer} {event.value}")
    assert_journal(world.journal, [*expected, *ROLLBACK])
    assert_rolled_back(world, session, because=f"{writer} fails at {event.value}")
    made_snapshots = event in (WriterEvent.THAW, WriterEvent.POST_SNAPSHOT)
    assert bool(world.provider.committed) is made_snapshots


@pytest.mark.parametrize("step", ["prepare", "commit", "post-commit"])
def test_a_provider_failing_at_any_step_rolls_the_set_back(world: World, step: str) -> None:
    world.provider.fail_at = step
    session = world.session(world.writers())
    with pytest.raises(ProviderError, match=f"fails at {step}"):
        session.create()
    expected = through("app thaw") if step == "commit" else through(f"fake {step}")
    assert_journal(world.journal, [*expected, *ROLLBACK])
    assert_rolled_back(world, session, because=f"fails at {step}")


def test_a_commit_over_its_bound_is_a_hold_timeout_thawed_at_the_bound_and_its_late_snapshots_removed(
    world: World,
) -> None:
    world.provider.commit_delay_s = 1.0
    session = world.session(world.writers(), commit_timeout_s=0.2)
    with pytest.raises(HoldTimeout) as raised:
        session.create()
    assert raised.value.code == "HOLD_TIMEOUT"
    # Thawed at the bound, before the late commit ended; the abort waits for it, then has its snapshots removed.
    assert_journal(world.journal, [*through("fs freeze"), "fs thaw", "app thaw", "fake commit", *ROLLBACK])
    assert world.provider.committed  # the late commit did make them ...
    assert_rolled_back(world, session, because="did not finish within 0.2 s")  # ... and they are gone
    freeze_window_ms = world.get_set(session.set_id).freeze_window_ms
    assert freeze_window_ms is not None and freeze_window_ms < 1000


def test_a_writer_hanging_at_freeze_is_given_up_on_at_the_freeze_bound(world: World) -> None:
    session = world.session(world.writers(app={"hang_at": WriterEvent.FREEZE}), freeze_timeout_s=0.5)
    with pytest.raises(FreezeTimeout, match="did not finish freeze within"):
        session.create()
    assert_journal(world.journal, [*through("app freeze"), "app thaw", *ROLLBACK])
    assert_rolled_back(world, session, because="did not finish freeze within")


def test_a_failure_saving_the_documents_removes_the_snapshots_made(world: World) -> None:
    blocker = world.tmp / "not-a-directory"
    blocker.write_text("")
    session = world.session(world.writers())
    with pytest.raises(NotADirectoryError):
        session.create(blocker / "documents")
    assert_journal(world.journal, [*SEQUENCE, *ROLLBACK])
    assert world.provider.committed
    assert_rolled_back(world, session, because="NotADirectoryError")
    assert world.host.catalog.get_session(session.set_id).documents_dir is None


def test_a_provider_that_cannot_remove_its_snapshots_leaves_the_set_for_the_next_create(world: World) -> None:
    world.provider.fail_at = "abort"
    failed = world.session(world.writers(app={"fail_at": WriterEvent.POST_SNAPSHOT}))
    with pytest.raises(WriterError):
        failed.create()
    assert world.get_set(failed.set_id).state is SetState.SNAPSHOTTING  # not aborted: its snapshots still exist
    assert {"abort-step-failed", "rollback-incomplete"} <= set(world.event_kinds(failed.set_id))
    assert world.provider.made

    world.provider.fail_at = None
    world.journal.entries.clear()
    later = world.session(world.writers())
    later.create()
    assert world.journal.entries[:4] == ROLLED_BACK_FIRST  # the leftover first, then the new set
    assert world.provider.made == set(world.provider.committed[-1])  # only the new set's snapshots are left
    leftover = world.get_set(failed.set_id)
    assert leftover.state is SetState.ABORTED
    assert leftover.failure is not None and "interrupted" in leftover.failure


# -- --on-writer-failure exclude ---------------------------------------------------------------------------------


# What reaches the writers up to the exclusion of `app`, failing at each event before the freeze: the failing event
# still goes to `fs`, then `app` is aborted and gets nothing more.
EXCLUDED_AT: dict[WriterEvent, list[Step]] = {
    WriterEvent.IDENTIFY: ["state preparing", "app identify", "fs identify", "app abort", "fs prepare-backup"],
    WriterEvent.PREPARE_BACKUP: [*through("fs prepare-backup"), "app abort"],
    WriterEvent.PREPARE_SNAPSHOT: [*through("fs prepare-snapshot"), "app abort"],
}
WITHOUT_APP: list[Step] = [
    "fake prepare",
    "state snapshotting",
    "fs freeze",
    "fake commit",
    "fs thaw",
    "fake post-commit",
    "fs post-snapshot",
]


@pytest.mark.parametrize("event", list(EXCLUDED_AT), ids=lambda e: e.value)
def test_exclude_leaves_an_application_writer_failing_before_the_freeze_out_of_the_set(
    world: World, event: WriterEvent
) -> None:
    writers = world.writers(app={"fail_at": event})
    session = world.session(writers, on_writer_failure=OnWriterFailure.EXCLUDE, writer_specs=("fake:app", "fake:fs"))
    created = session.create()

    before_snapshot = [] if event is WriterEvent.PREPARE_SNAPSHOT else ["fs prepare-snapshot"]
    assert_journal(world.journal, [*EXCLUDED_AT[event], *before_snapshot, *WITHOUT_APP])
    assert created.snapshot_set.state is SetState.CREATED
    [excluded] = [w for w in created.bcd.writers if w.instance_name == "app"]
    assert excluded.components == ()
    assert excluded.excluded is not None and f"app fails at {event.value}" in excluded.excluded
    assert [w.instance_name for w in created.wmds] == ["fs"]
    assert "writer-excluded" in world.event_kinds(session.set_id)
    assert world.host.catalog.get_session(session.set_id).writer_specs == ("fake:fs",)  # no BackupComplete for app


def test_exclude_does_not_cover_a_filesystem_writer_or_a_failure_at_freeze(world: World) -> None:
    session = world.session(
        world.writers(fs={"fail_at": WriterEvent.PREPARE_SNAPSHOT}), on_writer_failure=OnWriterFailure.EXCLUDE
    )
    with pytest.raises(WriterError, match="fs fails at prepare-snapshot"):
        session.create()
    assert_rolled_back(world, session, because="fs fails at prepare-snapshot")

    world.journal.entries.clear()
    world.provider.aborted.clear()
    session = world.session(
        world.writers(app={"fail_at": WriterEvent.FREEZE}), on_writer_failure=OnWriterFailure.EXCLUDE
    )
    with pytest.raises(WriterError, match="app fails at freeze"):
        session.create()
    assert_rolled_back(world, session, because="app fails at freeze")


# -- rolling back sets whose creating process died ---------------------------------------------------------------


def _left_by_a_dead_process(world: World, state: SetState) -> SnapshotSet:
    """A set as the catalog holds it when the process creating it died in `state` (PREPARING or SNAPSHOTTING)."""
    set_id = uuid.uuid4()
    snapshots = tuple(
        Snapshot(
            id=uuid.uuid4(),
            set_id=set_id,
            volume=world.host.volume(str(world.volumes[name])),
            locator=Locator(provider=FakeProvider.name),
            attrs=Attr.NONE,
        )
        for name in DEVICES
    )
    world.host.catalog.add_set(
        SnapshotSet(
            id=set_id,
            context=Context.BACKUP,
            attrs=Attr.NONE,
            state=SetState.PREPARING,
            originating_host=HOST,
            service_host=HOST,
            created_at=datetime.now(UTC),
            snapshots=snapshots,
        )
    )
    if state is not SetState.PREPARING:
        world.host.catalog.transition(set_id, state)
    return world.get_set(set_id)


def test_roll_back_interrupted_aborts_only_the_sets_left_mid_way_through_their_providers(world: World) -> None:
    finished = world.session(world.writers())
    finished.create()
    preparing = _left_by_a_dead_process(world, SetState.PREPARING)
    snapshotting = _left_by_a_dead_process(world, SetState.SNAPSHOTTING)
    world.journal.watch = None
    world.journal.entries.clear()

    with world.host.lock("create", timeout_s=1, what="the rollback"):
        rolled_back = roll_back_interrupted(world.host)

    assert sorted(rolled_back) == sorted([preparing.id, snapshotting.id])
    assert world.journal.entries == ["fake abort", "fake abort"]
    aborted = sorted(sorted(map(str, ids)) for ids in world.provider.aborted)
    assert aborted == sorted(sorted(str(s.id) for s in x.snapshots) for x in (preparing, snapshotting))
    for interrupted in (preparing, snapshotting):
        again = world.get_set(interrupted.id)
        assert again.state is SetState.ABORTED
        assert again.failure == "interrupted: the creating process died; rolled back"
    assert world.get_set(finished.set_id).state is SetState.CREATED  # a finished set is left alone


def test_roll_back_interrupted_keeps_a_set_whose_provider_cannot_remove_its_snapshots(world: World) -> None:
    interrupted = _left_by_a_dead_process(world, SetState.SNAPSHOTTING)
    world.provider.fail_at = "abort"
    with world.host.lock("create", timeout_s=1, what="the rollback"):
        assert roll_back_interrupted(world.host) == []
        assert world.get_set(interrupted.id).state is SetState.SNAPSHOTTING
        assert "abort-step-failed" in world.event_kinds(interrupted.id)

        world.provider.fail_at = None  # the next attempt succeeds
        assert roll_back_interrupted(world.host) == [interrupted.id]
    assert world.get_set(interrupted.id).state is SetState.ABORTED


def test_every_create_rolls_back_the_interrupted_sets_first(world: World) -> None:
    interrupted = _left_by_a_dead_process(world, SetState.SNAPSHOTTING)
    session = world.session(world.writers())
    session.create()
    assert world.journal.entries[:4] == ROLLED_BACK_FIRST
    assert [set(ids) for ids in world.provider.aborted] == [{s.id for s in interrupted.snapshots}]
    assert world.get_set(interrupted.id).state is SetState.ABORTED


def test_the_reason_recorded_is_one_line_for_any_cause() -> None:
    assert describe_failure(WriterError("it failed")) == "it failed"
    assert describe_failure(KeyboardInterrupt()) == "interrupted (Ctrl-C)"
    assert describe_failure(OSError("disk gone")) == "OSError: disk gone"
    assert describe_failure(RuntimeError()) == "RuntimeError"
