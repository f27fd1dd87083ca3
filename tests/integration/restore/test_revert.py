"""`snapport revert` on real volumes: an XFS LUN of the file-backed array rolls back to a persistent snapshot;
a mounted volume and a btrfs volume are refused, and nothing changes."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from snapport.errors import BadState, ProviderVeto, UnsupportedOperation
from snapport.osal import mount as mnt
from tests.support.array_world import HOST_ONE, ArrayWorld

pytestmark = [pytest.mark.root, pytest.mark.timeout(300)]


def snapport(world: ArrayWorld, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snapport", *args, "--json"],
        capture_output=True,
        text=True,
        env=world.env(HOST_ONE),
        timeout=180,
        check=False,
    )


def created(world: ArrayWorld, volume: Path, context: str = "app-rollback") -> str:
    done = snapport(world, "create", str(volume), "--context", context)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["set_id"])


def test_a_persistent_set_reverts_its_unmounted_volume_and_a_mounted_one_is_refused(world: ArrayWorld) -> None:
    volume = world.volume("data")
    (volume / "payload").write_text("the snapshot's")
    (volume / "kept").write_bytes(b"x" * 100_000)
    set_id = created(world, volume)
    (volume / "payload").write_text("changed after the snapshot")
    (volume / "kept").unlink()
    (volume / "new").write_text("made after the snapshot")

    refused = snapport(world, "revert", set_id, "--yes")
    assert refused.returncode == ProviderVeto.exit_code, refused.stderr
    assert "is mounted at" in refused.stderr and "unmount it" in refused.stderr
    assert (volume / "payload").read_text() == "changed after the snapshot"  # nothing changed
    unconfirmed = snapport(world, "revert", set_id)
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr

    info = mnt.mount_at(str(volume))
    assert info is not None
    device = info.source
    mnt.unmount(world.scratch.runner, volume)
    world.scratch.forget_mount(volume)
    done = snapport(world, "revert", set_id, "--yes", "--volume", str(volume))
    assert done.returncode == 0, done.stderr
    [reverted] = json.loads(done.stdout)["reverted"]
    assert reverted["volume"] == str(volume) and reverted["device"] == device
    world.scratch.mount(device, volume, fs_type="xfs")
    assert (volume / "payload").read_text() == "the snapshot's"
    assert (volume / "kept").stat().st_size == 100_000 and not (volume / "new").exists()

    host = world.host()
    kinds = [e.kind for e in host.catalog.events(uuid.UUID(set_id))]
    assert "revert-started" in kinds and "reverted" in kinds
    assert snapport(world, "delete", set_id).returncode == 0
    assert world.leftovers(host) == []


def test_revert_is_refused_for_btrfs_and_for_a_set_that_is_not_persistent(world: ArrayWorld) -> None:
    fs = world.scratch.filesystem("btrfs")
    (fs.mount_point / "payload").write_text("before")
    set_id = created(world, fs.mount_point)
    (fs.mount_point / "payload").write_text("after")
    refused = snapport(world, "revert", set_id, "--yes")
    assert refused.returncode == UnsupportedOperation.exit_code, refused.stderr
    assert "cannot revert" in refused.stderr and "restore its files instead" in refused.stderr
    assert (fs.mount_point / "payload").read_text() == "after"
    assert snapport(world, "delete", set_id).returncode == 0

    volume = world.volume("data")
    transient = created(world, volume, context="file-share-backup")
    refused = snapport(world, "revert", transient, "--yes")
    assert refused.returncode == BadState.exit_code and "not persistent" in refused.stderr
    assert snapport(world, "delete", transient).returncode == 0
    assert world.leftovers(world.host()) == []
