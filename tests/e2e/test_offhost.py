"""The off-host backup across the lab's two hosts (network and mount namespaces), with the sample application
writing all along: success, refusals, a cut link and a killed proxy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from snapport.agent.config import config_path, parse_config, render_config
from snapport.engines import ArchiveEngine
from snapport.model import JobState
from tests.support.lab import snapport
from tests.support.lab_under_test import E2E_MARKS, LabUnderTest, result_of, wait_until

pytestmark = [*E2E_MARKS, pytest.mark.timeout(600)]
PROBE = Path(__file__).with_name("_auth_probe.py")


def test_offhost_backup_fires_backup_complete_once_after_success(lab_up: LabUnderTest, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = result_of(lab_up.offhost(repo))
    set_id = uuid.UUID(result["set_id"])
    assert result["proxy"] == "systemTwo" and result["files"] >= 1 and result["import_ms"] > 0
    assert {c["component"] for c in result["components"]} >= {"/srv/data/app.db"}
    assert lab_up.backup_completes(set_id) == 1  # the sqlite writer heard BackupComplete once
    assert lab_up.set_state("one", set_id) == "deleted"  # auto-release: the session's end deleted the snapshot
    assert lab_up.set_state("two", set_id) == "deleted"
    assert lab_up.exposed_on_two() == []
    assert ArchiveEngine(repo).verify(set_id).intact
    catalog = lab_up.catalog("one")
    try:
        assert all(lease.released_at is not None for lease in catalog.leases(set_id))
    finally:
        catalog.close()


def test_no_backup_session_hands_over_and_returns_without_backup_complete(lab_up: LabUnderTest, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    result = result_of(lab_up.offhost(repo, "--no-backup-session"))
    set_id, proxy_job_id = uuid.UUID(result["set_id"]), uuid.UUID(result["proxy_job_id"])
    assert result["backup_session"] is False and result["proxy"] == "systemTwo"
    assert lab_up.backup_completes(set_id) == 0  # the session ended at the handover, without BackupComplete

    def job(key: str, job_id: uuid.UUID) -> Any:
        catalog = lab_up.catalog(key)
        try:
            return catalog.get_job(job_id)
        finally:
            catalog.close()

    wait_until(lambda: job("two", proxy_job_id).state.finished, timeout_s=120, what="the proxy's job")
    proxy_job, own_job = job("two", proxy_job_id), job("one", uuid.UUID(result["job_id"]))
    assert proxy_job.state.value == "succeeded", proxy_job.error_message  # its report was accepted
    assert own_job.state.value == "succeeded"
    assert own_job.finished_at < proxy_job.finished_at  # systemOne did not wait for the report
    assert ArchiveEngine(repo).verify(set_id).intact
    wait_until(lambda: lab_up.set_state("one", set_id) == "deleted", timeout_s=60, what="systemOne's delete")
    assert lab_up.set_state("two", set_id) == "deleted"  # persistent: the proxy deleted it explicitly
    assert lab_up.backup_completes(set_id) == 0  # not a backup: no writer may truncate its logs
    assert lab_up.exposed_on_two() == []
    catalog = lab_up.catalog("one")
    try:
        assert catalog.get_set(set_id).context.value == "app-rollback"
        events = {e.event for e in catalog.writer_events(set_id)}
        assert "backup-complete" not in events and "backup-shutdown" in events
        wait_until(
            lambda: all(lease.released_at is not None for lease in catalog.leases(set_id)),
            timeout_s=30,
            what="the lease's release",
        )
    finally:
        catalog.close()
    for key in ("one", "two"):  # nothing left attached on either host
        catalog = lab_up.catalog(key)
        try:
            assert all(s.device is None and not s.exposed_at for s in catalog.get_set(set_id).snapshots)
        finally:
            catalog.close()


def test_only_the_proxy_named_for_a_set_reaches_it(lab_up: LabUnderTest, tmp_path: Path) -> None:
    set_id = uuid.UUID(result_of(lab_up.offhost(tmp_path / "repo"))["set_id"])
    lab = lab_up.lab
    three = tmp_path / "three"
    issued = snapport(
        "certs", "issue", "systemThree", "--role", "proxy", "--ip", "198.18.0.3",
        "--dir", str(lab_up.directory / "ca"), "--out", str(three),
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr
    address = f"{lab.one.ip}:{lab_up.port}"

    def probe(certs: Path, name: str, method: str, path: str) -> dict[str, object]:
        done = lab.two.run([sys.executable, str(PROBE), address, str(certs), name, method, path], timeout=60)
        return dict(json.loads(done.stdout))

    two_certs = lab.two.home / "certs"
    one_certs = lab.one.home / "certs"
    assert probe(three, "systemThree", "GET", f"/v1/sets/{set_id}/documents") == {"ok": False, "error": "ACCESS_DENIED"}
    assert probe(three, "systemThree", "POST", f"/v1/sets/{set_id}/lease") == {"ok": False, "error": "ACCESS_DENIED"}
    assert probe(one_certs, "systemOne", "GET", f"/v1/sets/{set_id}/documents") == {
        "ok": False,
        "error": "ACCESS_DENIED",
    }  # the production role may not
    assert probe(two_certs, "systemTwo", "GET", f"/v1/sets/{set_id}/documents")["ok"] is True
    # systemOne's session ended: its heartbeat route now answers 410 to the proxy itself
    assert probe(two_certs, "systemTwo", "POST", f"/v1/sets/{set_id}/lease") == {"ok": False, "error": "LEASE_EXPIRED"}
    assert probe(two_certs, "systemTwo", "GET", f"/v1/sets/{uuid.uuid4()}/documents")["error"] == "OBJECT_NOT_FOUND"

    # the cluster rule: a host that sees the original volume (systemOne itself, fresh home) refuses the import
    script = (
        "import sys; from pathlib import Path; from snapport.catalog import Catalog, catalog_url;"
        "from snapport.coordinator.host import Host; from snapport.coordinator import lifecycle;"
        "from snapport.documents import load_documents; from snapport.errors import ClusterRule;"
        "home = Path(sys.argv[1]); bcd, _ = load_documents(Path(sys.argv[2]));"
        "host = Host(name='systemOne', home=home, catalog=Catalog.open(catalog_url(home)), run_dir=home / 'run');\n"
        "try:\n  lifecycle.import_snapshot_set(host, bcd, cluster_check=True)\n"
        "except ClusterRule as exc:\n  print('CLUSTER_RULE', exc.message)"
    )
    home = tmp_path / "other-home"
    home.mkdir()
    done = lab.one.run(
        [sys.executable, "-c", script, str(home), str(lab.one.home / "sets" / str(set_id))], timeout=60, check=False
    )
    assert done.stdout.startswith("CLUSTER_RULE"), (done.stdout, done.stderr)


def _open_under(pid: int, directory: str) -> list[str]:
    """What process `pid` has open (files, cwd, root) under `directory`."""
    proc = Path(f"/proc/{pid}")
    links = [*(proc / "fd").iterdir(), proc / "cwd", proc / "root"]
    found = []
    for link in links:
        try:
            target = os.readlink(link)
        except OSError:  # closed meanwhile
            continue
        if target.startswith(directory.rstrip("/") + "/"):
            found.append(target)
    return found


# A database large enough to be streamed (not read whole) and to hold the middle of the bytes, so the engine's
# `engine.backup` point (half of the bytes) is reached while it holds this file open: the hung engine keeps the
# exposed copy busy.
BALLAST = (
    "import os, sqlite3, sys; db = sqlite3.connect(sys.argv[1]);"
    "db.execute('CREATE TABLE IF NOT EXISTS ballast (b BLOB)'); db.execute('DELETE FROM ballast');"
    "db.execute('INSERT INTO ballast VALUES (?)', (os.urandom(16 << 20),)); db.commit(); db.close()"
)


def test_link_cut_mid_backup_lease_expires_and_both_sides_clean_up(lab_up: LabUnderTest, tmp_path: Path) -> None:
    """The proxy's engine hangs holding files open on the exposed copy; the link is cut; the proxy, its lease
    lost, kills the stuck engine process and lets go of everything: no mount, no loop device, no exposure, the
    set deleted on both hosts."""
    lab = lab_up.lab
    ballast = lab.data_mount / "aaa-ballast.db"
    lab.one.run([sys.executable, "-c", BALLAST, str(ballast)], timeout=120)
    fault_log = tmp_path / "fault.log"
    lab_up.stop_proxy_agent()
    lab_up.start_proxy_agent({"SNAPPORT_FAULT": "engine.backup:hang", "SNAPPORT_FAULT_LOG": str(fault_log)})
    backup = subprocess.Popen(
        lab_up.offhost_argv(tmp_path / "repo", "--lease", "6", "--writer", f"sqlite:{ballast}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        job = lab_up.wait_proxy_phase("backup")
        set_id = uuid.UUID(json.loads(job.params_json)["set_id"])
        wait_until(lambda: fault_log.exists() and fault_log.read_text().strip() != "", timeout_s=60, what="the hang")
        point, action, pid_text = fault_log.read_text().split()
        hung = int(pid_text)
        assert (point, action) == ("engine.backup", "hang")
        status = Path(f"/proc/{hung}/status").read_text()
        parent = int(next(x for x in status.splitlines() if x.startswith("PPid:")).split()[1])
        assert b"agent\0serve" in Path(f"/proc/{parent}/cmdline").read_bytes()  # the engine: a child of the agent
        copy = str(lab.two.run_dir / str(set_id))
        assert _open_under(hung, copy) != []  # the hung engine keeps the exposed copy busy (umount: EBUSY)
        lab_up.link(up=False)
        _out, err = backup.communicate(timeout=120)
        assert backup.returncode != 0 and "LEASE_EXPIRED" in err, err
        assert lab_up.backup_completes(set_id) == 0  # never fired
        # The proxy gives up about a lease after its last heartbeat, stops its engine (killed after a 5 s grace)
        # and releases the set; systemOne deletes the snapshot once the proxy has let go of it.
        wait_until(lambda: lab_up.set_state("two", set_id) == "deleted", timeout_s=60, what="the proxy's clean-up")
        wait_until(lambda: lab_up.set_state("one", set_id) == "deleted", timeout_s=60, what="systemOne's delete")
        assert not Path(f"/proc/{hung}").exists()  # killed and reaped
        proxy_job = lab_up.proxy_job(set_id)
        assert proxy_job.state.value == "failed" and proxy_job.error_code == "LEASE_EXPIRED", proxy_job.error_message
        assert lab_up.exposed_on_two() == []
        assert lab_up.snapshot_loops() == []
        for key in ("one", "two"):
            catalog = lab_up.catalog(key)
            try:
                assert all(x.device is None and not x.exposed_at for x in catalog.get_set(set_id).snapshots)
            finally:
                catalog.close()
    finally:
        if backup.poll() is None:
            backup.kill()
        lab_up.link(up=True)
        lab_up.stop_proxy_agent()
        lab_up.start_proxy_agent()
        lab.one.run(["rm", "-f", str(ballast), f"{ballast}-journal"], timeout=30)


def test_proxy_killed_mid_backup_reconciles_on_restart(lab_up: LabUnderTest, tmp_path: Path) -> None:
    lab_up.stop_proxy_agent()
    lab_up.start_proxy_agent({"SNAPPORT_FAULT": "engine.backup:hang"})
    backup = subprocess.Popen(
        lab_up.offhost_argv(tmp_path / "repo", "--lease", "60"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        job = lab_up.wait_proxy_phase("backup")
        set_id = uuid.UUID(json.loads(job.params_json)["set_id"])
        assert lab_up.exposed_on_two() != []
        lab_up.stop_proxy_agent(signal.SIGKILL)
        assert lab_up.exposed_on_two() != []  # a crash leaves the copy mounted...
        lab_up.start_proxy_agent()  # ...until the restarted agent reconciles
        _out, err = backup.communicate(timeout=120)
        assert backup.returncode != 0 and "JOB_INTERRUPTED" in err, err
        assert lab_up.backup_completes(set_id) == 0
        assert lab_up.set_state("one", set_id) == "deleted"
        wait_until(lambda: lab_up.set_state("two", set_id) == "deleted", timeout_s=60, what="reconciliation")
        assert lab_up.exposed_on_two() == []
    finally:
        if backup.poll() is None:
            backup.kill()


def test_a_queued_proxy_job_keeps_its_lease(lab_up: LabUnderTest, tmp_path: Path) -> None:
    """The proxy runs one job at a time and the first hangs in its engine; a second off-host backup, on a 3 s lease,
    waits in the proxy's queue for several leases: systemOne keeps renewing it because the proxy answers that the
    job is queued (a queue is not a lost proxy). Once the proxy restarts, both end without BackupComplete and
    nothing is left on either host."""
    lab = lab_up.lab
    config = config_path(lab.two.home)
    original = config.read_text()
    config.write_text(render_config(parse_config(original).model_copy(update={"max_jobs": 1})))
    lab_up.stop_proxy_agent()
    lab_up.start_proxy_agent({"SNAPPORT_FAULT": "engine.backup:hang"})
    backups: list[subprocess.Popen[str]] = []
    set_ids: list[uuid.UUID] = []
    try:
        for name, lease in (("first", "60"), ("second", "3")):
            argv = lab_up.offhost_argv(tmp_path / name, "--lease", lease)
            backups.append(subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
            if name == "first":
                set_ids.append(uuid.UUID(json.loads(lab_up.wait_proxy_phase("backup").params_json)["set_id"]))
        wait_until(lambda: len(lab_up.proxy_jobs([JobState.QUEUED])) == 1, timeout_s=60, what="the second job queued")
        [queued] = lab_up.proxy_jobs([JobState.QUEUED])
        set_ids.append(uuid.UUID(json.loads(queued.params_json)["set_id"]))
        time.sleep(10)  # more than three of its leases
        assert backups[1].poll() is None, backups[1].communicate()
        assert [j.id for j in lab_up.proxy_jobs([JobState.QUEUED])] == [queued.id]
        assert lab_up.set_state("one", set_ids[1]) not in ("deleted", "aborted")
    finally:
        config.write_text(original)
        lab_up.stop_proxy_agent()  # its queued and running jobs end interrupted
        lab_up.start_proxy_agent()
        errors = []
        for backup in backups:
            try:
                errors.append(backup.communicate(timeout=120)[1])
            finally:
                if backup.poll() is None:
                    backup.kill()
    assert len(errors) == 2 and all(b.returncode != 0 for b in backups), errors
    assert "LEASE_EXPIRED" not in errors[1], errors[1]
    for set_id in set_ids:
        assert lab_up.backup_completes(set_id) == 0
        wait_until(lambda s=set_id: lab_up.set_state("one", s) == "deleted", timeout_s=60, what="systemOne's delete")
    assert lab_up.exposed_on_two() == []
    assert lab_up.snapshot_loops() == []
