"""A real Ceph cluster for the tests (`snapport.lab.ceph`): one per session, started on first use, stopped by pid
at the end; and the helpers that give a home a client of it and look behind the provider's back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from snapport.lab import ceph
from snapport.lab.ceph import CephSite
from snapport.providers.ceph_rbd.cluster import ImageRef

PRODUCTION, PROXY = "snapport-production", "snapport-proxy"


@pytest.fixture(scope="session")
def ceph_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephSite]:
    reason = ceph.unavailable()
    if reason is not None:
        pytest.skip(reason)
    directory = tmp_path_factory.mktemp("ceph") / "cluster"
    try:
        yield ceph.up(directory)
    finally:
        ceph.down(directory)


def client_home(home: Path, site: CephSite, client: str = PRODUCTION, present: str = "fuse") -> Path:
    """Make `home` a client of the cluster (its ceph.toml)."""
    ceph.write_client_config(home, site, client, present=present)
    return home


class Admin:
    """The cluster as its administrator sees it (librbd with client.admin), for setting up and checking."""

    def __init__(self, site: CephSite) -> None:
        import rados  # noqa: PLC0415
        import rbd  # noqa: PLC0415

        self.rbd = rbd
        self.handle = rados.Rados(
            conffile=str(site.conf), rados_id="admin", conf={"keyring": str(site.keyring("admin"))}
        )
        self.handle.connect(timeout=10)
        self.io = self.handle.open_ioctx(site.pool)
        self.pool = site.pool

    def create(self, name: str, size: int) -> ImageRef:
        self.rbd.RBD().create(self.io, name, size)
        return ImageRef(self.pool, "", name)

    def images(self) -> list[str]:
        return sorted(self.rbd.RBD().list(self.io))

    def snapshots(self, name: str) -> list[str]:
        with self.rbd.Image(self.io, name, read_only=True) as image:
            return sorted(s["name"] for s in image.list_snaps())

    def metadata(self, name: str) -> dict[str, Any]:
        with self.rbd.Image(self.io, name, read_only=True) as image:
            return dict(image.metadata_list())

    def remove(self, name: str) -> None:
        """Remove an image and its snapshots; idempotent."""
        if name not in self.images():
            return
        with self.rbd.Image(self.io, name) as image:
            for snap in list(image.list_snaps()):
                image.remove_snap(snap["name"])
        self.rbd.RBD().remove(self.io, name)

    def close(self) -> None:
        self.io.close()
        self.handle.shutdown()
