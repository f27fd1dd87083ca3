"""The off-host backup with the volumes on RBD images of a real Ceph cluster (`lab up --storage ceph`): a set of
three images cut under a write load on all of them, backed up by systemTwo through a clone of each snapshot."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapport.engines import ArchiveEngine
from snapport.lab import ceph
from tests.support.lab_under_test import E2E_MARKS, LabUnderTest, result_of, running_lab

pytestmark = [*E2E_MARKS, pytest.mark.timeout(900)]
VOLUMES = ("/srv/data", "/srv/b", "/srv/c")

# Writes the same increasing counter to one file on each volume, in order, each write durable before the next:
# any cut taken while every volume is frozen holds a >= b >= c >= a - 1.
CUT_WRITER = textwrap.dedent(
    """
    import os, sys
    fds = [os.open(p, os.O_WRONLY | os.O_CREAT) for p in sys.argv[1:]]
    print("ready", flush=True)
    i = 0
    while True:
        i += 1
        for fd in fds:
            os.pwrite(fd, str(i).rjust(12).encode(), 0)
            os.fsync(fd)
    """
)


class CephLab(LabUnderTest):
    """A lab whose storage is the Ceph cluster it started in systemOne's network namespace."""

    @property
    def site(self) -> ceph.CephSite:
        return ceph.site(self.directory / "ceph")

    def images(self) -> list[str]:
        return sorted(ceph.admin(self.site, "rbd", "ls", self.site.pool).split())

    def snapshots(self, image: str) -> list[str]:
        out = ceph.admin(self.site, "rbd", "snap", "ls", "--all", "--format", "json", f"{self.site.pool}/{image}")
        return sorted(s["name"] for s in json.loads(out))

    def add_volume(self, name: str, mount_point: str) -> None:
        """An image presented to systemOne (`snapport rbd present`), XFS on it, mounted at `mount_point`."""
        ceph.create_image(self.site, name, 320 << 20)
        one = self.lab.one
        presented = one.run([sys.executable, "-m", "snapport", "rbd", "present", f"{self.site.pool}/{name}", "--json"])
        device = json.loads(presented.stdout)["device"]
        one.run(["mkfs.xfs", "-q", "-f", device], timeout=120)
        one.run(["mkdir", "-p", mount_point])
        one.run(["mount", "-t", "xfs", device, mount_point])

    def remove_volume(self, name: str, mount_point: str) -> None:
        one = self.lab.one
        one.run(["umount", mount_point], check=False)
        one.run([sys.executable, "-m", "snapport", "rbd", "unpresent", f"{self.site.pool}/{name}"], check=False)
        ceph.admin(self.site, "rbd", "rm", f"{self.site.pool}/{name}")


@pytest.fixture(scope="module")
def ceph_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephLab]:
    reason = ceph.unavailable()
    if reason is not None:
        pytest.skip(reason)
    yield from running_lab(tmp_path_factory, "e2e-ceph", CephLab, "--storage", "ceph")


def test_a_three_image_set_under_load_is_one_cut_backed_up_through_clones(ceph_lab: CephLab, tmp_path: Path) -> None:
    lab = ceph_lab
    extra = {"b": "/srv/b", "c": "/srv/c"}
    for name, point in extra.items():
        lab.add_volume(name, point)
    writer = subprocess.Popen(
        lab.lab.one.command([sys.executable, "-c", CUT_WRITER, *(f"{v}/counter" for v in VOLUMES)]),
        stdout=subprocess.PIPE,
        text=True,
    )
    repo = tmp_path / "repo"
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        volumes = [a for v in VOLUMES[1:] for a in ("--volume", v)]
        result = result_of(lab.offhost(repo, *volumes, timeout=300))
    finally:
        writer.kill()
        writer.wait()
    try:
        set_id = uuid.UUID(result["set_id"])
        assert lab.backup_completes(set_id) == 1  # the sqlite writer of /srv/data heard BackupComplete once
        assert lab.set_state("one", set_id) == "deleted" and lab.set_state("two", set_id) == "deleted"
        assert lab.exposed_on_two() == []
        engine = ArchiveEngine(repo)
        assert engine.verify(set_id).intact
        restored = tmp_path / "restored"
        engine.restore(set_id, restored)
        a, b, c = (int((restored / v.lstrip("/") / "counter").read_text()) for v in VOLUMES)
        assert a >= b >= c >= a - 1 and a > 0, (a, b, c)  # one cut across the three images
        # Nothing of the set is left in the cluster: no clone, no snapshot, no record.
        assert lab.images() == ["b", "c", "data"]
        for image in ("b", "c", "data"):
            assert lab.snapshots(image) == []
    finally:
        for name, point in extra.items():
            lab.remove_volume(name, point)
