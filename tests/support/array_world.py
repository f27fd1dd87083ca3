"""A host with volumes on a file-backed array: the world the coordinator, engine, reconciliation, restore, database
and agent tests run in. `world` is registered by importing it into the conftest of each directory that needs it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from snapport.catalog import Catalog, catalog_url
from snapport.coordinator.host import Host
from snapport.model import SetState
from snapport.osal import ioctl, loop
from snapport.osal import mount as mnt
from snapport.providers.reflink_array import Array
from tests.conftest import Scratch

HOST_ONE, HOST_TWO = "one", "two"


@dataclass
class ArrayWorld:
    """An array on a scratch XFS filesystem, volumes on its LUNs presented to host `one`, and hosts' homes."""

    scratch: Scratch
    tmp: Path
    array: Array
    volumes: dict[str, Path] = field(default_factory=dict)  # mount point -> its LUN id
    luns: dict[Path, str] = field(default_factory=dict)
    _hosts: list[Host] = field(default_factory=list)

    def volume(self, name: str, fs_type: str = "xfs", size_mb: int = 400) -> Path:
        lun = self.array.create_lun(name, size_mb * 1024 * 1024)
        device = self.array.present(lun.id, HOST_ONE)
        self.scratch.defer(lambda: self.array.unpresent(lun.id, HOST_ONE), f"unpresent {lun.id}")
        self.scratch.mkfs(fs_type, device)
        mount_point = self.scratch.mount(device, self.tmp / "volumes" / name, fs_type=fs_type)
        self.luns[mount_point] = lun.id
        return mount_point

    def host(self, name: str = HOST_ONE) -> Host:
        home = self.tmp / f"home-{name}"
        host = Host(
            name=name, home=home, catalog=Catalog.open(catalog_url(home), host=name), run_dir=self.tmp / f"run-{name}"
        )
        self._hosts.append(host)
        return host

    def env(self, name: str = HOST_ONE) -> dict[str, str]:
        """The environment of a `snapport` process acting as host `name`."""
        return {
            **os.environ,
            "SNAPPORT_HOME": str(self.tmp / f"home-{name}"),
            "SNAPPORT_HOST": name,
            "SNAPPORT_RUN_DIR": str(self.tmp / f"run-{name}"),
        }

    def cli(self, name: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`snapport ARGS --json` run as host `name` (bounded; its exit code is the caller's to check)."""
        argv = [sys.executable, "-m", "snapport", *args, "--json"]
        return subprocess.run(argv, capture_output=True, text=True, env=self.env(name), timeout=180, check=False)

    def snapshot_luns(self) -> list[str]:
        """LUNs that are snapshots (anything but the original volumes' LUNs)."""
        return [lun.id for lun in self.array.luns() if lun.id not in self.luns.values()]

    def leftovers(self, *hosts: Host) -> list[str]:
        """Everything a failed or finished set may have leaked: snapshot LUNs and images, loop devices on them,
        mounts of them, frozen volumes, and sets the catalog still holds mid-way."""
        found = [f"snapshot LUN {lun}" for lun in self.snapshot_luns()]
        found += [f"orphan image {p}" for p in self.array.orphan_images()]
        originals = {str(self.array.image(lun)) for lun in self.luns.values()}
        found += [
            f"loop {d.device} on {d.backing_file}"
            for d in loop.attached(self.scratch.runner)
            if d.backing_file.startswith(str(self.array.path)) and d.backing_file not in originals
        ]
        found += [f"frozen {m}" for m in self.luns if ioctl.is_frozen(m)]
        for host in hosts:
            found += [f"mount {m.mount_point}" for m in mnt.mounts() if m.mount_point.startswith(str(host.run_dir))]
            busy = host.catalog.list_sets({SetState.PREPARING, SetState.SNAPSHOTTING, SetState.IMPORTING})
            found += [f"set {s.id} still {s.state.value}" for s in busy]
        return found

    def close(self) -> None:
        for host in self._hosts:
            host.catalog.close()


@pytest.fixture
def world(scratch: Scratch, tmp_path: Path) -> Iterator[ArrayWorld]:
    array_fs = scratch.filesystem("xfs", size_mb=4096, name="arrayfs")
    array = Array.init(array_fs.mount_point / "array", scratch.runner)
    w = ArrayWorld(scratch, tmp_path, array)

    def detach_strays() -> None:  # whatever a failed test left presented from this array, by exact device
        for device in loop.attached(scratch.runner):
            if device.backing_file.startswith(f"{array.path}/"):
                for m in mnt.mounts():
                    if m.source == device.device:
                        ioctl.thaw(Path(m.mount_point))
                        mnt.unmount(scratch.runner, Path(m.mount_point))
                loop.detach(scratch.runner, device.device)

    scratch.defer(detach_strays, "detach what the array still presents")
    try:
        yield w
    finally:
        w.close()
