"""`snapport doctor` on btrfs: a snapshot subvolume whose set the catalog has deleted (a crash mid-delete) is found
by `doctor --json` and deleted by `--repair`; another host's snapshot in the same filesystem, and a btrfs no set
names, are left alone. Real `snapport` processes on real btrfs filesystems."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from snapport.model import SetState
from snapport.providers.btrfs import SNAPSHOT_DIR, owner_file
from tests.conftest import Scratch, needs_tool
from tests.support.array_world import HOST_ONE, HOST_TWO, ArrayWorld
from tests.support.doctor import by_kind_and_object, doctor

pytestmark = [pytest.mark.root, pytest.mark.timeout(300), needs_tool("mkfs.btrfs", "btrfs")]


def snapport(world: ArrayWorld, host: str, *args: str) -> dict[str, Any]:
    proc = world.cli(host, *args)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def snapshot_path(volume: Path, world: ArrayWorld, host: str, set_id: uuid.UUID) -> Path:
    (snapshot,) = world.host(host).catalog.get_set(set_id).snapshots
    path = Path(snapshot.locator.property("path") or "")
    assert path.parent == volume / SNAPSHOT_DIR and path.is_dir()
    return path


@pytest.mark.slow
def test_doctor_finds_and_repairs_an_orphaned_btrfs_snapshot_and_leaves_another_hosts(
    world: ArrayWorld, scratch: Scratch
) -> None:
    volume = scratch.filesystem("btrfs").mount_point
    (volume / "file").write_text("content")
    set_id = uuid.UUID(snapport(world, HOST_ONE, "create", str(volume), "--context", "app-backup")["set_id"])
    orphan = snapshot_path(volume, world, HOST_ONE, set_id)
    host = world.host(HOST_ONE)
    host.catalog.transition(set_id, SetState.DELETING)  # the deleting process died after its record...
    host.catalog.transition(set_id, SetState.DELETED)  # ... or the snapshot's removal was lost: it stayed
    # Another host (another home on this machine) keeps a live snapshot of the same filesystem.
    theirs_id = uuid.UUID(snapport(world, HOST_TWO, "create", str(volume), "--context", "app-backup")["set_id"])
    theirs = snapshot_path(volume, world, HOST_TWO, theirs_id)
    # A btrfs that no set of this host's names, with a subvolume named as snapport names its snapshots.
    unnamed_fs = scratch.filesystem("btrfs").mount_point
    (unnamed_fs / SNAPSHOT_DIR).mkdir()
    unnamed = unnamed_fs / SNAPSHOT_DIR / str(uuid.uuid4())
    scratch.runner.run(["btrfs", "subvolume", "snapshot", "-r", str(unnamed_fs), str(unnamed)])

    rc, report, stderr = doctor(world)
    assert rc == 30, stderr
    found = by_kind_and_object(report["found"])
    assert list(found) == [("snapshot-subvolume", str(orphan))], report
    assert f"set {set_id}" in found["snapshot-subvolume", str(orphan)]["detail"]
    assert orphan.is_dir() and report["repaired"] == []  # found, and changed nothing

    rc, report, stderr = doctor(world, "--repair")
    assert (rc, report["left"]) == (0, []), (stderr, report)
    assert list(by_kind_and_object(report["repaired"])) == [("snapshot-subvolume", str(orphan))]
    assert not orphan.exists() and not owner_file(orphan).exists()
    assert (theirs / "file").read_text() == "content" and unnamed.is_dir()  # not this host's: as they were

    rc, report, stderr = doctor(world)
    assert (rc, report["found"]) == (0, []), (stderr, report)
    rc, report, stderr = doctor(world, "--repair")  # idempotent
    assert (rc, report["found"], report["repaired"]) == (0, [], []), (stderr, report)
    snapport(world, HOST_TWO, "delete", str(theirs_id))
    assert not theirs.exists()
    scratch.runner.run(["btrfs", "subvolume", "delete", str(unnamed)])
