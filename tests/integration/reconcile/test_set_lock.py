"""The per-set lock: `snapport doctor --repair` running while a real `snapport expose` has mounted a copy but not
yet recorded it leaves the mount alone and reports the set busy (it does not wait); once the expose has recorded
it, doctor finds nothing. The expose process is held between its mount and its catalog record by a `mount` on its
PATH that mounts for real, then waits for the test's word."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from snapport.coordinator import lifecycle
from snapport.errors import SetInProgress
from snapport.model import SetState
from snapport.osal import mount as mnt
from tests.support.array_world import HOST_ONE, ArrayWorld
from tests.support.doctor import doctor

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]
MOUNT = shutil.which("mount") or "/usr/bin/mount"


def _snapport(world: ArrayWorld, *args: str) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "snapport", *args, "--json"],
        capture_output=True,
        text=True,
        env=world.env(HOST_ONE),
        timeout=180,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, object] = json.loads(proc.stdout)
    return result


def _pausing_mount(directory: Path) -> Path:
    """A `mount` that mounts, says so (`mounted`), then waits until `go` exists (at most two minutes)."""
    directory.mkdir()
    wrapper = directory / "mount"
    wrapper.write_text(
        "#!/bin/sh\n"
        f'{MOUNT} "$@" || exit $?\n'
        f"touch {directory}/mounted\n"
        "i=0\n"
        f'while [ ! -e {directory}/go ] && [ "$i" -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done\n'
    )
    wrapper.chmod(0o755)
    return directory


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.mark.slow
def test_doctor_leaves_a_live_expose_alone_and_reports_its_set_busy(world: ArrayWorld, tmp_path: Path) -> None:
    volume = world.volume("data")
    (volume / "file").write_text("content")
    set_id = uuid.UUID(str(_snapport(world, "create", str(volume), "--context", "app-backup")["set_id"]))
    host = world.host()
    pause = _pausing_mount(tmp_path / "pause")
    env = world.env(HOST_ONE) | {"PATH": f"{pause}:{os.environ['PATH']}"}
    exposing = subprocess.Popen(
        [sys.executable, "-m", "snapport", "expose", str(set_id), "--json"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(pause / "mounted", exposing)
        target = host.run_dir / str(set_id) / lifecycle.volume_dir_name(str(volume))
        assert mnt.mount_at(target) is not None  # mounted, and not recorded yet
        assert host.catalog.get_set(set_id).state is SetState.CREATED

        rc, report, stderr = doctor(world, "--repair")
        assert rc == 0, stderr  # busy is not a difference left behind
        busy = [e for e in report["busy"] if e["object"] == str(target)]
        assert busy and f"set {set_id} is busy" in busy[0]["detail"], report
        assert report["repaired"] == [], report
        assert mnt.mount_at(target) is not None  # without the lock, doctor would have unmounted it
        with (  # and no verb gets in either
            pytest.raises(SetInProgress, match=f"set {set_id} is busy"),
            lifecycle.set_lock(host, set_id, timeout_s=0.2),
        ):
            pass
    finally:
        (pause / "go").touch()
        out, err = exposing.communicate(timeout=120)
    assert exposing.returncode == 0, err
    assert json.loads(out)
    assert host.catalog.get_set(set_id).state is SetState.EXPOSED

    rc, report, stderr = doctor(world, "--repair")
    assert (rc, report["found"], report["busy"]) == (0, [], []), (report, stderr)
    assert mnt.mount_at(target) is not None

    _snapport(world, "unexpose", str(set_id))
    _snapport(world, "delete", str(set_id))
    assert not lifecycle.set_lock_path(host, set_id).exists()  # a deleted set keeps no lock file
    assert world.leftovers(host) == []
