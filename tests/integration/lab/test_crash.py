"""`lab up` killed half-way (SIGKILL at a step boundary, SNAPPORT_FAULT=lab.<step>:kill) or failing: `lab down`
removes exactly what was made; a step that cannot be undone is named, the rest still goes."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from snapport.lab import Lab, ceph, network
from snapport.lab.state import LoopRecord, load
from snapport.osal import loop
from snapport.osal.runner import SubprocessRunner
from tests.support.lab import (
    SMALL,
    leftovers,
    needs_lab,
    new_suffix,
    ok_json,
    recorded_processes,
    snapport,
)

pytestmark = [*needs_lab(), pytest.mark.slow]


def up_killed_at(directory: Path, suffix: str, step: str) -> None:
    done = snapport(
        "lab", "up", "--dir", str(directory), "--suffix", suffix, *SMALL, env={"SNAPPORT_FAULT": f"lab.{step}:kill"}
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


@pytest.mark.parametrize("step", ["veth", "array", "data-volume", "sample-app"])
def test_down_after_up_was_killed(tmp_path: Path, step: str) -> None:
    directory, suffix = tmp_path / "lab", new_suffix()
    up_killed_at(directory, suffix, step)
    state = load(directory)
    assert state.status == "building"
    processes = recorded_processes(directory)
    made = leftovers(directory, suffix, processes)
    assert f"netns snapport-one-{suffix}" in made  # something is there to remove
    if step in ("array", "data-volume", "sample-app"):
        image = next(r for r in state.records if isinstance(r, LoopRecord)).image
        assert loop.devices_for(SubprocessRunner(), Path(image))
    if step in ("data-volume", "sample-app"):
        assert Lab.open(directory).one.mount_at("/srv/data") is not None
    # A killed `up` leaves the lab's resources; a new `up` in the same directory refuses rather than guess.
    assert snapport("lab", "up", "--dir", str(directory), "--suffix", suffix, *SMALL).returncode == 4

    # Bystanders that look like the lab's: a namespace with a longer name, a loop device beside the lab's dir.
    runner = SubprocessRunner()
    bystander_ns, bystander_image = f"snapport-one-{suffix}b", tmp_path / "bystander.img"
    bystander_image.write_bytes(b"\0" * (1 << 20))
    network.add_netns(runner, bystander_ns)
    bystander_loop = loop.attach(runner, bystander_image)
    try:
        report = ok_json("lab", "down", "--dir", str(directory))
        assert report["failed"] == []
        assert leftovers(directory, suffix, processes) == []
        assert ok_json("lab", "down", "--dir", str(directory))["removed"] == []
        assert network.netns_exists(bystander_ns)
        assert loop.backing_file(bystander_loop) == str(bystander_image)
    finally:
        loop.detach(runner, bystander_loop)
        network.delete_netns(runner, bystander_ns)


def test_a_failing_up_removes_what_it_made(tmp_path: Path) -> None:
    directory, suffix = tmp_path / "lab", new_suffix()
    done = snapport(
        "lab", "up", "--dir", str(directory), "--suffix", suffix, *SMALL, env={"SNAPPORT_FAULT": "lab.holders:raise"}
    )
    assert done.returncode == 99, done.stderr  # the injected fault's own exit code, after the rollback
    assert "INJECTED_FAULT" in done.stderr
    assert leftovers(directory, suffix, []) == []
    assert not directory.exists()


def test_down_names_what_it_cannot_remove_and_removes_the_rest(tmp_path: Path) -> None:
    directory, suffix = tmp_path / "lab", new_suffix()
    up_killed_at(directory, suffix, "holders")
    lab = Lab.open(directory)
    # A process started on systemTwo by hand is not the lab's to kill: down must leave it and say so.
    stray = subprocess.Popen(lab.two.command(["sleep", "60"]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_in_netns(lab.two.netns, stray.pid)
        processes = recorded_processes(directory)
        done = snapport("lab", "down", "--dir", str(directory))
        assert done.returncode == 19
        assert f"processes still run in snapport-two-{suffix}" in done.stderr
        assert str(stray.pid) in done.stderr
        assert stray.poll() is None  # untouched
        left = leftovers(directory, suffix, processes)
        assert left[:1] == [f"netns snapport-two-{suffix}"]  # everything else is gone
        assert all(not x.startswith(("mount", "loop", "process")) for x in left), left
        assert [type(r).__name__ for r in load(directory).records] == ["NetnsRecord"]  # only what failed remains
    finally:
        stray.kill()
        stray.wait()
    assert ok_json("lab", "down", "--dir", str(directory))["removed"] == [f"network namespace snapport-two-{suffix}"]
    assert leftovers(directory, suffix, []) == []


def _wait_in_netns(netns: str, pid: int) -> None:
    deadline = time.monotonic() + 10
    while pid not in network.netns_pids(SubprocessRunner(), netns):
        assert time.monotonic() < deadline, "the stray process never entered the namespace"
        time.sleep(0.02)


def test_up_clears_an_old_lab_whose_resources_are_gone(tmp_path: Path) -> None:
    directory, suffix = tmp_path / "lab", new_suffix()
    up_killed_at(directory, suffix, "homes")
    old = load(directory)
    # What a reboot does: namespaces, mounts and loop devices vanish; the files stay.
    runner = SubprocessRunner()
    array_fs = directory / "array-fs"
    runner.run(["umount", str(array_fs)])
    for record in old.records:
        if isinstance(record, LoopRecord):
            for device in loop.devices_for(runner, Path(record.image)):
                loop.detach(runner, device)
    for name in (f"snapport-two-{suffix}", f"snapport-one-{suffix}"):
        network.delete_netns(runner, name)
    assert (directory / "homes").is_dir() and (directory / "array.img").exists()

    done = snapport("lab", "up", "--dir", str(directory), "--suffix", suffix, *SMALL, "--no-agents")
    assert done.returncode == 0, done.stderr
    assert "cleared the files of an old lab" in done.stdout
    processes = recorded_processes(directory)
    assert ok_json("lab", "down", "--dir", str(directory))["failed"] == []
    assert leftovers(directory, suffix, processes) == []


@pytest.mark.parametrize("step", ["ceph", "data-volume"])
def test_down_after_up_on_ceph_was_killed(tmp_path: Path, step: str) -> None:
    """Killed once its Ceph cluster is up (or once the RBD data volume is presented and mounted): `lab down` stops
    exactly the cluster's recorded daemons and leaves no rbd-fuse mount, loop device or namespace."""
    reason = ceph.unavailable()
    if reason is not None:
        pytest.skip(reason)
    directory, suffix = tmp_path / "lab", new_suffix()
    done = snapport(
        "lab", "up", "--dir", str(directory), "--suffix", suffix, *SMALL, "--storage", "ceph",
        env={"SNAPPORT_FAULT": f"lab.{step}:kill"}, timeout=300,
    )  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    cluster = json.loads((directory / "ceph" / ceph.STATE_FILE).read_text())
    daemons = [(p["role"], int(p["pid"])) for p in cluster["processes"]]
    assert [role for role, _ in daemons] == ["ceph-mon", "ceph-mgr", "ceph-osd"]
    assert all(Path(f"/proc/{pid}").exists() for _, pid in daemons)
    processes = recorded_processes(directory)
    if step == "data-volume":
        assert Lab.open(directory).one.mount_at("/srv/data") is not None
    report = ok_json("lab", "down", "--dir", str(directory))
    assert report["failed"] == []
    assert leftovers(directory, suffix, processes) == []
    still = [f"{role} pid {pid}" for role, pid in daemons if _is_running(pid, role)]
    assert still == []
    assert not (directory / "ceph").exists()


def _is_running(pid: int, name: str) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() == name and "Z" not in _state(pid)
    except OSError:
        return False


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
