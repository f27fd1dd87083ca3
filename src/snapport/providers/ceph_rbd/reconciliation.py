"""What a crash can leave of `ceph-rbd` for this host, found only where the catalog points, and its removal.

Kinds (docs/doctor.md):

- `rbd-snapshot` `POOL[/NS]/IMAGE@snapport-<id>`: a snapshot this host took (its record says so) of an image the
  catalog names, whose set is ended or unrecorded (a crash mid-delete or mid-commit);
- `rbd-snapshot-record` `POOL[/NS]/IMAGE#<id>`: such a record whose snapshot was never taken (a crash between
  prepare and commit);
- `rbd-clone` `POOL[/NS]/IMAGE.set-<set>`: a clone this host imported (its metadata says so) for a set that is
  ended or unrecorded here, presented or not (a crash mid-import or mid-delete);
- `rbd-fuse-mount` `PATH`: an rbd-fuse mount of this home with no loop device on it (a present cut short).

Another host's snapshots, records and clones are never reported, nor images the catalog does not name.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from snapport.errors import ObjectNotFound, ProviderError
from snapport.model import Attr
from snapport.osal import mount as mnt
from snapport.providers.base import CatalogView, Leftover
from snapport.providers.ceph_rbd.cluster import ImageRef
from snapport.providers.ceph_rbd.presentation import FusePresenter
from snapport.providers.ceph_rbd.records import (
    CLONE_NAME,
    IMPORTER,
    SNAPSHOT_PREFIX,
    metadata,
    records,
    remove_snapshot,
)

if TYPE_CHECKING:
    from snapport.providers.ceph_rbd.provider import CephRbdProvider


def _named_images(provider: CephRbdProvider, known: CatalogView) -> tuple[set[ImageRef], set[tuple[str, str]]]:
    """The images this host's sets snapshotted (made here), and the pools/namespaces of every set it knows."""
    images: set[ImageRef] = set()
    pools: set[tuple[str, str]] = set()
    for snapshot_set, snapshot in known.snapshots(provider.name):
        pool, namespace, name = (snapshot.locator.property(k) or "" for k in ("pool", "namespace", "image"))
        if not pool or not name:
            continue
        pools.add((pool, namespace))
        if Attr.IMPORTED not in snapshot_set.attrs:
            images.add(ImageRef(pool, namespace, name))
    for presented in provider.mine():
        pools.add((presented.image.pool, presented.image.namespace))
    return images, pools


def _set_live(known: CatalogView, text: str) -> bool:
    try:
        return known.live(uuid.UUID(text))
    except ValueError:
        return False


def leftovers(provider: CephRbdProvider, known: CatalogView) -> tuple[Leftover, ...]:
    if not any(True for _ in known.snapshots(provider.name)) and not provider.mine():
        return ()
    cluster, me = provider.cluster, provider.host.name
    found: list[Leftover] = []
    images, pools = _named_images(provider, known)
    for pool, namespace in sorted(pools):
        try:
            io = cluster.ioctx(pool, namespace)
        except ObjectNotFound:
            continue  # the pool is gone, and with it every image of ours it held
        names = cluster.call(f"pool {pool}", cluster.rbd.RBD().list, io)
        for name in sorted(names):
            match = CLONE_NAME.match(name)
            if match is None or _set_live(known, match["set"]):
                continue
            clone = ImageRef(pool, namespace, name)
            with cluster.image(clone, read_only=True) as image:
                importer = metadata(image, IMPORTER)
            if importer == me:
                detail = f"an import of set {match['set']}, which is not live here"
                found.append(Leftover(provider.name, "rbd-clone", str(clone), detail, _handle(clone)))
    for ref in sorted(images):
        if not cluster.exists(ref):
            continue
        with cluster.image(ref, read_only=True) as image:
            snapshots = {s["name"] for s in image.list_snaps()}
            recorded = records(image)
        for snapshot_id, record in sorted(recorded.items()):
            if record.get("host") != me or _set_live(known, record.get("set", "")):
                continue
            name = SNAPSHOT_PREFIX + snapshot_id
            handle = (*_handle(ref), ("snapshot_id", snapshot_id))
            if name in snapshots:
                detail = f"snapshot of set {record.get('set')}, which is not live here"
                found.append(Leftover(provider.name, "rbd-snapshot", f"{ref}@{name}", detail, handle))
            else:
                detail = f"the record of a snapshot of set {record.get('set')} that was never taken"
                found.append(Leftover(provider.name, "rbd-snapshot-record", f"{ref}#{snapshot_id}", detail, handle))
    found += _stray_mounts(provider)
    return tuple(found)


def _stray_mounts(provider: CephRbdProvider) -> list[Leftover]:
    presenter = provider.presenter
    if not isinstance(presenter, FusePresenter):
        return []
    with_loop = {p.image for p in provider.mine()}
    return [
        Leftover(
            provider.name,
            "rbd-fuse-mount",
            str(point),
            f"rbd-fuse serving {ref} with no loop device on it",
            _handle(ref),
        )
        for ref, point in presenter.serving()
        if ref not in with_loop
    ]


def _handle(ref: ImageRef) -> tuple[tuple[str, str], ...]:
    return (("pool", ref.pool), ("namespace", ref.namespace), ("image", ref.name))


def remove(provider: CephRbdProvider, leftover: Leftover, known: CatalogView) -> str:
    """Remove exactly `leftover` if it is still one (judged against `known`, read afresh)."""
    if leftover.kind not in ("rbd-clone", "rbd-snapshot", "rbd-snapshot-record", "rbd-fuse-mount"):
        raise ProviderError(f"{leftover.kind} {leftover.object} is not a leftover of {provider.name}")
    ref = ImageRef(leftover.get("pool"), dict(leftover.handle).get("namespace", ""), leftover.get("image"))
    still = {(x.kind, x.object) for x in leftovers(provider, known)}
    if (leftover.kind, leftover.object) not in still:
        return "no longer a leftover (gone, or recorded meanwhile); left alone"
    if leftover.kind == "rbd-clone":
        provider.presenter.unpresent(ref)
        provider.cluster.remove(ref)
        return "unpresented and removed the clone"
    if leftover.kind == "rbd-fuse-mount":
        mnt.unmount(provider.runner, Path(leftover.object))
        return "unmounted (its rbd-fuse daemon ended)"
    with provider.cluster.image(ref) as image:
        remove_snapshot(image, leftover.get("snapshot_id"))
    return "removed the snapshot and its record" if leftover.kind == "rbd-snapshot" else "removed the record"
