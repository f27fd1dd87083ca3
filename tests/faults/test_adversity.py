"""Adversity for the crash-safety suite (issue 7): an unwritable array, two proxies racing to import one set, a full
repository disk, writers that hang, and the proxy's clock an hour off. Each case runs the real flow, meets the
adversity, checks the invariants (nothing frozen, no snapshot LUN, loop device, mount, lock or lease left,
BackupComplete at most once and only after success, the catalog matching the machine, an error naming the cause)
and records its row for `docs/reliability.md`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from snapport.catalog import Catalog, catalog_url
from snapport.errors import SnapportError
from snapport.lab.host import LabHost
from snapport.model import JobState, SetState
from snapport.osal import ioctl, loop
from snapport.osal import mount as mnt
from snapport.osal.runner import SubprocessRunner
from snapport.providers.reflink_array import Array
from tests.conftest import Scratch, needs_tool
from tests.faults.conftest import CephFaultLab, FaultLab
from tests.faults.reliability import record
from tests.support.array_world import HOST_ONE, HOST_TWO, ArrayWorld

pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.timeout(300)]

HOST_THREE = "three"
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
STALL_S = 8.0  # the stall bound the Ceph outage case gives the proxy


def check(fault: str, action: str, invariants: dict[str, bool], note: str = "", *, process: str, outcome: str) -> None:
    """Record the row (the table's invariant columns, plus `clear_error` and `one_winner` where they apply), then
    fail on any invariant that did not hold."""
    record(fault, action, invariants, note, process=process, outcome=outcome)
    broken = [name for name, held in invariants.items() if not held]
    assert not broken, f"{fault} / {action}: {broken} did not hold ({note})"


# -- one machine, hosts as homes: the array and the import ---------------------------------------------------------


@pytest.fixture
def world(scratch: Scratch, tmp_path: Path) -> Iterator[ArrayWorld]:
    """`tests.support.array_world`'s world on a smaller array (1 GiB of scratch XFS); whatever it still presents at
    the end is unmounted and detached by exact device."""
    array_fs = scratch.filesystem("xfs", size_mb=1024, name="arrayfs")
    array = Array.init(array_fs.mount_point / "array", scratch.runner)
    w = ArrayWorld(scratch, tmp_path, array)

    def detach_strays() -> None:
        for device in loop.attached(scratch.runner):
            if device.backing_file.startswith(f"{array.path}/"):
                for m in mnt.mounts():
                    if m.source == device.device:
                        mnt.unmount(scratch.runner, Path(m.mount_point))
                loop.detach(scratch.runner, device.device)

    scratch.defer(detach_strays, "detach what the array still presents")
    try:
        yield w
    finally:
        w.close()


def cli(world: ArrayWorld, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    return world.cli(host, *args)


def error_of(done: subprocess.CompletedProcess[str]) -> str:
    """The stable error name a failed `--json` command printed (INTERNAL for an unexpected exception)."""
    try:
        return str(json.loads(done.stderr.strip().splitlines()[-1])["error"])
    except (ValueError, LookupError):
        return "?"


def writable(path: Path) -> bool:
    """Write and fsync a file in a child process (a frozen filesystem blocks it: the child is then killed)."""
    probe = path / f".probe-{uuid.uuid4().hex[:8]}"
    code = "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT); os.write(fd, b'x'); os.fsync(fd)"
    try:
        done = subprocess.run([sys.executable, "-c", code, str(probe)], timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return False
    probe.unlink(missing_ok=True)
    return done.returncode == 0


def doctor_finds(world: ArrayWorld, host: str) -> list[str]:
    """What `snapport doctor` finds on a host (nothing: exit 0)."""
    done = cli(world, host, "doctor")
    if done.returncode == 0:
        return []
    try:
        return [f"{host}: {json.dumps(f, sort_keys=True)}" for f in json.loads(done.stdout)["found"]]
    except (ValueError, LookupError):
        return [f"{host}: doctor failed: {failure(done)}"]


def set_states(world: ArrayWorld, host: str) -> dict[str, str]:
    catalog = Catalog.open(catalog_url(world.tmp / f"home-{host}"), host=host)
    try:
        return {str(s.id): s.state.value for s in catalog.list_sets()}
    finally:
        catalog.close()


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Directories the test made immutable (`chattr +i`: root ignores modes, not this); made mutable again."""
    made: list[Path] = []
    yield made
    for path in made:
        subprocess.run(["chattr", "-i", str(path)], check=False, timeout=30)


@needs_tool("chattr")
@pytest.mark.parametrize(
    ("unwritable", "when"),
    [("array", "before the freeze (provider prepare)"), ("luns", "inside the freeze (provider commit)")],
)
def test_array_directory_unwritable_while_a_set_is_created(
    world: ArrayWorld, immutable: list[Path], unwritable: str, when: str
) -> None:
    volume = world.volume("data")
    (volume / "file").write_bytes(b"payload")
    target = world.array.path if unwritable == "array" else world.array.path / "luns"
    subprocess.run(["chattr", "+i", str(target)], check=True, timeout=30)
    immutable.append(target)

    done = cli(world, HOST_ONE, "create", str(volume), "--transportable", "--out", str(world.tmp / "docs"))

    subprocess.run(["chattr", "-i", str(target)], check=True, timeout=30)
    host = world.host(HOST_ONE)
    left = world.leftovers(host) + doctor_finds(world, HOST_ONE)
    states = set(set_states(world, HOST_ONE).values())
    failed = done.returncode != 0
    check(
        "array directory unwritable (chattr +i)",
        f"`snapport create` with {target.relative_to(world.array.path.parent)}/ immutable",
        {
            "thawed": not ioctl.is_frozen(volume) and writable(volume),
            "no_leftovers": left == [],
            "catalog_matches": states <= {SetState.ABORTED.value},
            "clear_error": failed
            and error_of(done) in ("PROVIDER_ERROR", "SYSTEM_ERROR")
            and "not permitted" in done.stderr
            and str(target) in done.stderr,
        },
        note=f"fails {when}: {failure(done)}" + (f"; left: {left}" if left else ""),
        process="cli",
        outcome="failed, cleaned up" if failed else "succeeded",
    )


RACER = textwrap.dedent(
    """
    import sys
    from snapport.cli.main import main
    import snapport.cli.shadow, snapport.coordinator.lifecycle, snapport.providers.reflink_array  # noqa
    print("ready", flush=True)
    sys.stdin.readline()  # both racers start on the same line
    sys.exit(main(sys.argv[1:]))
    """
)


def race_imports(world: ArrayWorld, bcd: Path, hosts: tuple[str, ...]) -> dict[str, subprocess.CompletedProcess[str]]:
    racers = {
        host: subprocess.Popen(
            [sys.executable, "-c", RACER, "import", str(bcd), "--json"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=world.env(host),
        )
        for host in hosts
    }
    try:
        for proc in racers.values():
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        for proc in racers.values():
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = {}
        for host, proc in racers.items():
            out, err = proc.communicate(timeout=120)
            results[host] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        return results
    finally:
        for proc in racers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_two_proxies_race_to_import_one_set(world: ArrayWorld) -> None:
    volume = world.volume("data")
    (volume / "file").write_bytes(b"payload")
    hosts = (HOST_TWO, HOST_THREE)
    rounds: list[dict[str, bool]] = []
    notes: list[str] = []
    for attempt in range(3):  # the race window is a few milliseconds wide: run it more than once
        out = world.tmp / f"docs-{attempt}"
        made = cli(world, HOST_ONE, "create", str(volume), "--transportable", "--out", str(out))
        assert made.returncode == 0, made.stderr
        set_id = json.loads(made.stdout)["set_id"]
        results = race_imports(world, out / "backup-components.xml", hosts)
        winners = [h for h, r in results.items() if r.returncode == 0]
        losers = [h for h in hosts if h not in winners]
        snapshot_lun = next(lun for lun in world.array.luns() if lun.snapshot_of_set == set_id)
        presented_to = sorted(h for h in snapshot_lun.hosts if snapshot_lun.devices_on(h))
        image = str(world.array.image(snapshot_lun.id))
        loops = [d.device for d in loop.attached(world.scratch.runner) if d.backing_file == image]
        loser_states = [set_states(world, h).get(set_id) for h in losers]
        refusal = results[losers[0]].stderr if len(losers) == 1 else ""
        deletes = [cli(world, host, "delete", set_id) for host in winners]  # (both, if both won)
        deletes.append(cli(world, HOST_ONE, "delete", set_id))
        left = world.leftovers() + [f for h in (HOST_ONE, *hosts) for f in doctor_finds(world, h)]
        rounds.append(
            {
                "one_winner": len(winners) == 1 and presented_to == winners and len(loops) == 1,
                "clear_error": "IMPORT_REFUSED" in refusal and "already imported" in refusal,
                "catalog_matches": all(s in (None, SetState.ABORTED.value) for s in loser_states),
                "no_leftovers": all(d.returncode == 0 for d in deletes) and left == [],
            }
        )
        notes.append(
            f"round {attempt + 1}: {'+'.join(winners) or 'no one'} won, presented to {presented_to} on {loops}"
            + (f"; left: {left}" if left else "")
        )
    single = all(r["one_winner"] for r in rounds)
    check(
        "two proxies race to import one set",
        "two `snapport import` processes (two homes and host names) released at the same instant, 3 rounds",
        {name: all(r[name] for r in rounds) for name in rounds[0]},
        note="; ".join(notes) + f"; the loser: {failure(results[losers[0]]) if losers else '-'}",
        process="cli",
        outcome="one import, one IMPORT_REFUSED" if single else "two imports of one snapshot",
    )


# -- the two-host lab ----------------------------------------------------------------------------------------------


def in_namespace(host: LabHost, code: str, *args: str) -> str:
    """Run a little Python on a lab host (its mount and network namespaces); its stdout."""
    return host.run([sys.executable, "-c", code, *args], timeout=60).stdout


FROZEN = (
    "import sys; from pathlib import Path; from snapport.osal import ioctl; print(ioctl.is_frozen(Path(sys.argv[1])))"
)


def frozen_on_one(fl: FaultLab) -> bool:
    return in_namespace(fl.lab.one, FROZEN, str(fl.lab.data_mount)).strip() != "False"


def doctor_findings(fl: FaultLab) -> list[str]:
    """What `snapport doctor --json` finds on each host (it exits non-zero when it finds something)."""
    found = []
    for host in (fl.lab.one, fl.lab.two):
        done = host.run([sys.executable, "-m", "snapport", "doctor", "--json"], timeout=120, check=False)
        try:
            report = json.loads(done.stdout)
        except ValueError:
            found.append(f"{host.name}: doctor failed: {done.stderr.strip()[-200:]}")
            continue
        found += [f"{host.name}: {json.dumps(f, sort_keys=True)}" for f in report.get("found", [])]
    return found


def lab_leftovers(fl: FaultLab) -> list[str]:
    """What the storage keeps of the sets (`FaultLab.storage_leftovers`), exposed copies, unreleased leases, sets
    mid-way, a frozen data volume, and whatever `snapport doctor` finds on either host."""
    lab = fl.lab
    found = fl.storage_leftovers()
    for host in (lab.one, lab.two):
        found += [f"mount {m.mount_point}" for m in host.mounts() if m.mount_point.startswith(str(host.run_dir))]
        catalog = fl.catalog(host.key)
        try:
            busy = catalog.list_sets({SetState.PREPARING, SetState.SNAPSHOTTING, SetState.IMPORTING, SetState.DELETING})
            found += [f"{host.name}: set {s.id} still {s.state.value}" for s in busy]
            found += [f"{host.name}: lease {x.id} unreleased" for x in catalog.leases() if x.released_at is None]
        finally:
            catalog.close()
    if frozen_on_one(fl):
        found.append(f"{lab.data_mount} frozen")
    return found + doctor_findings(fl)


def sets_of(fl: FaultLab, key: str) -> dict[uuid.UUID, str]:
    catalog = fl.catalog(key)
    try:
        return {s.id: s.state.value for s in catalog.list_sets()}
    finally:
        catalog.close()


def hook_script(directory: Path, name: str, body: str) -> Path:
    """A hook writer's script (root's, in a directory only root may write: the hook writer checks both)."""
    directory.mkdir(mode=0o755, exist_ok=True)
    script = directory / name
    script.write_text(f"#!/bin/sh\n{body}\nexit 0\n")
    script.chmod(0o755)
    return script


def app_commits(fl: FaultLab) -> int:
    """How far the sample application's commit log has grown (it commits without pause while it is not held)."""
    return fl.lab.commit_log.stat().st_size


def app_moves_on(fl: FaultLab) -> bool:
    start = app_commits(fl)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if app_commits(fl) > start:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def small_repo_fs(fault_lab: FaultLab, tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB ext4 mounted on the proxy only (its mount namespace), by exact loop device and mount point."""
    image = tmp_path / "repo-fs.img"
    with image.open("wb") as f:
        f.truncate(16 << 20)
    runner = SubprocessRunner()
    runner.run(["mkfs.ext4", "-q", "-F", str(image)], timeout=60)
    device = loop.attach(runner, image)
    mount_point = tmp_path / "repo-fs"
    mount_point.mkdir()
    two = fault_lab.lab.two
    try:
        two.run(["mount", "-t", "ext4", device, str(mount_point)], timeout=60)
        try:
            yield mount_point
        finally:
            two.run(["umount", str(mount_point)], timeout=60)
    finally:
        loop.detach(runner, device)


def test_repository_disk_fills_up_mid_backup(fault_lab: FaultLab, small_repo_fs: Path, tmp_path: Path) -> None:
    lab, two = fault_lab.lab, fault_lab.lab.two
    repo = small_repo_fs / "repo"
    first = fault_lab.offhost(repo)  # the repository holds one set before the disk fills up
    assert first.returncode == 0, first.stderr[-2000:]
    kept = json.loads(first.stdout)["set_id"]
    big = lab.data_mount / "big.bin"  # 24 MiB that zstd cannot shrink, on the data volume, in a hook's component
    write_big = "import os, sys; f = open(sys.argv[1], 'wb'); f.write(os.urandom(24 << 20)); f.flush(); os.fsync(f)"
    in_namespace(lab.one, write_big, str(big))
    script = hook_script(tmp_path / "hooks", "files.sh", ": nothing to quiesce")
    free_before = free_bytes(two, small_repo_fs)
    before = set(sets_of(fault_lab, "one"))
    try:
        done = fault_lab.offhost(repo, "--writer", f"hook:{script},paths={big}", "--lease", "30")
    finally:
        lab.one.run(["rm", "-f", str(big)], timeout=60)
    new = [s for s in sets_of(fault_lab, "one") if s not in before]
    set_id = new[0] if len(new) == 1 else None
    listing = in_namespace(two, "import os, sys; print(' '.join(sorted(os.listdir(sys.argv[1]))))", str(repo / "sets"))
    verified = two.run(
        [sys.executable, "-m", "snapport", "verify", "--repo", str(repo), "--set", kept, "--json"],
        timeout=120,
        check=False,
    )
    free_after = free_bytes(two, small_repo_fs)
    left = lab_leftovers(fault_lab)
    failed = done.returncode != 0
    as_it_was = listing.split() == [kept] and verified.rc == 0 and free_after >= free_before - (256 << 10)
    check(
        "repository disk full mid-backup (ENOSPC)",
        "off-host backup of 24 MiB into a 16 MiB ext4 on the proxy holding one set",
        {
            "thawed": not frozen_on_one(fault_lab) and app_moves_on(fault_lab),
            "no_leftovers": left == [] and as_it_was,
            "backup_complete_once": set_id is not None and fault_lab.backup_completes(set_id) == 0,
            "catalog_matches": set_id is not None
            and sets_of(fault_lab, "one")[set_id] == "deleted"
            and sets_of(fault_lab, "two").get(set_id) in ("deleted", "aborted"),
            "clear_error": failed and "No space left on device" in done.stderr and str(repo) in done.stderr,
        },
        note=f"{failure(done)}; the repository keeps set {kept} only (verifies: {verified.rc == 0}), "
        f"{free_before - free_after} bytes less free" + (f"; left: {left}" if left else ""),
        process="agent two",
        outcome="failed, nothing published" if failed else "succeeded",
    )


def free_bytes(host: LabHost, path: Path) -> int:
    return int(
        in_namespace(host, "import os, sys; s = os.statvfs(sys.argv[1]); print(s.f_bavail * s.f_frsize)", str(path))
    )


def failure(done: subprocess.CompletedProcess[str]) -> str:
    """`CODE: message` of a failed `--json` command, else its last line of stderr."""
    lines = done.stderr.strip().splitlines()
    try:
        error = json.loads(lines[-1])
        return f"{error['error']}: {error['message']}"
    except (ValueError, LookupError, TypeError):
        return lines[-1] if lines else f"exit {done.returncode}"


@pytest.mark.parametrize(
    ("event", "bound"),
    [("freeze", ("--freeze-timeout", "3")), ("prepare-snapshot", ("--event-timeout", "5"))],
    ids=["freeze", "prepare"],
)
def test_a_writer_hangs(fault_lab: FaultLab, tmp_path: Path, event: str, bound: tuple[str, ...]) -> None:
    script = hook_script(tmp_path / "hooks", f"hang-{event}.sh", f'[ "$1" = {event} ] && exec sleep 3600')
    before_sets, before_jobs = set(sets_of(fault_lab, "one")), {j.id for j in fault_lab.proxy_jobs()}
    done = fault_lab.offhost(tmp_path / "repo", "--writer", f"hook:{script}", *bound)
    new = [s for s in sets_of(fault_lab, "one") if s not in before_sets]
    set_id = new[0] if len(new) == 1 else None
    handed_over = any(j.id not in before_jobs for j in fault_lab.proxy_jobs())
    left = lab_leftovers(fault_lab)
    failed = done.returncode != 0
    check(
        "a writer hangs",
        f"a hook script sleeps in {event} (off-host flow)",
        {
            "freeze_bounded": failed and "FREEZE_TIMEOUT" in done.stderr,
            "thawed": not frozen_on_one(fault_lab) and app_moves_on(fault_lab),
            "no_leftovers": left == [] and not handed_over,
            "backup_complete_once": set_id is not None and fault_lab.backup_completes(set_id) == 0,
            "catalog_matches": set_id is not None and sets_of(fault_lab, "one")[set_id] == "aborted",
            "clear_error": failed and str(script) in done.stderr and event in done.stderr,
        },
        note=failure(done) + (f"; left: {left}" if left else ""),
        process="agent one",
        outcome="aborted before the handover" if failed else "succeeded",
    )


@needs_tool("faketime")
@pytest.mark.parametrize("offset", ["+1h", "-1h"], ids=["ahead", "behind"])
def test_proxy_clock_an_hour_off(fault_lab: FaultLab, tmp_path: Path, offset: str) -> None:
    assert FAKETIME_LIB.exists(), f"{FAKETIME_LIB} (apt package faketime) is missing"
    fault_lab.restart_agent("two", {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": offset})
    try:
        done = fault_lab.offhost(tmp_path / "repo", "--lease", "8")
    finally:
        fault_lab.restart_agent("two")
    ok = done.returncode == 0
    set_id = uuid.UUID(json.loads(done.stdout)["set_id"]) if ok else None
    catalog = fault_lab.catalog("two")
    try:  # (not "the newest job": the proxy dated its jobs by its own clock)
        job = next((j for j in catalog.list_jobs(kind="proxy-backup") if str(set_id) in j.params_json), None)
    finally:
        catalog.close()
    # the proxy really ran an hour off: its own catalog dated its job by its clock
    skew_s = (job.created_at - datetime.now(UTC)).total_seconds() if job is not None else 0.0
    faked = abs(skew_s - (3600 if offset == "+1h" else -3600)) < 600
    catalog = fault_lab.catalog("one")
    try:
        leases = catalog.leases(set_id) if set_id else []
    finally:
        catalog.close()
    left = lab_leftovers(fault_lab)
    check(
        "proxy clock an hour off",
        f"proxy agent under faketime {offset}, 8 s lease",
        {
            "thawed": not frozen_on_one(fault_lab),
            "no_leftovers": left == [],
            "backup_complete_once": set_id is not None and fault_lab.backup_completes(set_id) == 1,
            "catalog_matches": set_id is not None
            and sets_of(fault_lab, "one")[set_id] == "deleted"
            and sets_of(fault_lab, "two")[set_id] == "deleted"
            and [x.duration_s for x in leases] == [8.0]
            and all(x.released_at is not None for x in leases)
            and all(abs((x.renewed_at - x.granted_at).total_seconds()) < 600 for x in leases),  # systemOne's clock
            "clock_really_off": faked,
        },
        note=f"proxy's clock {skew_s:+.0f} s; "
        + (f"set {set_id} backed up" if ok else failure(done))
        + (f"; left: {left}" if left else ""),
        process="agent two",
        outcome="succeeded" if ok else "failed",
    )


@dataclass(frozen=True)
class FrozenHang:
    """A hang in agent one while its volume is frozen: where, in which lab, and how the case is written down."""

    point: str  # hung with SNAPPORT_FAULT=POINT:hang
    lab: str  # the fixture
    fault: str
    process: str
    ends_itself: bool  # the coordinator gives up on the hung step (else only a restart of the agent ends it)
    errors: tuple[str, ...]  # what the command's error may name

    @property
    def action(self) -> str:
        return f"{self.what}, the volume frozen (SNAPPORT_FAULT={self.point}:hang)"

    @property
    def what(self) -> str:
        return "every writer hangs at thaw in agent one" if self.point == "writer.thaw" else "its commit hangs"


CEPH_HANG_ERRORS = ("AGENT_UNREACHABLE", "JOB_INTERRUPTED")  # its agent went away, or the job was interrupted
FROZEN_HANGS = [
    FrozenHang("writer.thaw", "fault_lab", "a writer hangs", "agent one", True, ("thaw",)),
    FrozenHang("provider.commit", "ceph_fault_lab", "the provider hangs", "agent one (ceph)", False, CEPH_HANG_ERRORS),
]


@pytest.mark.parametrize("hang", FROZEN_HANGS, ids=[h.point for h in FROZEN_HANGS])
def test_agent_one_hangs_while_the_volume_is_frozen(
    request: pytest.FixtureRequest, tmp_path: Path, hang: FrozenHang
) -> None:
    """Agent one hangs with its volume frozen: every writer at thaw (the coordinator then waits on the hung thaw
    until its event bound), or the Ceph provider's commit (nothing ends it but a restart of the agent, whose
    recovery rolls the set back). The freeze guard and the sqlite watchdog let go at the freeze bound either way."""
    fault_lab: FaultLab = request.getfixturevalue(hang.lab)
    fault_log = tmp_path / "fault.log"
    fault_lab.restart_agent("one", {"SNAPPORT_FAULT": f"{hang.point}:hang", "SNAPPORT_FAULT_LOG": str(fault_log)})
    before = set(sets_of(fault_lab, "one"))
    backup = subprocess.Popen(
        fault_lab.offhost_argv(tmp_path / "repo", "--freeze-timeout", "3", "--event-timeout", "8"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    restarted = False
    try:
        deadline = time.monotonic() + 60
        while f"{hang.point} hang" not in (fault_log.read_text() if fault_log.exists() else ""):
            assert backup.poll() is None and time.monotonic() < deadline, f"the session never reached {hang.point}"
            time.sleep(0.1)
        write = "import os, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT); os.write(fd, b'x'); os.fsync(fd)"
        try:  # blocks while the volume is frozen
            probe = fault_lab.lab.one.run(
                [sys.executable, "-c", write, str(fault_lab.lab.data_mount / ".thaw-probe")], timeout=30, check=False
            )
            thawed_in_time = probe.rc == 0 and backup.poll() is None  # the coordinator still waits
        except SnapportError:  # the probe's timeout: still frozen
            thawed_in_time = False
        app_released = app_moves_on(fault_lab)
        if not hang.ends_itself:
            fault_lab.restart_agent("one")  # its hung thread goes with it; the new agent's recovery rolls back
            restarted = True
        out, err = backup.communicate(timeout=150)
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()
        if not restarted:
            fault_lab.restart_agent("one")  # its hung threads go with it
    fault_lab.lab.one.run(["rm", "-f", str(fault_lab.lab.data_mount / ".thaw-probe")], timeout=60)
    done = subprocess.CompletedProcess(backup.args, backup.returncode, out, err)
    new = [s for s in sets_of(fault_lab, "one") if s not in before]
    set_id = new[0] if len(new) == 1 else None
    left = lab_leftovers(fault_lab)
    failed = done.returncode != 0
    check(
        hang.fault,
        hang.action,
        {
            "freeze_bounded": thawed_in_time,
            "thawed": app_released and not frozen_on_one(fault_lab),
            "no_leftovers": left == [],
            "backup_complete_once": set_id is not None and fault_lab.backup_completes(set_id) == 0,
            "catalog_matches": set_id is not None and sets_of(fault_lab, "one")[set_id] == "aborted",
            "clear_error": failed and any(e in done.stderr for e in hang.errors),
        },
        note=f"volume writable while the coordinator still waited: {thawed_in_time}; {failure(done)}"
        + (f"; left: {left}" if left else ""),
        process=hang.process,
        outcome="aborted, never handed over" if failed else "succeeded",
    )


# -- a lab on a Ceph cluster -----------------------------------------------------------------------------------------


def test_the_osd_stops_while_the_proxy_backs_up(ceph_fault_lab: CephFaultLab, tmp_path: Path) -> None:
    """The cluster's one OSD is stopped (SIGSTOP) once the proxy reads the exposed clone: the reads block, the
    backup's progress stands still, the proxy stops it at the stall bound (ENGINE_STALLED) and cleans up as soon as
    the OSD answers again; systemOne never fires BackupComplete, and `doctor --repair` leaves nothing."""
    fl = ceph_fault_lab
    bulk = fl.lab.data_mount / "bulk.bin"  # enough to read that the backup is still reading when the OSD stops
    fl.lab.one.run(["dd", "if=/dev/urandom", f"of={bulk}", "bs=1M", "count=192", "conv=fsync"], timeout=120)
    before = set(sets_of(fl, "one"))
    argv = fl.offhost_argv(tmp_path / "repo", "--lease", "10", "--stall-timeout", f"{STALL_S:g}")
    backup = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    osd = fl.osd_pid()
    stopped = resumed = 0.0
    try:
        fl.wait_proxy_phase("backup")
        os.kill(osd, signal.SIGSTOP)
        stopped = time.monotonic()
        deadline = stopped + STALL_S + 60
        while (job := fl.proxy_jobs([JobState.RUNNING])) and job[0].progress.phase == "backup":
            assert time.monotonic() < deadline, f"the proxy's backup never gave up: {job[0].progress}"
            time.sleep(0.2)
        gave_up_s = time.monotonic() - stopped
    finally:
        os.kill(osd, signal.SIGCONT)
        resumed = time.monotonic()
    try:
        out, err = backup.communicate(timeout=180)
    finally:
        if backup.poll() is None:
            backup.kill()
            backup.wait()
    done = subprocess.CompletedProcess(backup.args, backup.returncode, out, err)
    fl.lab.one.run(["rm", "-f", str(bulk)], timeout=60)
    new = [s for s in sets_of(fl, "one") if s not in before]
    set_id = new[0] if len(new) == 1 else None
    repaired = doctor_repairs(fl)
    left = lab_leftovers(fl)
    check(
        "the storage stops answering",
        "the Ceph OSD is stopped (SIGSTOP) while the proxy reads the clone, resumed once the proxy gave up",
        {
            "thawed": not frozen_on_one(fl),
            "no_leftovers": left == [],
            "backup_complete_once": set_id is not None and fl.backup_completes(set_id) == 0,
            "catalog_matches": set_id is not None and sets_of(fl, "one")[set_id] == "deleted",
            "clear_error": done.returncode != 0 and "ENGINE_STALLED" in done.stderr,
        },
        note=f"the proxy gave up {gave_up_s:.0f} s after the OSD stopped (stall bound {STALL_S:g} s); {failure(done)}"
        + (f"; doctor repaired: {repaired}" if repaired else "")
        + (f"; left: {left}" if left else ""),
        process="agent two (ceph)",
        outcome="failed, cleaned up" if done.returncode != 0 else "succeeded",
    )
    assert resumed > stopped


def doctor_repairs(fl: FaultLab) -> list[str]:
    """`snapport doctor --repair --json` on each host: what it repaired."""
    repaired = []
    for host in (fl.lab.one, fl.lab.two):
        done = host.run([sys.executable, "-m", "snapport", "doctor", "--repair", "--json"], timeout=180, check=False)
        report = json.loads(done.stdout)
        repaired += [f"{host.name}: {r['kind']} {r['action']}" for r in report.get("repaired", [])]
    return repaired
