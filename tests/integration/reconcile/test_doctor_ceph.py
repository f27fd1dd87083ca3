"""`snapport doctor` on Ceph RBD, through the CLI, on a real cluster: an import whose set the importer's catalog
has deleted (a crash mid-delete) is found as its clone and removed by `--repair`, the maker's snapshot left to
its maker; an rbd-fuse mount with no loop device (a present cut short) is unmounted; a live set is left alone."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from snapport.lab.ceph import CephSite
from snapport.model import SetState
from snapport.osal import mount as mnt
from snapport.osal.runner import SubprocessRunner
from snapport.providers.base import ProviderHost
from snapport.providers.ceph_rbd import CephRbdProvider
from snapport.providers.ceph_rbd.presentation import FusePresenter
from snapport.providers.ceph_rbd.records import clone_of
from tests.conftest import Scratch
from tests.support.array_world import HOST_ONE, HOST_TWO, ArrayWorld
from tests.support.ceph import PROXY, Admin, client_home
from tests.support.doctor import by_kind_and_object

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(300)]


def snapport(world: ArrayWorld, host: str, *args: str, check: bool = True) -> tuple[int, dict[str, Any]]:
    proc = world.cli(host, *args)
    assert not check or proc.returncode == 0, proc.stderr
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}


def test_doctor_finds_and_repairs_rbd_leftovers_and_leaves_a_live_set(
    world: ArrayWorld, scratch: Scratch, ceph_site: CephSite, tmp_path: Path
) -> None:
    admin = Admin(ceph_site)
    name = f"doctor-{uuid.uuid4().hex[:8]}"
    client_home(tmp_path / f"home-{HOST_ONE}", ceph_site)
    client_home(tmp_path / f"home-{HOST_TWO}", ceph_site, PROXY)
    one = CephRbdProvider(ProviderHost(HOST_ONE, tmp_path / f"home-{HOST_ONE}", SubprocessRunner()))
    image = admin.create(name, 320 << 20)
    stray = admin.create(f"{name}-stray", 16 << 20)
    try:
        _, presented = snapport(world, HOST_ONE, "rbd", "present", str(image))
        device = presented["device"]
        scratch.mkfs("xfs", device)
        volume = scratch.mount(device, tmp_path / "volume", fs_type="xfs")
        (volume / "file").write_text("content")
        docs = tmp_path / "docs"
        _, made = snapport(world, HOST_ONE, "create", str(volume), "--transportable", "--out", str(docs))
        set_id = uuid.UUID(made["set_id"])
        _, live = snapport(world, HOST_ONE, "create", str(volume), "--context", "app-backup")
        snapport(world, HOST_TWO, "import", str(docs / "backup-components.xml"))
        clone = clone_of(image, set_id)
        assert clone.name in admin.images()
        two = world.host(HOST_TWO)
        two.catalog.transition(set_id, SetState.DELETING)  # the deleting process died after its record...
        two.catalog.transition(set_id, SetState.DELETED)  # ... its clone's removal lost
        presenter = one.presenter
        assert isinstance(presenter, FusePresenter)
        presenter.serve(stray)  # a present cut short: rbd-fuse serves it, no loop device on it
        point = presenter.mount_point(stray)

        rc, found = snapport(world, HOST_TWO, "doctor", check=False)
        assert rc == 30 and ("rbd-clone", str(clone)) in by_kind_and_object(found["found"])
        rc, found = snapport(world, HOST_ONE, "doctor", check=False)
        assert rc == 30 and ("rbd-fuse-mount", str(point)) in by_kind_and_object(found["found"])
        assert [f for f in found["found"] if f["kind"].startswith("rbd-snapshot")] == []  # the live sets' own

        _, repaired = snapport(world, HOST_TWO, "doctor", "--repair")
        assert ("rbd-clone", str(clone)) in by_kind_and_object(repaired["repaired"])
        assert clone.name not in admin.images()
        _, repaired = snapport(world, HOST_ONE, "doctor", "--repair")
        assert ("rbd-fuse-mount", str(point)) in by_kind_and_object(repaired["repaired"])
        assert mnt.mount_at(point) is None
        assert snapport(world, HOST_ONE, "doctor")[1]["found"] == []
        assert snapport(world, HOST_TWO, "doctor")[1]["found"] == []
        # The maker's snapshots are its own: both sets are still whole, and deleted by their verb.
        assert len(admin.snapshots(name)) == 2
        snapport(world, HOST_ONE, "complete", str(set_id), "--succeeded")
        snapport(world, HOST_ONE, "delete", str(live["set_id"]))
        assert admin.snapshots(name) == []
        mnt.unmount(scratch.runner, volume)
        scratch.forget_mount(volume)
        snapport(world, HOST_ONE, "rbd", "unpresent", str(image))
    finally:
        for leftover in [n for n in admin.images() if n.startswith(name)]:
            for provider_home in (HOST_ONE, HOST_TWO):
                subprocess.run(
                    [sys.executable, "-m", "snapport", "rbd", "unpresent", f"{image.pool}/{leftover}"],
                    env=world.env(provider_home),
                    capture_output=True,
                    check=False,
                )
        for leftover in sorted((n for n in admin.images() if n.startswith(name)), key=lambda n: n == name):
            admin.remove(leftover)
        admin.close()
