"""Every way a set's creation can fail leaves nothing behind: no frozen filesystem, loop device, mount or LUN image,
and the set recorded aborted with the reason (DESIGN §4: "any failure or timeout before thaw: abort every writer,
thaw every frozen writer, delete every snapshot made so far, record why").

Real filesystems on a real file-backed array; the failures are real (a SQLite lock held by another process, a
SIGKILLed coordinator) or injected at the edges (a test-double writer, a wrapper around the real provider,
`SNAPPORT_FAULT`). Every process a test starts is killed by its pid in a `finally`.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest

from snapport.coordinator import lifecycle
from snapport.coordinator.host import Host
from snapport.coordinator.session import BackupSession, ProviderResolver, SessionOptions, roll_back_interrupted
from snapport.errors import FreezeTimeout, HoldTimeout, ProviderError, SetInProgress, SnapportError, WriterError
from snapport.faults import InjectedFault
from snapport.model import Attr, Locator, SetState, Volume, WriterMetadata
from snapport.osal import ioctl
from snapport.providers.base import Provider, ProviderHost, SnapshotRequest
from snapport.providers.reflink_array import ReflinkArrayProvider
from snapport.providers.registry import provider_for
from snapport.writers.base import Deadline, LogEntry, Session, Tier
from snapport.writers.registry import writer_from_spec
from tests.support.array_world import ArrayWorld

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

SNAPPORT = Path(sys.executable).parent / "snapport"
WRITE_WITHIN_S = 5.0  # "promptly": far inside every freeze bound these tests set

HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO t (v) VALUES ('held')")
print("holding", flush=True)
time.sleep(120)
"""


# -- helpers -----------------------------------------------------------------------------------------------------


@pytest.fixture
def procs(world: ArrayWorld) -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test starts; each still running at the end is SIGKILLed by its pid and reaped (before the
    world's volumes are unmounted: this fixture depends on `world`, so it is torn down first)."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=30)


def _assert_writable(volume: Path, within_s: float = WRITE_WITHIN_S) -> None:
    """Write and fsync a file on `volume`; fail unless that is done within `within_s` (after thawing the volume
    ourselves, so that a failed test can still unmount it)."""
    errors: list[BaseException] = []
    done = threading.Event()

    def write() -> None:
        try:
            probe = volume / f"probe-{uuid.uuid4().hex[:8]}"
            with probe.open("wb") as f:
                f.write(b"x" * 4096)
                f.flush()
                os.fsync(f.fileno())
            probe.unlink()
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.set()

    threading.Thread(target=write, name="write-probe", daemon=True).start()
    if not done.wait(within_s):
        ioctl.thaw(volume)  # unblock the probe; the assertion below reports the failure
        done.wait(10)
        pytest.fail(f"a write to {volume} did not complete within {within_s:g} s: the volume stayed frozen")
    assert not errors, errors


def _assert_aborted(world: ArrayWorld, host: Host, set_id: uuid.UUID, *, because: str) -> None:
    """The set is recorded aborted, with a failure naming the cause, and nothing it made is left anywhere."""
    assert world.leftovers(host) == []
    snapshot_set = host.catalog.get_set(set_id)
    assert snapshot_set.state is SetState.ABORTED
    assert snapshot_set.failure is not None
    assert because in snapshot_set.failure, snapshot_set.failure


def _only_set(host: Host) -> uuid.UUID:
    sets = host.catalog.list_sets()
    assert len(sets) == 1, sets
    return sets[0].id


def _freeze_events(host: Host, set_id: uuid.UUID, volume: Path) -> list[bool]:
    """Whether each freeze of `volume`'s filesystem writer succeeded (its instance name is the mount point)."""
    mount_point = os.path.realpath(volume)
    fs_writer_ids = {str(w.writer_id) for w in host.catalog.list_writers() if w.instance_name == mount_point}
    return [e.ok for e in host.catalog.writer_events(set_id) if e.event == "freeze" and e.writer_id in fs_writer_ids]


def _cli(
    world: ArrayWorld, procs: list[subprocess.Popen[str]], *args: str, fault: str | None = None
) -> subprocess.Popen[str]:
    """Start `snapport ARGS` as host one (with `SNAPPORT_FAULT=fault` if given)."""
    env = world.env("one")
    env.pop("SNAPPORT_FAULT", None)
    if fault:
        env["SNAPPORT_FAULT"] = fault
    proc = subprocess.Popen([str(SNAPPORT), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    return proc


def _finish(proc: subprocess.Popen[str], timeout_s: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout_s)
    return proc.returncode, out, err


def _wait_until(what: str, check: Any, timeout_s: float, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if proc is not None and proc.poll() is not None:
            _, out, err = _finish(proc)
            pytest.fail(f"the process exited ({proc.returncode}) before {what}: {out} {err}")
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


# -- test doubles ------------------------------------------------------------------------------------------------

DOUBLE_CLASS_ID = uuid.uuid5(uuid.NAMESPACE_DNS, "tests.snapport.failing-writer")


class FailingWriter:
    """A writer (writers/base.py protocol) whose freeze raises `WriterError` or hangs until it is aborted."""

    kind: ClassVar[str] = "test-double"
    class_id: ClassVar[uuid.UUID] = DOUBLE_CLASS_ID

    def __init__(self, behaviour: str, tier: Tier) -> None:
        assert behaviour in ("raise", "hang")
        self.behaviour = behaviour
        self.tier = tier
        self.writer_id = uuid.uuid4()
        self.instance_name = f"{behaviour} at freeze ({tier.name.lower()} tier)"
        self.events: list[str] = []
        self.released = threading.Event()  # ends a hung freeze (set by abort, and by the test at the end)

    def identify(self, deadline: Deadline) -> WriterMetadata:
        return WriterMetadata(
            writer_id=self.writer_id, class_id=self.class_id, name=self.kind, instance_name=self.instance_name
        )

    def prepare_backup(self, session: Session, components: tuple[str, ...], deadline: Deadline) -> None:
        self.events.append("prepare-backup")

    def prepare_snapshot(self, session: Session, deadline: Deadline) -> None:
        self.events.append("prepare-snapshot")

    def freeze(self, session: Session, deadline: Deadline) -> None:
        self.events.append("freeze")
        if self.behaviour == "raise":
            raise WriterError("the test double vetoes the freeze")
        self.released.wait(60)  # far past any freeze bound a test sets

    def thaw(self, session: Session, deadline: Deadline) -> None:
        self.events.append("thaw")

    def post_snapshot(self, session: Session, deadline: Deadline) -> Mapping[str, str]:
        self.events.append("post-snapshot")
        return {}

    def abort(self, session: Session, deadline: Deadline) -> None:
        self.events.append("abort")
        self.released.set()

    def backup_complete(self, session: Session, succeeded: Mapping[str, bool], deadline: Deadline) -> None:
        self.events.append("backup-complete")

    def backup_shutdown(self, session: Session, deadline: Deadline) -> None:
        self.events.append("backup-shutdown")

    def pre_restore(self, components: tuple[str, ...], deadline: Deadline) -> None:
        self.events.append("pre-restore")

    def post_restore(self, components: tuple[str, ...], deadline: Deadline) -> None:
        self.events.append("post-restore")

    def take_event_log(self) -> list[LogEntry]:
        return []


class CommitWrapper:
    """The real reflink-array provider, with a commit that is slow (`delay_s`) or fails after its first volume
    (`fail_after_first`). Records the clone images the real commit made, and whether the volumes were still frozen
    when a slow commit finally ran."""

    name: ClassVar[str] = ReflinkArrayProvider.name
    capabilities = ReflinkArrayProvider.capabilities

    def __init__(self, real: ReflinkArrayProvider, *, delay_s: float = 0.0, fail_after_first: bool = False) -> None:
        self.real = real
        self.delay_s = delay_s
        self.fail_after_first = fail_after_first
        self.made: list[Path] = []
        self.frozen_when_committing: bool | None = None
        self.finished = threading.Event()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.real, attr)

    def commit(self, requests: Sequence[SnapshotRequest]) -> dict[uuid.UUID, Locator]:
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
                self.frozen_when_committing = any(ioctl.is_frozen(Path(r.volume.mount_point)) for r in requests)
            if self.fail_after_first:
                self._note(self.real.commit(requests[:1]))
                raise ProviderError("the test wrapper failed the commit after its first volume")
            locators = self.real.commit(requests)
            self._note(locators)
            return locators
        finally:
            self.finished.set()

    def _note(self, locators: dict[uuid.UUID, Locator]) -> None:
        for locator in locators.values():
            assert locator.destination is not None
            array_path = Path(locator.property("array_path") or "")
            image = array_path / "luns" / f"{locator.destination.lun_id}.img"
            assert image.is_file(), f"the real commit made no image at {image}"
            self.made.append(image)


def _only(wrapper: CommitWrapper) -> ProviderResolver:
    """A resolver sending every volume of a session to `wrapper` (one instance: one commit call for the set)."""

    def resolve(volume: Volume, host: ProviderHost, attrs: Attr, preferred: str | None) -> Provider:
        return cast(Provider, wrapper)

    return resolve


def _session(
    host: Host,
    volumes: Sequence[Path],
    writers: Sequence[Any] = (),
    *,
    resolve_provider: ProviderResolver = provider_for,
    **options: Any,
) -> BackupSession:
    session = BackupSession(host, SessionOptions(**options), writers, resolve_provider=resolve_provider)
    for volume in volumes:
        session.add_volume(str(volume))
    return session


# -- a: a real application writer that cannot freeze in time -----------------------------------------------------


def test_sqlite_writer_blocked_by_another_transaction_times_out_and_rolls_back(
    world: ArrayWorld, procs: list[subprocess.Popen[str]]
) -> None:
    volume = world.volume("data")
    host = world.host("one")
    db = volume / "app.db"
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")  # rollback journal: no checkpoint wait
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdout=subprocess.PIPE, text=True)
    procs.append(holder)
    assert holder.stdout is not None
    assert select.select([holder.stdout], [], [], 30)[0], "the holder did not take its lock"
    assert holder.stdout.readline().strip() == "holding"

    writer = writer_from_spec(f"sqlite:{db}", [host.volume(str(volume))], host.name)
    session = _session(host, [volume], [writer], freeze_timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(FreezeTimeout) as raised:
        session.create()
    assert raised.value.code == "FREEZE_TIMEOUT"
    assert time.monotonic() - started < 15  # bounded by the freeze window, not by the holder's 120 s

    _assert_aborted(world, host, session.set_id, because="could not take the write lock")
    assert _freeze_events(host, session.set_id, volume) == []  # the application tier failed first
    assert holder.poll() is None  # the other process's transaction was left alone
    _assert_writable(volume)


# -- b: a writer that vetoes or hangs at freeze ------------------------------------------------------------------


@pytest.mark.parametrize("tier", [Tier.APPLICATION, Tier.FILESYSTEM], ids=["application-tier", "filesystem-tier"])
@pytest.mark.parametrize(
    ("behaviour", "error", "because"),
    [
        ("raise", WriterError, "the test double vetoes the freeze"),
        ("hang", FreezeTimeout, "did not finish freeze within"),
    ],
    ids=["raises", "hangs"],
)
def test_a_writer_failing_at_freeze_aborts_the_set_and_thaws_everything(
    world: ArrayWorld, tier: Tier, behaviour: str, error: type[SnapportError], because: str
) -> None:
    """In the filesystem tier the double fails while the real volume is frozen beside it; in the application tier
    it fails before any filesystem is frozen, and none is."""
    volume = world.volume("data")
    host = world.host("one")
    double = FailingWriter(behaviour, tier)
    session = _session(host, [volume], [double], freeze_timeout_s=3.0)
    try:
        started = time.monotonic()
        with pytest.raises(error) as raised:
            session.create()
        assert type(raised.value) is error
        assert time.monotonic() - started < 10  # a hung writer is given up on at the freeze bound

        _assert_aborted(world, host, session.set_id, because=because)
        assert "abort" in double.events
        volume_froze = _freeze_events(host, session.set_id, volume)
        assert volume_froze == ([True] if tier is Tier.FILESYSTEM else [])
        _assert_writable(volume)
    finally:
        double.released.set()


# -- c, d: the provider commit fails part-way, or overruns its bound ---------------------------------------------


def test_a_commit_failing_after_its_first_volume_removes_the_clone_it_made(world: ArrayWorld) -> None:
    volumes = [world.volume("data"), world.volume("logs")]
    host = world.host("one")
    wrapper = CommitWrapper(ReflinkArrayProvider(host.provider_host), fail_after_first=True)
    session = _session(host, volumes, resolve_provider=_only(wrapper))

    with pytest.raises(ProviderError) as raised:
        session.create()
    assert type(raised.value) is ProviderError

    assert len(wrapper.made) == 1  # a real partial commit happened ...
    assert not wrapper.made[0].exists()  # ... and its clone is gone
    _assert_aborted(world, host, session.set_id, because="failed the commit after its first volume")
    for volume in volumes:
        assert _freeze_events(host, session.set_id, volume) == [True]
        _assert_writable(volume)


def test_a_commit_over_its_bound_is_a_hold_timeout_and_its_late_clones_are_removed(world: ArrayWorld) -> None:
    volume = world.volume("data")
    host = world.host("one")
    wrapper = CommitWrapper(ReflinkArrayProvider(host.provider_host), delay_s=2.0)
    session = _session(host, [volume], resolve_provider=_only(wrapper), commit_timeout_s=0.5)

    started = time.monotonic()
    with pytest.raises(HoldTimeout) as raised:
        session.create()
    assert raised.value.code == "HOLD_TIMEOUT"

    assert wrapper.finished.is_set()  # the abort waited for the late commit ...
    assert time.monotonic() - started >= 2.0
    assert wrapper.frozen_when_committing is False  # ... but the volume was thawed at the bound, not after it
    assert len(wrapper.made) == 1  # the late commit did make its clone ...
    assert not wrapper.made[0].exists()  # ... and the abort removed it
    _assert_aborted(world, host, session.set_id, because="did not finish within 0.5 s")
    snapshot_set = host.catalog.get_set(session.set_id)
    assert snapshot_set.freeze_window_ms is not None
    assert snapshot_set.freeze_window_ms < 2000
    _assert_writable(volume)


# -- e: the coordinator is SIGKILLed while it holds the freeze ---------------------------------------------------


def test_sigkill_of_the_coordinator_while_frozen_thaws_at_once_and_the_next_create_rolls_back(
    world: ArrayWorld, procs: list[subprocess.Popen[str]]
) -> None:
    volume = world.volume("data")
    host = world.host("one")
    hung = _cli(world, procs, "create", str(volume), "--freeze-timeout", "30", "--json", fault="provider.commit:hang")

    def frozen() -> bool:
        # A synced write that does not finish means the volume is frozen. (Not ioctl.is_frozen: its FIFREEZE
        # probe could win the race against the guard's own freeze.) A blocked probe finishes after the thaw.
        code = (
            f"import os; f = os.open({str(volume / '.probe')!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND); "
            "os.write(f, b'x'); os.fsync(f)"
        )
        probe = subprocess.Popen([sys.executable, "-c", code], text=True)
        procs.append(probe)
        try:
            probe.wait(0.5)
        except subprocess.TimeoutExpired:
            return True
        return False

    _wait_until("the volume to freeze", frozen, 30, hung)
    interrupted = _only_set(host)
    assert ioctl.is_frozen(volume)
    assert host.catalog.get_set(interrupted).state is SetState.SNAPSHOTTING

    # Meanwhile a second create on the host is refused and touches nothing: the hung set is not rolled back.
    rc, _, err = _finish(_cli(world, procs, "create", str(volume), "--json"))
    assert rc == SetInProgress.exit_code, err
    assert json.loads(err.strip().splitlines()[-1])["error"] == "SET_IN_PROGRESS"
    assert host.catalog.get_set(interrupted).state is SetState.SNAPSHOTTING
    assert ioctl.is_frozen(volume)

    os.kill(hung.pid, signal.SIGKILL)
    assert hung.wait(10) == -signal.SIGKILL
    _assert_writable(volume)  # the freeze guard saw its coordinator go and thawed

    assert world.leftovers(host)  # the reserved snapshot LUN and the set mid-way: what the next create must undo
    rc, out, err = _finish(_cli(world, procs, "create", str(volume), "--json"))
    assert rc == 0, err
    later = uuid.UUID(json.loads(out)["set_id"])
    lifecycle.delete(host, later)

    _assert_aborted(world, host, interrupted, because="interrupted")


# -- f: a failure after the snapshots were made: saving the documents --------------------------------------------


def test_a_failure_saving_the_documents_removes_the_snapshots_made(
    world: ArrayWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    volumes = [world.volume("data"), world.volume("logs")]
    host = world.host("one")
    session = _session(host, volumes)
    monkeypatch.setenv("SNAPPORT_FAULT", "document.save:raise")

    with pytest.raises(InjectedFault):
        session.create()

    snapshot_set = host.catalog.get_set(session.set_id)
    assert all(s.locator.destination is not None for s in snapshot_set.snapshots)  # the snapshots were made
    assert not (host.documents_dir(session.set_id) / "backup-components.xml").exists()
    _assert_aborted(world, host, session.set_id, because="document.save")
    for volume in volumes:
        _assert_writable(volume)


def test_a_coordinator_killed_saving_the_documents_is_rolled_back_by_the_next_create(
    world: ArrayWorld, procs: list[subprocess.Popen[str]]
) -> None:
    volume = world.volume("data")
    host = world.host("one")

    rc, _, err = _finish(_cli(world, procs, "create", str(volume), "--json", fault="document.save:kill"))
    assert rc == -signal.SIGKILL, err
    killed = _only_set(host)
    assert host.catalog.get_set(killed).state is SetState.SNAPSHOTTING
    assert len(world.snapshot_luns()) == 1  # the snapshot was made before the process died
    _assert_writable(volume)  # it died after the thaw

    later = _session(host, [volume])
    later.create()
    lifecycle.delete(host, later.set_id)

    _assert_aborted(world, host, killed, because="interrupted")


# -- g: one creation at a time per host ----------------------------------------------------------------------


def test_a_second_create_while_one_is_in_progress_is_refused_and_changes_nothing(world: ArrayWorld) -> None:
    volume = world.volume("data")
    host = world.host("one")
    luns_before = world.array.luns()
    session = _session(host, [volume])

    with host.lock("create", timeout_s=1, what="the test's stand-in for a creation in progress"):
        with pytest.raises(SetInProgress) as raised:
            session.create()
        assert raised.value.code == "SET_IN_PROGRESS"

    assert host.catalog.list_sets() == []
    assert world.array.luns() == luns_before
    assert world.leftovers(host) == []
    _assert_writable(volume)


def test_roll_back_interrupted_leaves_finished_sets_alone(world: ArrayWorld) -> None:
    """The rollback a create runs first touches only sets left mid-way, never a created (or aborted) one."""
    volume = world.volume("data")
    host = world.host("one")
    created = _session(host, [volume])
    created.create()
    with host.lock("create", timeout_s=1, what="rollback"):
        assert roll_back_interrupted(host) == []
    assert host.catalog.get_set(created.set_id).state is SetState.CREATED
    assert len(world.snapshot_luns()) == 1
    lifecycle.delete(host, created.set_id)
    assert world.leftovers(host) == []
