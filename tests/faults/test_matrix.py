"""The fault matrix: every fault point of the off-host flow times {kill, raise}, in the agent that owns it, in one
two-host lab; after each case the faulted agent is restarted clean, both hosts are reconciled and the invariants
(tests/faults/cases.py PREAMBLE) are checked and recorded for docs/reliability.md."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from snapport.catalog import Catalog
from snapport.errors import BadState, DoctorFound
from snapport.model import Attr, Context, JobState, SetState, SnapshotSet
from snapport.osal.lock import holders
from tests.faults import reliability
from tests.faults.cases import CASES, CEPH, HOST_OF, PRIMERS
from tests.faults.conftest import FaultLab
from tests.support.lab import needs_lab

pytestmark = [*needs_lab(), pytest.mark.slow, pytest.mark.timeout(300)]

LEASE_S = 5.0
FREEZE_S = 4.0
SLACK_S = 2.0
FLOW_TIMEOUT_S = 120.0
SETTLE_S = LEASE_S + 5.0 + 30.0 + 15.0  # the lease, the proxy's stuck-work grace, systemOne's delete settle, margin
SETS_SETTLE_S = 5.0
FINAL = (SetState.DELETED, SetState.ABORTED)
DOCTOR_FOUND_EXIT = DoctorFound.exit_code


@dataclass
class CommitWatch:
    """The sample application's commit log from a case's start: the longest it waited for a commit."""

    log: Path
    inode: int = 0
    offset: int = 0
    started_ns: int = field(default_factory=time.time_ns)

    def __post_init__(self) -> None:
        st = self.log.stat()
        self.inode, self.offset = st.st_ino, st.st_size

    def longest_wait_s(self) -> float:
        now = time.time_ns()
        texts = []
        if self.log.stat().st_ino != self.inode:  # rotated meanwhile
            rotated = self.log.with_name(self.log.name + ".1")
            texts.append(_read_from(rotated, self.offset))
            texts.append(self.log.read_text())
        else:
            texts.append(_read_from(self.log, self.offset))
        times = [self.started_ns]
        for text in texts:
            for line in text.splitlines():
                try:
                    times.append(int(json.loads(line)["committed_ns"]))
                except (ValueError, KeyError):
                    continue  # a line being written
        times.append(now)
        return max(b - a for a, b in itertools.pairwise(times)) / 1e9


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


def _catalog(fault_lab: FaultLab, key: str) -> Catalog:
    return fault_lab.catalog(key)


def _set_ids(fault_lab: FaultLab, key: str) -> set[uuid.UUID]:
    catalog = _catalog(fault_lab, key)
    try:
        return {s.id for s in catalog.list_sets()}
    finally:
        catalog.close()


def _busy(fault_lab: FaultLab, new: set[uuid.UUID], *, sets: bool) -> list[str]:
    """What is still going on: unfinished jobs on either host, and (`sets`) sets of this case not yet final."""
    busy = []
    for key in ("one", "two"):
        catalog = _catalog(fault_lab, key)
        try:
            busy += [f"{key}: job {j.kind} {j.state.value}" for j in catalog.list_jobs() if not j.state.finished]
            if sets:
                busy += [f"{key}: set {s.id}" for s in catalog.list_sets() if s.id in new and s.state not in FINAL]
        finally:
            catalog.close()
    return busy


def _doctor(fault_lab: FaultLab) -> list[str]:
    """`snapport doctor --repair --json` on both hosts at once; what each repaired, and what it left. A doctor
    that does not run, or answers with anything but its report (exit 0, or DOCTOR_FOUND with what is left),
    fails the case: the reconciliation of every case depends on it."""
    # Every job has ended on both hosts: no delete is under way, so a set still deleting is stuck now.
    argv = [sys.executable, "-m", "snapport", "doctor", "--repair", "--stuck-after", "0", "--json"]
    running = {
        key: subprocess.Popen(fault_lab.lab.host(key).command(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for key in ("one", "two")
    }
    notes = []
    for key, doctor in running.items():
        out, err = doctor.communicate(timeout=120)
        stderr = err.decode(errors="replace").strip()[-400:]
        assert doctor.returncode in (0, DOCTOR_FOUND_EXIT), f"doctor on {key} exited {doctor.returncode}: {stderr}"
        report = json.loads(out)
        assert set(report) == {"found", "repaired", "left", "busy"}, f"doctor on {key} printed {report}"
        for item in report["repaired"]:
            notes.append(f"doctor {key}: {item['kind']} {item['action']}")
        for item in report["left"]:
            notes.append(f"doctor on {key} left {item['kind']} {item['object']}: {item['detail'][-200:]}")
    return notes


def _leftovers(fault_lab: FaultLab) -> list[str]:
    lab = fault_lab.lab
    left = fault_lab.storage_leftovers()
    for key in ("one", "two"):
        host = lab.host(key)
        run_dir = str(host.run_dir).rstrip("/") + "/"
        left += [f"mount {m.mount_point} on {key}" for m in host.mounts() if m.mount_point.startswith(run_dir)]
        locks = host.home / "locks"
        for path in sorted(locks.glob("*")) if locks.is_dir() else []:
            if path.name != "agent.lock" and holders(path):
                left.append(f"lock {path.name} on {key} held by {holders(path)}")
    catalog = _catalog(fault_lab, "one")
    try:
        left += [f"lease {lease.id} on set {lease.set_id}" for lease in catalog.leases() if lease.released_at is None]
    finally:
        catalog.close()
    return left


def _frozen(fault_lab: FaultLab) -> bool:
    probe = (
        "import sys; from pathlib import Path; from snapport.osal.ioctl import is_frozen;"
        "print(is_frozen(Path(sys.argv[1])))"
    )
    done = fault_lab.lab.one.run([sys.executable, "-c", probe, str(fault_lab.lab.data_mount)], timeout=60)
    return done.stdout.strip() == "True"


def _backup_complete_ok(fault_lab: FaultLab, new: set[uuid.UUID]) -> tuple[bool, str]:
    one, two = _catalog(fault_lab, "one"), _catalog(fault_lab, "two")
    try:
        proxy_ok = {
            uuid.UUID(json.loads(j.params_json)["set_id"])
            for j in two.list_jobs(kind="proxy-backup")
            if j.state is JobState.SUCCEEDED
        }
        for set_id in new:
            fired = sum(1 for e in one.writer_events(set_id) if e.event == "backup-complete")
            if fired == 0:
                continue
            session = one.get_session(set_id)
            if fired > 1 or session.succeeded is not True or set_id not in proxy_ok:
                return False, f"BackupComplete x{fired} (succeeded={session.succeeded}, proxy ok={set_id in proxy_ok})"
        return True, ""
    finally:
        one.close()
        two.close()


def _catalog_mismatches(fault_lab: FaultLab, new: set[uuid.UUID]) -> list[str]:
    wrong = []
    for key in ("one", "two"):
        catalog = _catalog(fault_lab, key)
        try:
            for s in catalog.list_sets():
                if s.id not in new:
                    continue
                if s.state not in FINAL:
                    wrong.append(f"{key}: set {s.id} {s.state.value}")
                wrong += [
                    f"{key}: snapshot {x.id} keeps {x.device or x.exposed_at}"
                    for x in s.snapshots
                    if x.device or x.exposed_at
                ]
        finally:
            catalog.close()
    return wrong


def _clean_up(fault_lab: FaultLab, new: set[uuid.UUID]) -> None:
    """After a failed case: delete what it left, so that the next case starts clean (best effort)."""
    for key in ("two", "one"):
        catalog = _catalog(fault_lab, key)
        try:
            live = [s.id for s in catalog.list_sets() if s.id in new and s.state not in FINAL]
        finally:
            catalog.close()
        for set_id in live:
            fault_lab.lab.host(key).run(
                [sys.executable, "-m", "snapport", "delete", str(set_id)], timeout=120, check=False
            )
    catalog = _catalog(fault_lab, "one")
    try:
        for lease in catalog.leases():
            if lease.released_at is None:
                catalog.release_lease(lease.id)
    finally:
        catalog.close()
    fault_lab.scrub()


def _error_name(stderr: str) -> str:
    for line in reversed(stderr.strip().splitlines()):
        try:
            raw: Any = json.loads(line)
        except ValueError:
            continue
        if isinstance(raw, dict) and "error" in raw:
            return str(raw["error"])
    return "failed"


def _run_flow(fault_lab: FaultLab, key: str, repo: Path) -> tuple[str, bool]:
    """The off-host backup, restarting the faulted agent (without its fault) as soon as it dies; how the command
    ended, and whether the agent was restarted."""
    argv = fault_lab.offhost_argv(repo, "--lease", f"{LEASE_S:g}", "--freeze-timeout", f"{FREEZE_S:g}")
    flow = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + FLOW_TIMEOUT_S
    restarted = False
    try:
        while flow.poll() is None and time.monotonic() < deadline:
            if not restarted and not fault_lab.agent_alive(key):
                fault_lab.restart_agent(key)
                restarted = True
            time.sleep(0.1)
        if flow.poll() is None:
            return "hung", restarted
        _out, err = flow.communicate(timeout=30)
        return ("ok" if flow.returncode == 0 else _error_name(err)), restarted
    finally:
        if flow.poll() is None:
            flow.kill()
            flow.wait(timeout=30)


class _Clock:
    """How long each part of a case took (printed with SNAPPORT_FAULT_TIMING=1, to keep the matrix fast)."""

    def __init__(self) -> None:
        self.last = time.monotonic()
        self.laps: list[str] = []

    def lap(self, what: str) -> None:
        now = time.monotonic()
        self.laps.append(f"{what} {now - self.last:.1f}s")
        self.last = now
        if what == "checks" and os.environ.get("SNAPPORT_FAULT_TIMING") == "1":
            print(" ".join(self.laps))


def _case_id(point: str, action: str, process: str) -> str:
    host = process.split()[1]
    return f"{point}-{action}-{host}" + ("-ceph" if process in CEPH else "")


@pytest.mark.parametrize(("point", "action", "process"), CASES, ids=[_case_id(*case) for case in CASES])
def test_fault(request: pytest.FixtureRequest, tmp_path: Path, point: str, action: str, process: str) -> None:
    fault_lab: FaultLab = request.getfixturevalue("ceph_fault_lab" if process in CEPH else "fault_lab")
    key = HOST_OF[process]
    clock = _Clock()
    before = _set_ids(fault_lab, "one")
    fault_log = tmp_path / "fault.log"
    fault = ",".join(f for f in (PRIMERS.get(point), f"{point}:{action}") if f)
    fault_lab.restart_agent(key, {"SNAPPORT_FAULT": fault, "SNAPPORT_FAULT_LOG": str(fault_log)})
    clock.lap("start")
    watch = CommitWatch(fault_lab.lab.commit_log)
    outcome, restarted = _run_flow(fault_lab, key, tmp_path / "repo")
    clock.lap("flow")
    reached = fault_log.exists() and any(line.split()[0] == point for line in fault_log.read_text().splitlines())
    if not restarted or not fault_lab.agent_alive(key):
        fault_lab.restart_agent(key)  # without the fault; a restarted agent reconciles its jobs and leases
    clock.lap("restart")
    new = _set_ids(fault_lab, "one") - before
    deadline = time.monotonic() + SETTLE_S
    while _busy(fault_lab, new, sets=False) and time.monotonic() < deadline:
        time.sleep(0.25)
    deadline = time.monotonic() + SETS_SETTLE_S  # a set a finished job left behind is the reconciliation's
    while _busy(fault_lab, new, sets=True) and time.monotonic() < deadline:
        time.sleep(0.25)
    clock.lap("settle")
    notes = _doctor(fault_lab)
    clock.lap("doctor")
    longest = watch.longest_wait_s()
    left = _leftovers(fault_lab)
    complete_ok, complete_note = _backup_complete_ok(fault_lab, new)
    mismatches = _catalog_mismatches(fault_lab, new)
    clock.lap("checks")
    invariants = {
        "freeze_bounded": longest <= FREEZE_S + SLACK_S,
        "thawed": not _frozen(fault_lab),
        "no_leftovers": not left,
        "backup_complete_once": complete_ok,
        "catalog_matches": not mismatches,
    }
    notes += [*left, *mismatches] + ([complete_note] if complete_note else [])
    if not invariants["freeze_bounded"]:
        notes.append(f"the application waited {longest:.1f} s for a commit")
    note = "; ".join(notes)[:600]
    reliability.record(
        point,
        action,
        invariants if reached else {},
        note if reached else f"the flow ended ({outcome}) without reaching this point",
        process=process,
        outcome=outcome if reached else reliability.NOT_REACHED,
    )
    if left or mismatches:
        _clean_up(fault_lab, new)
    if not reached:
        pytest.skip(f"{point} is not reached by the off-host flow (outcome {outcome})")
    assert all(invariants.values()), (outcome, invariants, notes)


def _planted_set(catalog: Catalog) -> uuid.UUID:
    """A set of this test's own for a lease to name (run alone, no case has made one): recorded and aborted at
    once, with no snapshot, as a creation that failed before its provider's prepare leaves one."""
    set_id = uuid.uuid4()
    catalog.add_set(
        SnapshotSet(
            id=set_id,
            context=Context.BACKUP,
            attrs=Attr.NONE,
            state=SetState.PREPARING,
            originating_host=catalog.host,
            service_host=catalog.host,
            created_at=datetime.now(UTC),
        )
    )
    with contextlib.suppress(BadState):  # the agent's own reconciliation may have rolled it back first
        catalog.transition(set_id, SetState.ABORTED, reason="planted by the fault suite")
    assert catalog.get_set(set_id).state is SetState.ABORTED
    return set_id


def test_the_checks_see_planted_leftovers(fault_lab: FaultLab) -> None:
    """The invariants can fail: a stale mount, a held lock, a live lease and a frozen volume are each seen."""
    lab = fault_lab.lab
    stale = lab.two.run_dir / "planted-by-the-fault-suite"
    lock = lab.two.home / "locks" / "import.lock"
    lock.parent.mkdir(exist_ok=True)
    ioctl = (
        "import sys; from pathlib import Path; from snapport.osal import ioctl;"
        "getattr(ioctl, sys.argv[1])(Path(sys.argv[2]))"
    )
    catalog = _catalog(fault_lab, "one")
    lease = None
    with lock.open("a") as held:
        try:
            lab.two.run(["mkdir", "-p", str(stale)], timeout=30)
            lab.two.run(["mount", "-t", "tmpfs", "-o", "size=1m", "planted", str(stale)], timeout=30)
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lease = catalog.grant_lease(_planted_set(catalog), "systemTwo", 600)
            left = " / ".join(_leftovers(fault_lab))
            assert f"mount {stale} on two" in left and "lock import.lock on two" in left, left
            assert f"lease {lease.id}" in left, left
            lab.one.run([sys.executable, "-c", ioctl, "freeze", str(lab.data_mount)], timeout=30)
            try:
                assert _frozen(fault_lab)
            finally:
                lab.one.run([sys.executable, "-c", ioctl, "thaw", str(lab.data_mount)], timeout=30)
            assert not _frozen(fault_lab)
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
            if lab.two.mount_at(stale) is not None:
                lab.two.run(["umount", str(stale)], timeout=30)
            lab.two.run(["rmdir", str(stale)], timeout=30, check=False)
            if lease is not None:
                catalog.release_lease(lease.id)
            catalog.close()
    assert _leftovers(fault_lab) == []
