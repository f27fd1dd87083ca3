"""An RBD image as one of this host's volumes (`snapport rbd present|unpresent|list`): what a person presents by
hand, checked against this machine and the cluster before anything is started.

`present` refuses (`BAD_STATE`) an image this home presents the other way (read-only vs read-write), one another
home of this machine presents read-write (or at all, when asked read-write), and, asked read-write, an image some
client of the cluster has open for writing (a watcher: rbd-fuse, a kernel mapping, a VM, on any machine), since two
writers of one block device corrupt its filesystem. A read-only presentation elsewhere is a watcher too (rbd-fuse
opens images read-write), so it also blocks a read-write one; a read-only request is not checked against watchers:
they cannot say which clients write. A client that died keeps its watch until the OSDs time it out (30 s).

The provider's own presentations (an import's clone, a revert's re-presentation) go through the presenter
directly: they are never someone else's image.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from snapport.errors import BadState, ConfigError
from snapport.providers.ceph_rbd.cluster import CephConfig, ImageRef, config_path
from snapport.providers.ceph_rbd.presentation import Presented

if TYPE_CHECKING:
    from snapport.providers.ceph_rbd.provider import CephRbdProvider


def require_config(provider: CephRbdProvider) -> CephConfig:
    """This host's Ceph configuration, or a `ConfigError` saying how to write one."""
    config = provider.config
    if config is None:
        raise ConfigError(
            f"this host has no Ceph configuration: write {config_path(provider.host.home)} with conf, client and "
            "keyring (docs/ceph.md)"
        )
    return config


def _this_home(presented: Presented, home: Path) -> bool:
    return presented.home is not None and presented.home.absolute() == home.absolute()


def _mode(read_only: bool) -> str:
    return "read-only" if read_only else "read-write"


def present(provider: CephRbdProvider, image: ImageRef, *, read_only: bool) -> Presented:
    """Present `image` to this host (idempotent for the same mode) after the checks above; its presentation."""
    require_config(provider)
    home = provider.host.home
    presenter = provider.presenter
    machine = [p for p in presenter.presented() if p.image == image]
    for known in machine:
        if _this_home(known, home):
            if known.read_only != read_only:
                raise BadState(
                    f"RBD image {image} is presented {_mode(known.read_only)} at {known.device}, not "
                    f"{_mode(read_only)}; unpresent it first (`snapport rbd unpresent {image}`)"
                )
            return known
    for known in machine:
        if not known.read_only or not read_only:
            owner = f"home {known.home}" if known.home is not None else "no snapport home"
            raise BadState(
                f"RBD image {image} is already presented {_mode(known.read_only)} at {known.device} on this machine "
                f"(for {owner}); unpresent it there first"
            )
    cluster = provider.cluster
    with cluster.image(image, read_only=True) as opened:  # the cluster answers and the image exists
        watchers = [] if read_only else list(cluster.call(f"RBD image {image}", opened.watchers_list))
    if watchers:
        clients = ", ".join(f"client.{w['id']} at {w['addr']}" for w in watchers)
        raise BadState(
            f"RBD image {image} is open by another client of the cluster ({clients}): it is presented elsewhere; "
            "unpresent it there first (a client that died holds it for up to 30 s)"
        )
    device = presenter.present(image, read_only=read_only)
    return Presented(image, device, read_only, home, presenter.via)


def unpresent(provider: CephRbdProvider, image: ImageRef) -> list[str]:
    """End this home's presentation of `image` (refused while mounted); the devices it ended. Idempotent."""
    require_config(provider)
    return provider.presenter.unpresent(image)


def presentations(provider: CephRbdProvider) -> list[Presented]:
    """The images presented on this machine for this home."""
    require_config(provider)
    return [p for p in provider.presenter.presented() if _this_home(p, provider.host.home)]
