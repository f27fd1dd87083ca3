"""`snapport doctor` on a host with planted leftovers: it finds each and changes nothing; `--repair` resolves
each; a second run finds nothing; what is not snapport's (a loop device and a mount outside the array and the run
directory, an admin's fsfreeze on a volume snapport does not know) is left alone. Real processes, loop devices,
XFS and ext4."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from snapport.coordinator.session import BackupSession, SessionOptions
from snapport.model import SetState
from snapport.osal import ioctl, loop
from snapport.osal import mount as mnt
from tests.conftest import Scratch
from tests.support.array_world import HOST_ONE, ArrayWorld
from tests.support.doctor import by_kind_and_object, doctor

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]


def orphan_snapshot_lun(world: ArrayWorld, volume: Path) -> tuple[uuid.UUID, str]:
    """A real set whose catalog record says deleted while its snapshot LUN stayed (a crash mid-delete)."""
    host = world.host(HOST_ONE)
    session = BackupSession(host, SessionOptions())
    session.add_volume(str(volume))
    created = session.create()
    set_id = created.snapshot_set.id
    host.catalog.transition(set_id, SetState.DELETING)
    host.catalog.transition(set_id, SetState.DELETED)
    (lun,) = [lun for lun in world.array.luns() if lun.snapshot_of_set == str(set_id)]
    return set_id, lun.id


@pytest.mark.slow
def test_doctor_finds_then_repairs_planted_leftovers_and_leaves_the_rest_alone(
    world: ArrayWorld, scratch: Scratch, tmp_path: Path
) -> None:
    data = world.volume("data")
    set_id, lun_id = orphan_snapshot_lun(world, data)
    array = world.array
    image = array.image(lun_id)
    # Stale loop devices of the array image: one left attached, one mounted under the run directory.
    stray = loop.attach(scratch.runner, image)
    exposed_dev = loop.attach(scratch.runner, image, read_only=True)
    stale_mount = tmp_path / "run-one" / str(set_id) / "data"
    stale_mount.mkdir(parents=True)
    mnt.mount(scratch.runner, exposed_dev, stale_mount, fs_type="xfs", options=("ro", "nouuid", "norecovery"))
    # An image no LUN describes (named as the array names them), and a file that is not the array's.
    orphan_image = array.path / "luns" / f"{uuid.uuid4().hex[:12]}.img"
    orphan_image.write_bytes(b"\0" * 4096)
    notes = array.path / "luns" / "notes.img"
    notes.write_text("an admin's file")
    # A snapport volume left frozen (as by a SIGKILLed freezer).
    scratch.runner.run(["fsfreeze", "-f", str(data)], timeout=30)
    # Not snapport's: an ext4 on its own loop device, mounted outside the run directory, frozen by its admin.
    theirs = scratch.filesystem("ext4")
    scratch.runner.run(["fsfreeze", "-f", str(theirs.mount_point)], timeout=30)

    rc, report, stderr = doctor(world)
    assert rc == 30, stderr
    assert "DOCTOR_FOUND" in stderr
    found = by_kind_and_object(report["found"])
    assert report["repaired"] == []
    assert ("snapshot-lun", lun_id) in found
    assert ("loop-device", stray) in found and ("loop-device", exposed_dev) in found
    assert ("mount", str(stale_mount)) in found
    assert ("image", str(orphan_image)) in found
    assert ("frozen", str(data)) in found
    assert not [k for k in found if theirs.device in k[1] or str(theirs.mount_point) in k[1] or "notes" in k[1]]
    # ... and changed nothing.
    assert array.find(lun_id) is not None and orphan_image.exists()
    assert loop.backing_file(stray) == str(image) and loop.backing_file(exposed_dev) == str(image)
    assert mnt.mount_at(stale_mount) is not None
    assert ioctl.is_frozen(data)

    rc, report, stderr = doctor(world, "--repair")
    assert not report["left"], json.dumps(report["left"])
    assert rc == 0, (stderr, report)
    repaired = by_kind_and_object(report["repaired"])
    for key in found:
        assert key in repaired, (key, report)
    assert report["left"] == []
    assert array.find(lun_id) is None and not image.exists() and not orphan_image.exists()
    assert loop.backing_file(stray) is None and loop.backing_file(exposed_dev) is None
    assert mnt.mount_at(stale_mount) is None and not stale_mount.parent.exists()
    assert not ioctl.is_frozen(data)
    (data / "writable").write_text("thawed")
    # What is not snapport's is as it was.
    assert notes.read_text() == "an admin's file"
    assert mnt.mount_at(theirs.mount_point) is not None and loop.backing_file(theirs.device) == str(theirs.image)
    assert ioctl.is_frozen(theirs.mount_point)
    ioctl.thaw(theirs.mount_point)
    assert world.leftovers(world.host(HOST_ONE)) == []

    rc, report, stderr = doctor(world)
    assert (rc, report["found"]) == (0, []), (stderr, report)
    rc, report, stderr = doctor(world, "--repair")  # idempotent
    assert (rc, report["found"], report["repaired"]) == (0, [], []), (stderr, report)
