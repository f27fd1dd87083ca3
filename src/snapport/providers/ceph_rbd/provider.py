"""The `ceph-rbd` provider: a volume is an RBD image presented as a block device; a snapshot is an RBD snapshot
taken while every volume of the set is frozen; an import is a format-2 clone of it, presented read-only.

What the cluster itself records (so that a document can never make a host touch what is not its set's):

- a snapshot `snapport-<snapshot id>` of the volume's image, and beside it in the image's metadata
  `snapport.snapshot.<snapshot id>` = `{"set": SET, "host": HOST}`, written in `prepare` (outside the freeze,
  before the snapshot exists: a crash between the two leaves a record `leftovers` finds);
- an import is the clone `<image>.set-<set id>` in the image's pool and namespace, with metadata
  `snapport.importer`, `snapport.set`, `snapport.snapshot`; a second host's import of the same set is refused
  while another importer's clone exists.

Break flattens the clone into a standalone image, renamed `<image>.broken-<set id>` (no longer a snapport
clone: deleting the set leaves it). Revert rolls the image back to the snapshot: refused while the volume is
mounted; the image is unpresented for the rollback (librbd refuses to roll back an image another client has
open) and presented again at the same device. Delete removes this host's clone presentation and clone, then the
snapshot (librbd keeps a snapshot another host's clone still depends on in the trash until that clone goes) and
its record; every step is idempotent.

The locator (the BCD carries it): `fsid`, `pool`, `namespace`, `image`, `image_id`, `snapshot`, `snapshot_id`,
`size`, and `set`. An import checks each against the cluster before anything is made.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from snapport.errors import (
    BadState,
    ImportRefused,
    ObjectNotFound,
    ProviderError,
    ProviderVeto,
    SnapportError,
    VolumeNotSupported,
)
from snapport.model import Attr, Locator, Volume
from snapport.osal import mount as mnt
from snapport.providers import blockdev
from snapport.providers.base import (
    Capabilities,
    CatalogView,
    Leftover,
    Presentations,
    ProviderHost,
    SnapshotRequest,
)
from snapport.providers.ceph_rbd import reconciliation
from snapport.providers.ceph_rbd.cluster import CephConfig, Cluster, ImageRef, load_config
from snapport.providers.ceph_rbd.presentation import Presented, Presenter, lock_path, presenter
from snapport.providers.ceph_rbd.records import (
    CLONE_SET,
    CLONE_SNAPSHOT,
    IMPORTER,
    SNAPSHOT_PREFIX,
    broken_of,
    clone_of,
    metadata,
    record,
    remove_snapshot,
    snapshot_name,
    write_record,
)

NAME = "ceph-rbd"


@dataclass(frozen=True, slots=True)
class _Prepared:
    """An image `prepare` opened for the commit, and its snapshot's locator but for the snapshot id."""

    image: Any
    properties: tuple[tuple[str, str], ...]


class CephRbdProvider:
    """Snapshots of RBD images; transportable to any host of the cluster."""

    name: ClassVar[str] = NAME
    capabilities: ClassVar[Capabilities] = Capabilities(
        transportable=True, atomic_multi_volume=True, persistent=True, can_break=True, can_revert=True
    )

    def __init__(self, host: ProviderHost) -> None:
        self.host = host
        self.runner = host.runner
        self._config: CephConfig | bool | None = False  # False: not read yet
        self._cluster: Cluster | None = None
        self._presenter: Presenter | None = None
        self._open: dict[uuid.UUID, _Prepared] = {}  # prepared images, kept open for the commit

    # -- this host's cluster -------------------------------------------------------------------------------------

    @property
    def config(self) -> CephConfig | None:
        if self._config is False:
            self._config = load_config(self.host.home)
        return self._config if isinstance(self._config, CephConfig) else None

    def _require_config(self) -> CephConfig:
        config = self.config
        if config is None:
            raise VolumeNotSupported(f"this host has no Ceph configuration ({self.host.home}/ceph.toml)")
        return config

    @property
    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = Cluster(self._require_config(), self.host.home)
        return self._cluster

    @property
    def presenter(self) -> Presenter:
        if self._presenter is None:
            self._presenter = presenter(self.host.home, self._require_config(), self.runner)
        return self._presenter

    def mine(self) -> list[Presented]:
        """The images presented on this machine for this host."""
        return [p for p in self.presenter.presented() if p.home in (None, self.host.home.absolute(), self.host.home)]

    def image_of(self, volume: Volume) -> ImageRef | None:
        """The image behind a volume: its device must be one of this host's presentations of an RBD image."""
        if self.config is None:
            return None
        device = volume.device
        if not device:
            mounted = mnt.mount_at(volume.mount_point)
            device = mounted.source if mounted is not None else ""
        return next((p.image for p in self.mine() if p.device == device), None)

    def _require(self, volume: Volume) -> ImageRef:
        found = self.image_of(volume)
        if found is None:
            raise VolumeNotSupported(
                f"volume {volume.mount_point} ({volume.device or 'no device'}) is not an RBD image presented on this "
                "host; present one with `snapport rbd present POOL/IMAGE`"
            )
        return found

    def _locator_image(self, locator: Locator, error: type[SnapportError]) -> ImageRef:
        if locator.provider != self.name:
            raise error(f"the locator is not a {self.name} snapshot (provider {locator.provider!r})")
        try:
            ref = ImageRef.parse(
                "/".join(
                    p for p in (locator.property("pool"), locator.property("namespace"), locator.property("image")) if p
                )
            )
        except ObjectNotFound:
            raise error("the locator names no valid RBD image (pool, namespace, image)") from None
        fsid = self.cluster.fsid
        if locator.property("fsid") != fsid:
            raise error(
                f"the snapshot lives in Ceph cluster {locator.property('fsid')}, but this host reaches cluster {fsid}"
            )
        return ref

    # -- making snapshots ----------------------------------------------------------------------------------------

    def is_supported(self, volume: Volume) -> bool:
        try:
            return self.image_of(volume) is not None
        except SnapportError:
            return False

    def check_request(self, volume: Volume, attrs: Attr) -> None:
        ref = self._require(volume)  # every attribute is honoured
        with self.cluster.image(ref, read_only=True):
            pass  # the cluster answers and the image exists: refused here, before any freeze, otherwise

    def prepare(self, requests: Sequence[SnapshotRequest]) -> None:
        """Outside the freeze: the connection, each image opened and kept for the commit, its record written, and
        everything its locator says but the snapshot's id."""
        for request in requests:
            ref = self._require(request.volume)
            if request.snapshot_id not in self._open:
                io = self.cluster.ioctx(ref.pool, ref.namespace)
                image = self.cluster.call(f"RBD image {ref}", self.cluster.rbd.Image, io, ref.name)
                properties = (
                    ("fsid", self.cluster.fsid),
                    ("pool", ref.pool),
                    ("namespace", ref.namespace),
                    ("image", ref.name),
                    ("image_id", str(image.id())),
                    ("snapshot", snapshot_name(request.snapshot_id)),
                    ("size", str(image.size())),
                    ("set", str(request.set_id)),
                )
                self._open[request.snapshot_id] = _Prepared(image, properties)
            image = self._open[request.snapshot_id].image
            record = (image, str(request.snapshot_id))
            self.cluster.call(
                f"RBD image {ref}", write_record, *record, set_id=str(request.set_id), host=self.host.name
            )

    def commit(self, requests: Sequence[SnapshotRequest]) -> dict[uuid.UUID, Locator]:
        # Inside the freeze: one `create_snap` per image, all at once (librbd releases the GIL for the call, and
        # each waits on the monitor), on the images `prepare` opened; nothing else.
        prepared = []
        for request in requests:
            found = self._open.get(request.snapshot_id)
            if found is None:
                raise BadState(f"snapshot {request.snapshot_id} was not prepared")
            prepared.append((request, found))
        with ThreadPoolExecutor(max_workers=max(1, len(prepared)), thread_name_prefix="rbd-snap") as pool:
            futures = [pool.submit(self._snapshot, p.image, snapshot_name(r.snapshot_id)) for r, p in prepared]
            outcomes = [f.exception() or f.result() for f in futures]
        failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
        if failure is not None:
            for (request, found), outcome in zip(prepared, outcomes, strict=True):
                if not isinstance(outcome, BaseException):
                    self.cluster.call(
                        "removing a snapshot", found.image.remove_snap, snapshot_name(request.snapshot_id)
                    )
            raise failure
        return {
            request.snapshot_id: Locator(
                provider=self.name, properties=(*found.properties, ("snapshot_id", str(outcome)))
            )
            for (request, found), outcome in zip(prepared, outcomes, strict=True)
        }

    def _snapshot(self, image: Any, name: str) -> int:
        """Take snapshot `name` of an open image and return its id."""
        self.cluster.call(f"snapshot {name}", image.create_snap, name)
        return int(self.cluster.call(f"snapshot {name}", image.snap_get_id, name))

    def post_commit(self, requests: Sequence[SnapshotRequest], locators: dict[uuid.UUID, Locator]) -> None:
        self._close(requests)

    def _close(self, requests: Sequence[SnapshotRequest]) -> None:
        for request in requests:
            found = self._open.pop(request.snapshot_id, None)
            if found is not None:
                self.cluster.call("closing an RBD image", found.image.close)

    def abort(self, requests: Sequence[SnapshotRequest]) -> None:
        self._close(requests)
        for request in requests:
            ref = self.image_of(request.volume)
            if ref is None:
                continue  # no longer presented here: nothing of ours can be found from it
            with self.cluster.image(ref) as image:
                remove_snapshot(image, str(request.snapshot_id))

    def delete(self, locator: Locator) -> None:
        ref = self._locator_image(locator, ObjectNotFound)
        set_id = locator.property("set") or ""
        clone = clone_of(ref, set_id)
        self._remove_clone(clone, only_mine=True)
        if not self.cluster.exists(ref):
            return
        snapshot = locator.property("snapshot") or ""
        with self.cluster.image(ref) as image:
            remove_snapshot(image, snapshot.removeprefix(SNAPSHOT_PREFIX))

    def _remove_clone(self, clone: ImageRef, *, only_mine: bool) -> bool:
        """Unpresent and remove a clone this host imported; False when there is none (or it is another host's)."""
        if not self.cluster.exists(clone):
            return False
        with self.cluster.image(clone, read_only=True) as image:
            importer = metadata(image, IMPORTER)
        if only_mine and importer not in (None, self.host.name):
            return False
        self.presenter.unpresent(clone)
        self.cluster.call(
            f"removing RBD image {clone}",
            self.cluster.rbd.RBD().remove,
            self.cluster.ioctx(clone.pool, clone.namespace),
            clone.name,
        )
        return True

    # -- importing -----------------------------------------------------------------------------------------------

    def sees_original(self, locator: Locator) -> bool:
        try:
            ref = self._locator_image(locator, ProviderError)
        except SnapportError:
            return False
        return any(p.image == ref for p in self.mine())

    def check_import(self, locator: Locator, *, set_id: uuid.UUID | None = None) -> None:
        self._importable(locator, set_id)

    def _importable(self, locator: Locator, set_id: uuid.UUID | None) -> tuple[ImageRef, str, str]:
        ref = self._locator_image(locator, ImportRefused)
        snapshot, recorded_set = locator.property("snapshot") or "", locator.property("set") or ""
        if not snapshot.startswith(SNAPSHOT_PREFIX):
            raise ImportRefused(f"{snapshot!r} is not a snapport snapshot name")
        if not self.cluster.exists(ref):
            raise ImportRefused(f"RBD image {ref} does not exist in cluster {self.cluster.fsid}")
        with self.cluster.image(ref, read_only=True) as image:
            if str(image.id()) != locator.property("image_id"):
                raise ImportRefused(
                    f"RBD image {ref} has id {image.id()}, not {locator.property('image_id')} as the document says"
                )
            snaps = {s["name"]: s["id"] for s in image.list_snaps()}
            if str(snaps.get(snapshot)) != locator.property("snapshot_id"):
                raise ImportRefused(
                    f"RBD image {ref} has no snapshot {snapshot} with id {locator.property('snapshot_id')}"
                )
            recorded = record(image, snapshot.removeprefix(SNAPSHOT_PREFIX))
        if (
            recorded is None
            or recorded.get("set") != recorded_set
            or (set_id is not None and recorded_set != str(set_id))
        ):
            raise ImportRefused(
                f"snapshot {snapshot} of RBD image {ref} is not a snapshot of set {set_id or recorded_set} as the "
                "cluster records it: the document names a snapshot outside its own set"
            )
        clone = clone_of(ref, recorded_set)
        if self.cluster.exists(clone):
            with self.cluster.image(clone, read_only=True) as image:
                importer = metadata(image, IMPORTER)
            if importer != self.host.name:
                raise ImportRefused(f"set {recorded_set}'s snapshot of {ref} is already imported by {importer}")
        return ref, snapshot, recorded_set

    def import_snapshot(self, locator: Locator) -> str:
        ref, snapshot, set_id = self._importable(locator, None)
        clone = clone_of(ref, set_id)
        if not self.cluster.exists(clone):
            io = self.cluster.ioctx(ref.pool, ref.namespace)
            rbd = self.cluster.rbd
            # object-map and fast-diff: reading a fresh clone skips its parent's unwritten objects (measured 95 →
            # 121 MiB/s by bench/ceph.py) and removing it is twice as fast
            features = (
                rbd.RBD_FEATURE_LAYERING
                | rbd.RBD_FEATURE_EXCLUSIVE_LOCK
                | rbd.RBD_FEATURE_OBJECT_MAP
                | rbd.RBD_FEATURE_FAST_DIFF
            )
            self.cluster.call(
                f"cloning {ref}@{snapshot}", rbd.RBD().clone, io, ref.name, snapshot, io, clone.name, features
            )
            with self.cluster.image(clone) as image:
                for key, value in ((IMPORTER, self.host.name), (CLONE_SET, set_id), (CLONE_SNAPSHOT, snapshot)):
                    image.metadata_set(key, value)
        return self.presenter.present(clone, read_only=True)

    def unimport(self, locator: Locator, device: str) -> None:
        try:
            ref = self._locator_image(locator, ObjectNotFound)
        except ObjectNotFound:
            return
        if not self._remove_clone(clone_of(ref, locator.property("set") or ""), only_mine=True) and device:
            # a broken-off volume (no longer the set's clone): only this host's presentation of it goes
            for known in self.mine():
                if known.device == device:
                    self.presenter.unpresent(known.image)

    def expose(self, locator: Locator, device: str, fs_type: str, at: Path) -> None:
        ref = self._locator_image(locator, ObjectNotFound)
        clone = clone_of(ref, locator.property("set") or "")
        if not any(p.device == device and p.image == clone for p in self.mine()):
            raise BadState(f"{device} does not present the import of {ref}; import the snapshot on this host first")
        blockdev.expose_device(self.runner, device, fs_type, at)

    def unexpose(self, locator: Locator, at: Path) -> None:
        blockdev.unexpose(self.runner, at)

    def break_snapshot(self, locator: Locator, device: str) -> str:
        ref = self._locator_image(locator, ObjectNotFound)
        set_id = locator.property("set") or ""
        clone, broken = clone_of(ref, set_id), broken_of(ref, set_id)
        presented = [p for p in self.mine() if p.image == clone]
        for p in presented:
            blockdev.refuse_if_mounted(p.device, f"break the import of {ref}")
        self.presenter.unpresent(clone)
        io = self.cluster.ioctx(ref.pool, ref.namespace)
        with self.cluster.image(clone) as image:
            image.flatten()
            for key in (IMPORTER, CLONE_SET, CLONE_SNAPSHOT):
                image.metadata_remove(key)
        self.cluster.call(f"renaming {clone}", self.cluster.rbd.RBD().rename, io, clone.name, broken.name)
        return self.presenter.present(broken, read_only=False, device=presented[0].device if presented else None)

    def revert(self, locator: Locator, volume: Volume) -> None:
        ref = self._locator_image(locator, ObjectNotFound)
        if mnt.mount_at(volume.mount_point) is not None:
            raise ProviderVeto(f"cannot revert {volume.mount_point}: it is mounted; unmount it first")
        presented = [p for p in self.mine() if p.image == ref]
        for p in presented:
            blockdev.refuse_if_mounted(p.device, f"revert RBD image {ref}")
        self.presenter.unpresent(ref)
        try:
            with self.cluster.image(ref) as image:
                image.rollback_to_snap(locator.property("snapshot") or "")
        finally:
            for p in presented:  # presented again where it was, as the original volume's device
                self.presenter.present(ref, read_only=p.read_only, device=p.device)

    # -- reconciliation ------------------------------------------------------------------------------------------

    def presentations(self, known: CatalogView) -> Presentations:
        if self.config is None or not any(True for _ in known.snapshots(self.name)):
            return Presentations()
        found = self.presenter.presented()
        here = frozenset(p.device for p in self.mine())
        return Presentations(here=here, elsewhere=frozenset(p.device for p in found) - here)

    def lock_files(self, known: CatalogView) -> tuple[Path, ...]:
        path = lock_path(self.host.home)
        named = self.config is not None and any(True for _ in known.snapshots(self.name))
        return (path,) if named and path.exists() else ()

    def leftovers(self, known: CatalogView) -> tuple[Leftover, ...]:
        if self.config is None:
            return ()
        return reconciliation.leftovers(self, known)

    def remove_leftover(self, leftover: Leftover, known: CatalogView) -> str:
        if leftover.provider != self.name:
            raise ProviderError(f"{leftover.kind} {leftover.object} is not a leftover of {self.name}")
        return reconciliation.remove(self, leftover, known)
