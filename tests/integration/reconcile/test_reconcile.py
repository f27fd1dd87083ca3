"""Reconciliation in process: sets stuck mid-way, expired leases, jobs with no agent, hung locks; and the agent's
start, which repairs what a crash left before it serves. Real XFS volumes on array LUNs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from snapport.catalog.clock import boot_seconds
from snapport.coordinator.reconcile import Depth, reconcile
from snapport.coordinator.reconcile.leases import end_lease
from snapport.coordinator.session import BackupSession, SessionOptions
from snapport.model import Attr, Context, JobState, Locator, SetState, Snapshot, SnapshotSet
from snapport.osal import ioctl
from snapport.providers.base import SnapshotRequest
from snapport.providers.reflink_array import ReflinkArrayProvider
from tests.support.array_world import HOST_ONE, ArrayWorld

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]


def make_set(world: ArrayWorld, volume: Path) -> uuid.UUID:
    host = world.host(HOST_ONE)
    session = BackupSession(host, SessionOptions(context=Context.APP_BACKUP))
    session.add_volume(str(volume))
    return session.create().snapshot_set.id


def kinds(report: object) -> set[tuple[str, str]]:
    return {(f.kind, f.object) for f in report.found}  # type: ignore[attr-defined]


HOLD = "import fcntl, sys, time; f = open(sys.argv[1], 'w'); fcntl.flock(f, fcntl.LOCK_EX); time.sleep(60)"


def test_a_set_left_preparing_is_rolled_back_and_a_quick_pass_changes_nothing_else(world: ArrayWorld) -> None:
    data = world.volume("data")
    host = world.host(HOST_ONE)
    volume = host.volume(str(data))
    set_id, snapshot_id = uuid.uuid4(), uuid.uuid4()
    host.catalog.add_set(
        SnapshotSet(
            id=set_id,
            context=Context.BACKUP,
            attrs=Attr.NONE,
            state=SetState.PREPARING,
            originating_host=HOST_ONE,
            service_host=HOST_ONE,
            snapshots=(Snapshot(snapshot_id, set_id, volume, Locator(provider="reflink-array"), Attr.NONE),),
        )
    )
    ReflinkArrayProvider(host.provider_host).prepare([SnapshotRequest(set_id, snapshot_id, volume, Attr.NONE)])
    assert world.snapshot_luns()  # the pending LUN a dead creation left

    report = reconcile(host, repair=False)
    assert ("set", str(set_id)) in kinds(report) and not report.clean
    assert host.catalog.get_set(set_id).state is SetState.PREPARING and world.snapshot_luns()

    # The cheap pass at the start of a verb rolls it back, under the creation lock.
    with host.lock("create", timeout_s=1, what="a live creation"):
        quick = reconcile(host, repair=True, depth=Depth.QUICK)
        assert (quick.found, quick.rolled_back) == ([], [])  # a live creation holds the lock: nothing is touched
    assert reconcile(host, repair=False, depth=Depth.QUICK).rolled_back == []  # finds, changes nothing
    assert host.catalog.get_set(set_id).state is SetState.PREPARING
    assert reconcile(host, repair=True, depth=Depth.QUICK).rolled_back == [set_id]
    assert host.catalog.get_set(set_id).state is SetState.ABORTED
    assert world.leftovers(host) == []
    assert reconcile(host, repair=False).found == []


def test_a_set_stuck_deleting_is_finished_and_a_frozen_volume_is_left_while_a_creation_is_live(
    world: ArrayWorld, scratch: object
) -> None:
    data = world.volume("data")
    host = world.host(HOST_ONE)
    set_id = make_set(world, data)
    host.catalog.transition(set_id, SetState.DELETING)  # the deleting process died here
    assert reconcile(host, repair=False).found == []  # within the grace: a delete may be under way
    report = reconcile(host, repair=False, stuck_after_s=0)
    assert kinds(report) == {("set", str(set_id))}

    ioctl.freeze(data)
    try:
        with host.lock("create", timeout_s=1, what="a live creation"):  # a live freeze window is not a leftover
            assert ("frozen", str(data)) not in kinds(reconcile(host, repair=True, stuck_after_s=0))
            assert ioctl.is_frozen(data)
        report = reconcile(host, repair=True, stuck_after_s=0)
    finally:
        ioctl.thaw(data)
    assert ("frozen", str(data)) in {(r.kind, r.object) for r in report.repaired}
    assert host.catalog.get_set(set_id).state is SetState.DELETED
    assert world.leftovers(host) == []
    assert reconcile(host, repair=True, stuck_after_s=0).found == []


def test_an_expired_lease_ends_its_session_and_jobs_with_no_agent_are_failed(world: ArrayWorld) -> None:
    data = world.volume("data")
    host = world.host(HOST_ONE)
    set_id = make_set(world, data)
    lease = host.catalog.grant_lease(set_id, "two", 5.0, now_monotonic=boot_seconds() - 60)  # ran out a minute ago
    live = host.catalog.grant_lease(make_set(world, data), "two", 3600.0)
    job = host.catalog.add_job(uuid.uuid4(), "offhost-backup", set_id=set_id)
    host.catalog.update_job(job.id, state=JobState.RUNNING)

    # With an agent running, only the expired lease whose set no job works on is a leftover.
    assert reconcile(host, repair=False, agent_running=True).found == []
    host.catalog.update_job(job.id, state=JobState.FAILED)
    report = reconcile(host, repair=True, agent_running=True)
    assert kinds(report) == {("lease", str(lease.id))}
    assert host.catalog.get_lease(lease.id).released_at is not None
    assert host.catalog.get_set(set_id).state is SetState.DELETED
    assert host.catalog.get_session(set_id).succeeded is False  # no BackupComplete
    assert host.catalog.get_lease(live.id).released_at is None
    assert end_lease(host, lease).startswith("ended the session without BackupComplete")  # idempotent

    # With no agent, a running job and the live lease have lost their process.
    orphan = host.catalog.add_job(uuid.uuid4(), "offhost-backup")
    host.catalog.update_job(orphan.id, state=JobState.RUNNING)
    report = reconcile(host, repair=True, agent_running=False)
    assert kinds(report) == {("lease", str(live.id)), ("job", str(orphan.id))}
    assert report.clean
    assert host.catalog.get_job(orphan.id).error_code == "JOB_INTERRUPTED"
    assert world.leftovers(host) == []


def test_a_lock_held_past_its_bound_by_a_live_process_is_reported_never_broken(world: ArrayWorld) -> None:
    host = world.host(HOST_ONE)
    lock = host.home / "locks" / "import.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)])  # one process: it dies whole
    try:
        deadline = time.monotonic() + 10
        while not reconcile(host, repair=False, hung_after_s=0).found and time.monotonic() < deadline:
            time.sleep(0.05)
        report = reconcile(host, repair=True, hung_after_s=0)
        assert [(f.kind, f.object) for f in report.found] == [("lock", str(lock))]
        assert not report.clean and report.repaired == []
        assert holder.poll() is None
        assert reconcile(host, repair=False).found == []  # within the default bound
    finally:
        holder.kill()
        holder.wait(timeout=10)
    assert reconcile(host, repair=False, hung_after_s=0).found == []


@pytest.mark.slow
def test_an_agent_repairs_what_a_crash_left_before_it_serves(world: ArrayWorld, tmp_path: Path) -> None:
    data = world.volume("data")
    host = world.host(HOST_ONE)
    set_id = make_set(world, data)
    host.catalog.transition(set_id, SetState.DELETING)
    host.catalog.transition(set_id, SetState.DELETED)  # its snapshot LUN stayed
    ioctl.freeze(data)
    env = world.env(HOST_ONE)
    env.pop("SNAPPORT_DEBUG", None)

    def snapport(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "snapport", *args], env=env, check=True, capture_output=True, timeout=60)

    snapport("certs", "init")
    snapport("certs", "issue", HOST_ONE, "--role", "production", "--ip", "127.0.0.1")
    snapport("agent", "init", "--role", "production", "--listen", "127.0.0.1:0", "--host", HOST_ONE)
    log = tmp_path / "agent.log"
    with log.open("wb") as err:
        agent = subprocess.Popen(
            [sys.executable, "-m", "snapport", "agent", "serve"], env=env, stdin=subprocess.DEVNULL, stderr=err
        )
    try:
        deadline = time.monotonic() + 60
        while b"agent.listening" not in log.read_bytes():
            assert agent.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        text = log.read_text()
        assert '"reconcile.repaired"' in text and '"frozen"' in text and '"snapshot-lun"' in text, text
        assert not ioctl.is_frozen(data)
        assert world.leftovers(host) == []
    finally:
        ioctl.thaw(data)
        if agent.poll() is None:
            os.kill(agent.pid, 15)
        agent.wait(timeout=30)


def test_ending_a_lease_after_a_successful_backup_fires_backup_complete_once(world: ArrayWorld) -> None:
    data = world.volume("data")
    host = world.host(HOST_ONE)
    set_id = make_set(world, data)
    lease = host.catalog.grant_lease(set_id, "two", 60.0)
    action = end_lease(host, lease, succeeded=True)
    assert action == "ended the session with BackupComplete; deleted the set; released the lease", action
    assert host.catalog.get_session(set_id).succeeded is True
    assert host.catalog.get_set(set_id).state is SetState.DELETED
    assert host.catalog.get_lease(lease.id).released_at is not None
    end_lease(host, lease, succeeded=False)  # the outcome was claimed: nothing changes
    assert host.catalog.get_session(set_id).succeeded is True
    assert world.leftovers(host) == []
