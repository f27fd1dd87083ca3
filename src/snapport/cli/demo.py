"""`snapport demo`: the two-host lab end to end (the README's main job).

Lab up (a temporary directory, or `$SNAPPORT_LAB_DIR`) → an off-host backup of systemOne's /srv/data, with the
sqlite writer on the sample application's database, through both agents → a consistency check of what the
repository holds (SQLite integrity, and every transaction committed before the freeze present) → a timeline →
lab down, always.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from snapport.cli.env import json_option
from snapport.errors import SystemCommandError, UsageError

BULK_MIB = 256  # incompressible data added to the volume, so the backup has real work to do
LOAD_ROWS = 200  # the sample application has committed this many rows before the backup starts
DB_NAMES = ("app.db", "app.db-wal")


def _snapport(*args: str) -> list[str]:
    return [sys.executable, "-m", "snapport", *args]


def _say(text: str, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"demo": text}), file=sys.stderr, flush=True)
    else:
        click.echo(text, err=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and its reaped children (`/proc/PID/stat`)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Check:
    consistent: bool
    intact: bool
    last_counter: int
    committed_before_freeze: int
    problems: tuple[str, ...]


def check_consistency(repo: Path, set_id: uuid.UUID, commit_log: Path, freeze_started_ns: int) -> Check:
    """Verify the archive, restore the SQLite files from it and check them against the commit log."""
    from backports.zstd import ZstdFile  # noqa: PLC0415

    from snapport.engines import ArchiveEngine  # noqa: PLC0415
    from snapport.engines.archive.format import ARCHIVE_FILE, member_name  # noqa: PLC0415
    from snapport.lab import sample_app  # noqa: PLC0415
    from snapport.lab.config import DATA_MOUNT  # noqa: PLC0415

    report = ArchiveEngine(repo).verify(set_id)
    wanted = {member_name(f"{DATA_MOUNT}/{name}"): name for name in DB_NAMES}
    with tempfile.TemporaryDirectory(prefix="snapport-demo-restore-") as scratch:
        restored = Path(scratch)
        with ZstdFile(repo / "sets" / str(set_id) / ARCHIVE_FILE) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for member in tar:
                name = wanted.get(member.name)
                if name is not None and member.isfile():
                    source = tar.extractfile(member)
                    assert source is not None
                    with (restored / name).open("wb") as out:
                        shutil.copyfileobj(source, out)
        if not (restored / "app.db").exists():
            return Check(False, report.intact, 0, 0, ("app.db is not in the backup",))
        verification = sample_app.verify(restored / "app.db")
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
    from snapport.catalog import Catalog, catalog_url  # noqa: PLC0415

    catalog = Catalog.open(catalog_url(home))
    try:
        starts = [e.started_at for e in catalog.writer_events(set_id) if e.event == "freeze"]
    finally:
        catalog.close()
    if not starts:
        raise SystemCommandError(f"systemOne recorded no freeze for set {set_id}")
    return int(min(starts).timestamp() * 1e9)


def _wait_for_load(commit_log: Path, *, timeout_s: float = 60.0) -> None:
    from snapport.lab import sample_app  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    while sample_app.last_committed_before(commit_log, time.time_ns()) < LOAD_ROWS:
        if time.monotonic() > deadline:
            raise SystemCommandError(f"the sample application committed fewer than {LOAD_ROWS} rows in {timeout_s} s")
        time.sleep(0.2)


def _backup(lab: Any, repo: Path, *, as_json: bool) -> dict[str, Any]:
    """`snapport offhost-backup` run on systemOne (its operator, its certificate); its phases relayed."""
    argv = _snapport(
        "offhost-backup", "--source", f"{lab.one.ip}:{lab.state.agent_port}",
        "--proxy", f"{lab.two.ip}:{lab.state.agent_port}", "--volume", str(lab.data_mount),
        "--writer", f"sqlite:{lab.data_mount}/app.db", "--repo", str(repo), "--json",
    )  # fmt: skip
    process = subprocess.Popen(lab.one.command(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None and process.stdout is not None
    last_phase, last_line = None, ""
    for line in process.stderr:
        last_line = line.strip() or last_line
        try:
            event = json.loads(line)
        except ValueError:
            continue
        phase = event.get("phase")
        if phase and phase != last_phase:
            last_phase = phase
            _say(f"  {event.get('elapsed_s', 0):7.2f} s  {phase}", as_json=as_json)
    out = process.stdout.read()
    if process.wait() != 0:
        raise SystemCommandError(f"the off-host backup failed: {last_line}")
    result: dict[str, Any] = json.loads(out)
    return result


@click.command("demo")
@click.option(
    "--keep-repo",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep the backup repository in DIR (absent or empty) [default: a temporary one, removed].",
)
@json_option
def demo(keep_repo: Path | None, as_json: bool) -> None:
    """Run the two-host lab end to end: an off-host backup from systemOne to systemTwo, checked and timed."""
    from snapport.lab import Lab  # noqa: PLC0415

    if os.geteuid() != 0:
        raise UsageError("the demo makes namespaces, loop devices and mounts: run it as root")
    if keep_repo is not None and keep_repo.exists() and any(keep_repo.iterdir()):
        raise UsageError(f"{keep_repo} is not empty; --keep-repo takes an absent or empty directory")
    scratch = Path(tempfile.mkdtemp(prefix="snapport-demo-"))
    lab_dir = Path(os.environ.get("SNAPPORT_LAB_DIR") or scratch / "lab")
    repo = (keep_repo or scratch / "repo").absolute()
    suffix = f"demo{uuid.uuid4().hex[:6]}"
    up = subprocess.run(_snapport("lab", "up", "--dir", str(lab_dir), "--suffix", suffix, "--array-size", "2G"),
                        capture_output=True, text=True, check=False)  # fmt: skip
    try:
        if up.returncode != 0:
            raise SystemCommandError(f"lab up failed: {(up.stderr.strip().splitlines() or ['?'])[-1]}")
        lab = Lab.open(lab_dir)
        _say(
            f"lab up in {lab_dir} (namespaces *-{suffix}); the sample app writes {lab.data_mount}/app.db",
            as_json=as_json,
        )
        bulk = f"{lab.data_mount}/bulk.bin"
        lab.one.run(["dd", "if=/dev/urandom", f"of={bulk}", "bs=1M", f"count={BULK_MIB}", "conv=fsync"], timeout=300)
        _wait_for_load(lab.commit_log)
        agents = {name: lab.process("agent", name) for name in ("systemOne", "systemTwo")}
        pids = {name: record.pid for name, record in agents.items() if record is not None and record.pid}
        if len(pids) != 2:
            raise SystemCommandError("the lab's agents are not running")
        cpu_before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        _say("off-host backup of /srv/data: systemOne snapshots, systemTwo imports and backs up", as_json=as_json)
        result = _backup(lab, repo, as_json=as_json)
        cpu = {name: round(cpu_seconds(pid) - cpu_before[name], 3) for name, pid in pids.items()}
        set_id = uuid.UUID(result["set_id"])
        check = check_consistency(repo, set_id, lab.commit_log, freeze_started_ns(lab.one.home, set_id))
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
    backup_s = result.get("backup_s") or 0.0
    summary = {
        "set_id": str(set_id),
        "consistent": check.consistent,
        "freeze_window_ms": round(result["freeze_window_ms"], 1),
        "import_ms": round(result["import_ms"], 1),
        "backup_mib_s": round(result["bytes"] / 2**20 / backup_s, 1) if backup_s else 0.0,
        "systemone_cpu_s": cpu["systemOne"],
        "systemtwo_cpu_s": cpu["systemTwo"],
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        _timeline(summary, result, check, keep_repo)
    if not check.consistent:
        click.echo(f"snapport: the backup of set {set_id} is not consistent: {'; '.join(check.problems)}", err=True)
        raise click.exceptions.Exit(1)


def _timeline(summary: dict[str, Any], result: dict[str, Any], check: Check, keep_repo: Path | None) -> None:
    mib = result["bytes"] / 2**20
    lines = [
        f"set {summary['set_id']}",
        f"  freeze window      {summary['freeze_window_ms']:8.1f} ms   (writers frozen on systemOne)",
        f"  import             {summary['import_ms']:8.1f} ms   (systemTwo presents the snapshot LUN)",
        f"  backup             {result['backup_s'] or 0:8.2f} s    {mib:.1f} MiB at {summary['backup_mib_s']} MiB/s",
        f"  CPU on systemOne   {summary['systemone_cpu_s']:8.3f} s    (its agent, whole off-host backup)",
        f"  CPU on systemTwo   {summary['systemtwo_cpu_s']:8.3f} s    (its agent: import, backup, verify)",
        f"  consistent         {'yes' if check.consistent else 'NO'}: last row {check.last_counter}, "
        f"last committed before the freeze {check.committed_before_freeze}",
    ]
    for phase in result.get("phases", []):
        lines.append(f"    {phase['phase']:<22} {phase.get('duration_s', 0):7.2f} s")
    if keep_repo is not None:
        lines.append(f"  repository kept in {keep_repo}")
    click.echo("\n".join(lines))
