"""The demo (`snapport demo`, the README's main job): the two-host lab end to end, checked and timed.

Lab up (a temporary directory, or `$SNAPPORT_LAB_DIR`) → an off-host backup of systemOne's /srv/data, with the
sqlite writer on the sample application's database, through both agents (`snapport offhost-backup`, run on
systemOne as its operator would) → a consistency check of what the repository holds (the engine verifies the set,
restores the database's component, and the copy must pass SQLite's integrity check and hold every transaction
committed before the freeze) → lab down, always.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from snapport.catalog import Catalog, catalog_url
from snapport.engines import get_engine
from snapport.errors import SystemCommandError, UsageError
from snapport.lab import sample_app
from snapport.lab.config import DATA_MOUNT
from snapport.lab.handle import Lab
from snapport.osal.runner import PIPE, SubprocessRunner

BULK_MIB = 256  # incompressible data added to the volume, so the backup has real work to do
LOAD_ROWS = 200  # the sample application has committed this many rows before the backup starts
DATABASE = f"{DATA_MOUNT}/app.db"

Say = Callable[[str], None]


class BackupOutput(BaseModel):
    """What the demo reads of `snapport offhost-backup --json` (its stable keys; the others are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    set_id: uuid.UUID
    freeze_window_ms: float
    import_ms: float
    backup_s: float | None
    bytes: int
    files: int
    phases: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Check:
    consistent: bool
    intact: bool
    last_counter: int
    committed_before_freeze: int
    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DemoReport:
    backup: BackupOutput
    check: Check
    systemone_cpu_s: float
    systemtwo_cpu_s: float
    repository: Path
    storage: str

    @property
    def backup_mib_s(self) -> float:
        seconds = self.backup.backup_s or 0.0
        return round(self.backup.bytes / 2**20 / seconds, 1) if seconds else 0.0

    def summary(self) -> dict[str, Any]:
        """The demo's JSON (DESIGN §9's keys)."""
        return {
            "set_id": str(self.backup.set_id),
            "consistent": self.check.consistent,
            "freeze_window_ms": round(self.backup.freeze_window_ms, 1),
            "import_ms": round(self.backup.import_ms, 1),
            "backup_mib_s": self.backup_mib_s,
            "systemone_cpu_s": self.systemone_cpu_s,
            "systemtwo_cpu_s": self.systemtwo_cpu_s,
            "storage": self.storage,
        }


def _snapport(*args: str) -> list[str]:
    return [sys.executable, "-m", "snapport", *args]


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (`/proc/PID/stat`)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def check_consistency(repo: Path, set_id: uuid.UUID, commit_log: Path, freeze_started_ns: int) -> Check:
    """Verify the set, restore the sample database's component from it and check it against the commit log."""
    engine = get_engine("archive", repo)
    report = engine.verify(set_id)
    documents = engine.documents(set_id)
    database = [(w.writer_id, c.full_path) for w in documents.writers if w.name == "sqlite" for c in w.components]
    if not database:
        return Check(False, report.intact, 0, 0, ("the set holds no sqlite writer's component",))
    with tempfile.TemporaryDirectory(prefix="snapport-demo-restore-") as scratch:
        engine.restore(set_id, Path(scratch), components=database)
        verification = sample_app.verify(Path(scratch) / DATABASE.lstrip("/"))
    before = sample_app.last_committed_before(commit_log, freeze_started_ns)
    problems = list(verification.problems) + [str(p) for p in report.problems]
    if verification.integrity != "ok":
        problems.append(f"integrity_check: {verification.integrity}")
    if verification.last_counter < before:
        problems.append(
            f"transaction {before} committed before the freeze is missing (last {verification.last_counter})"
        )
    consistent = report.intact and verification.ok and verification.last_counter >= before
    return Check(consistent, report.intact, verification.last_counter, before, tuple(problems))


def freeze_started_ns(home: Path, set_id: uuid.UUID) -> int:
    """When the first writer of the set began to freeze (systemOne's catalog), in wall-clock ns."""
    with Catalog.open(catalog_url(home)) as catalog:
        starts = [e.started_at for e in catalog.writer_events(set_id) if e.event == "freeze"]
    if not starts:
        raise SystemCommandError(f"systemOne recorded no freeze for set {set_id}")
    return int(min(starts).timestamp() * 1e9)


def _wait_for_load(commit_log: Path, *, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while sample_app.last_committed_before(commit_log, time.time_ns()) < LOAD_ROWS:
        if time.monotonic() > deadline:
            raise SystemCommandError(f"the sample application committed fewer than {LOAD_ROWS} rows in {timeout_s} s")
        time.sleep(0.2)


def _backup(lab: Lab, repo: Path, say: Say) -> BackupOutput:
    """`snapport offhost-backup` run on systemOne (its operator, its certificate); its phases relayed."""
    argv = _snapport(
        "offhost-backup", "--source", f"{lab.one.ip}:{lab.state.agent_port}",
        "--proxy", f"{lab.two.ip}:{lab.state.agent_port}", "--volume", str(lab.data_mount),
        "--writer", f"sqlite:{lab.data_mount}/app.db", "--repo", str(repo), "--json",
    )  # fmt: skip
    with SubprocessRunner().start(lab.one.command(argv), stdout=PIPE, stderr=PIPE) as process:
        assert process.stderr is not None and process.stdout is not None
        last_phase, last_line = None, ""
        for raw in process.stderr:
            line = raw.decode(errors="replace")
            last_line = line.strip() or last_line
            try:
                event = json.loads(line)
            except ValueError:
                continue
            phase = event.get("phase")
            if phase and phase != last_phase:
                last_phase = phase
                say(f"  {event.get('elapsed_s', 0):7.2f} s  {phase}")
        out = process.stdout.read()
        if process.wait() != 0:
            raise SystemCommandError(f"the off-host backup failed: {last_line}")
    return BackupOutput.model_validate_json(out)


def run_demo(keep_repo: Path | None, say: Say, storage: str = "array") -> DemoReport:
    """The whole demo, its data volume on `storage` (the file-backed array, or RBD on a Ceph cluster the lab
    starts); the lab is down when it returns or raises."""
    if os.geteuid() != 0:
        raise UsageError("the demo makes namespaces, loop devices and mounts: run it as root")
    if keep_repo is not None and keep_repo.exists() and any(keep_repo.iterdir()):
        raise UsageError(f"{keep_repo} is not empty; --keep-repo takes an absent or empty directory")
    scratch = Path(tempfile.mkdtemp(prefix="snapport-demo-"))
    lab_dir = Path(os.environ.get("SNAPPORT_LAB_DIR") or scratch / "lab")
    repo = (keep_repo or scratch / "repo").absolute()
    suffix = f"demo{uuid.uuid4().hex[:6]}"
    up_argv = _snapport(
        "lab", "up", "--dir", str(lab_dir), "--suffix", suffix, "--array-size", "2G", "--storage", storage
    )
    up = subprocess.run(up_argv, capture_output=True, text=True, check=False)
    try:
        if up.returncode != 0:
            raise SystemCommandError(f"lab up failed: {(up.stderr.strip().splitlines() or ['?'])[-1]}")
        lab = Lab.open(lab_dir)
        on = "an RBD image of the lab's Ceph cluster" if storage == "ceph" else "a LUN of the file-backed array"
        say(f"lab up in {lab_dir} (namespaces *-{suffix}); the sample app writes {lab.data_mount}/app.db on {on}")
        bulk = f"{lab.data_mount}/bulk.bin"
        lab.one.run(["dd", "if=/dev/urandom", f"of={bulk}", "bs=1M", f"count={BULK_MIB}", "conv=fsync"], timeout=300)
        _wait_for_load(lab.commit_log)
        agents = {name: lab.process("agent", name) for name in ("systemOne", "systemTwo")}
        pids = {name: record.pid for name, record in agents.items() if record is not None and record.pid}
        if len(pids) != 2:
            raise SystemCommandError("the lab's agents are not running")
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        say("off-host backup of /srv/data: systemOne snapshots, systemTwo imports and backs up")
        backup = _backup(lab, repo, say)
        cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 3) for name, pid in pids.items()}
        started = freeze_started_ns(lab.one.home, backup.set_id)
        check = check_consistency(repo, backup.set_id, lab.commit_log, started)
    finally:
        down = subprocess.run(
            _snapport("lab", "down", "--dir", str(lab_dir)), capture_output=True, text=True, check=False
        )
        if keep_repo is None:
            shutil.rmtree(scratch, ignore_errors=True)
        elif not os.environ.get("SNAPPORT_LAB_DIR"):
            shutil.rmtree(scratch / "lab", ignore_errors=True)
    if down.returncode != 0:
        raise SystemCommandError(f"lab down left something: {(down.stderr.strip().splitlines() or ['?'])[-1]}")
    return DemoReport(backup, check, cpu["systemOne"], cpu["systemTwo"], repo, storage)
