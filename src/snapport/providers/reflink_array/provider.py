"""The `reflink-array` provider: snapshots of array LUNs by FICLONE, transportable through the array directory."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from snapport.errors import (
    BadState,
    ImportRefused,
    ObjectNotFound,
    ProviderError,
    SnapportError,
    VolumeNotSupported,
)
from snapport.model import Attr, Locator, LunInformation, Volume
from snapport.osal import loop
from snapport.osal import mount as mnt
from snapport.providers import blockdev
from snapport.providers.base import Capabilities, CatalogView, Leftover, Presentations, ProviderHost, SnapshotRequest
from snapport.providers.reflink_array import reconciliation
from snapport.providers.reflink_array.array import LUNS_DIR, PENDING, READY, Array, Lun, valid_lun_id

PRODUCT = reconciliation.PROVIDER
_LOOP = re.compile(r"^/dev/loop\d+$")


def _lun_information(array: Array, lun: Lun) -> LunInformation:
    return LunInformation(array.array_id, lun.id, lun.serial, lun.size_bytes, vendor="snapport", product=PRODUCT)


class ReflinkArrayProvider:
    """Snapshots of volumes on array LUNs: FICLONE of the LUN image; transportable through the shared directory."""

    name: ClassVar[str] = PRODUCT
    capabilities: ClassVar[Capabilities] = Capabilities(
        transportable=True, atomic_multi_volume=True, persistent=True, can_break=True, can_revert=True
    )

    def __init__(self, host: ProviderHost) -> None:
        self.host = host
        self.runner = host.runner

    # -- finding things ----------------------------------------------------------------------------------------

    def _lun_of(self, volume: Volume) -> tuple[Array, str] | None:
        """The array and LUN behind a volume: its device must be a loop device of `<array>/luns/<id>.img`."""
        device = volume.device
        if not device:
            mounted = mnt.mount_at(volume.mount_point)
            device = mounted.source if mounted is not None else ""
        if not _LOOP.match(device):
            return None
        backing = loop.backing_file(device)
        return None if backing is None else Array.of_image(backing, self.runner)

    def _require(self, volume: Volume) -> tuple[Array, Lun]:
        found = self._lun_of(volume)
        lun = found[0].find(found[1]) if found is not None else None
        if found is None or lun is None:
            raise VolumeNotSupported(
                f"volume {volume.mount_point} ({volume.device or 'no device'}) is not a LUN of a reflink array "
                "(a loop device of <array>/luns/<id>.img); create one with `snapport array lun create`"
            )
        return found[0], lun

    def _array(self, locator: Locator, error: type[SnapportError]) -> Array:
        """The array a locator names, checked against the locator's array id."""
        where = locator.property("array_path")
        target = locator.destination
        if locator.provider != self.name or target is None or not where:
            raise error(f"the locator is not a {self.name} snapshot (provider {locator.provider!r})")
        valid_lun_id(target.lun_id, error)
        try:
            array = Array.open(Path(where), self.runner)
        except ObjectNotFound:
            raise error(f"no array at {where} (the locator's array_path); is the shared storage mounted?") from None
        if array.array_id != target.array_id:
            raise error(
                f"the array at {where} is {array.array_id}, not {target.array_id} as the locator says; "
                "refusing to touch another array's LUNs"
            )
        return array

    def _snapshot(self, locator: Locator, error: type[SnapportError]) -> tuple[Array, Lun]:
        """The array and snapshot LUN a locator names, checked against its array id and serial."""
        array = self._array(locator, error)
        target = locator.destination
        assert target is not None  # checked by _array
        lun = array.find(target.lun_id)
        if lun is None or lun.serial != target.serial:
            raise error(f"LUN {target.lun_id} (serial {target.serial}) is not in array {array.array_id} ({array.path})")
        return array, lun

    # -- the protocol ------------------------------------------------------------------------------------------

    def is_supported(self, volume: Volume) -> bool:
        found = self._lun_of(volume)
        return found is not None and found[0].find(found[1]) is not None

    def check_request(self, volume: Volume, attrs: Attr) -> None:
        self._require(volume)  # every attribute is honoured

    def prepare(self, requests: Sequence[SnapshotRequest]) -> None:
        for request in requests:
            array, source = self._require(request.volume)
            array.reserve_clone(
                source.id,
                name=f"{source.name}@{str(request.snapshot_id)[:8]}",
                snapshot_of_set=str(request.set_id),
                snapshot_id=str(request.snapshot_id),
            )

    def commit(self, requests: Sequence[SnapshotRequest]) -> dict[uuid.UUID, Locator]:
        # Nothing here but reading the manifests (no lock: another process may hold it) and one FICLONE per LUN.
        plan: list[tuple[SnapshotRequest, Array, Lun, Lun]] = []
        for request in requests:
            array, source = self._require(request.volume)
            reserved = [lun for lun in array.snapshot_luns(str(request.snapshot_id)) if lun.state == PENDING]
            if not reserved:
                raise BadState(f"snapshot {request.snapshot_id} has no pending LUN: prepare did not run")
            plan.append((request, array, source, reserved[0]))
        made: list[Path] = []
        try:
            for _request, array, _source, clone in plan:
                array.clone_into(clone)
                made.append(array.image(clone.id))
        except BaseException:
            for image in made:
                image.unlink(missing_ok=True)
            raise
        return {
            request.snapshot_id: Locator(
                provider=self.name,
                source=_lun_information(array, source),
                destination=_lun_information(array, clone),
                properties=(("array_path", str(array.path)),),
            )
            for request, array, source, clone in plan
        }

    def post_commit(self, requests: Sequence[SnapshotRequest], locators: dict[uuid.UUID, Locator]) -> None:
        by_array: dict[Path, tuple[Array, list[str]]] = {}
        for request in requests:
            locator = locators[request.snapshot_id]
            array, lun = self._snapshot(locator, ProviderError)
            by_array.setdefault(array.path, (array, []))[1].append(lun.id)
        for array, lun_ids in by_array.values():
            array.mark_ready(lun_ids)

    def abort(self, requests: Sequence[SnapshotRequest]) -> None:
        for request in requests:
            found = self._lun_of(request.volume)
            if found is None:
                continue  # the original LUN is no longer attached here: nothing of ours can be found from it
            array = found[0]
            for lun in array.snapshot_luns(str(request.snapshot_id)):
                if lun.snapshot_of_set == str(request.set_id):
                    array.delete_lun(lun.id, unpresent_from=self.host.name)

    def delete(self, locator: Locator) -> None:
        array = self._array(locator, ObjectNotFound)
        assert locator.destination is not None
        lun = array.find(locator.destination.lun_id)
        if lun is None:
            return  # already deleted
        if lun.serial != locator.destination.serial:
            raise ProviderError(f"LUN {lun.id} has serial {lun.serial}, not {locator.destination.serial}; not deleting")
        if lun.snapshot_id is None:
            return  # broken off: a standalone LUN now, no longer a snapshot to delete
        array.delete_lun(lun.id, unpresent_from=self.host.name)

    def sees_original(self, locator: Locator) -> bool:
        where, source = locator.property("array_path"), locator.source
        if not where or source is None:
            return False
        try:
            array = Array.open(Path(where), self.runner)
            lun = array.find(valid_lun_id(source.lun_id, ProviderError))
        except SnapportError:
            return False
        if lun is None:
            return False
        if lun.devices_on(self.host.name):
            return True
        # Attached here but recorded for no host (raw losetup): this host sees it. Devices recorded for another
        # host name are that host's, even on the same machine (two SNAPPORT_HOMEs are two hosts).
        accounted = {device for _, devices in lun.presented_to for device in devices}
        return any(device not in accounted for device in array.local_devices(lun.id))

    def check_import(self, locator: Locator, *, set_id: uuid.UUID | None = None) -> None:
        array, lun = self._importable(locator)
        # The array's own record, not the document, says which set a LUN belongs to: a document naming a LUN of
        # another set (or an original volume) is refused.
        if set_id is not None and lun.snapshot_of_set != str(set_id):
            raise ImportRefused(
                f"LUN {lun.id} of array {array.array_id} is not a snapshot of set {set_id}: the document names a "
                "LUN outside its own snapshot set"
            )
        if locator.source is not None and lun.parent != locator.source.lun_id:
            raise ImportRefused(f"LUN {lun.id} is not a snapshot of LUN {locator.source.lun_id} as the document says")

    def _importable(self, locator: Locator) -> tuple[Array, Lun]:
        array, lun = self._snapshot(locator, ImportRefused)
        if lun.state != READY:
            raise ImportRefused(f"LUN {lun.id} of array {array.array_id} is {lun.state}: the snapshot is incomplete")
        others = [host for host in lun.hosts if host != self.host.name and lun.devices_on(host)]
        if others:
            raise ImportRefused(f"LUN {lun.id} of array {array.array_id} is already imported by {', '.join(others)}")
        return array, lun

    def import_snapshot(self, locator: Locator) -> str:
        array, lun = self._importable(locator)
        return array.present(lun.id, self.host.name, read_only=True, exclusive=True)  # the check again, under the lock

    def unimport(self, locator: Locator, device: str) -> None:
        try:
            array, lun = self._snapshot(locator, ObjectNotFound)
        except ObjectNotFound:
            # The array or the LUN is gone; still detach `device` if it is the LUN's image as the locator names it.
            where, target = locator.property("array_path"), locator.destination
            if where and target is not None and _LOOP.match(device):
                expected = (
                    Path(os.path.realpath(where)) / LUNS_DIR / f"{valid_lun_id(target.lun_id, ObjectNotFound)}.img"
                )
                if loop.backing_file(device) in (str(expected), f"{expected} (deleted)"):
                    blockdev.refuse_if_mounted(device, f"unimport LUN {target.lun_id}")
                    loop.detach(self.runner, device)
            return
        array.unpresent(lun.id, self.host.name)

    def expose(self, locator: Locator, device: str, fs_type: str, at: Path) -> None:
        array, lun = self._snapshot(locator, ObjectNotFound)
        if loop.backing_file(device) != str(array.image(lun.id)):
            raise BadState(f"{device} does not present LUN {lun.id}; import the snapshot on this host first")
        blockdev.expose_device(self.runner, device, fs_type, at)

    def unexpose(self, locator: Locator, at: Path) -> None:
        blockdev.unexpose(self.runner, at)

    def break_snapshot(self, locator: Locator, device: str) -> str:
        array, lun = self._snapshot(locator, ObjectNotFound)
        for presented in lun.devices_on(self.host.name):
            blockdev.refuse_if_mounted(presented, f"break snapshot LUN {lun.id}")
        array.unpresent(lun.id, self.host.name)
        standalone = array.present(lun.id, self.host.name, read_only=False)
        array.unlink_snapshot(lun.id)
        return standalone

    def revert(self, locator: Locator, volume: Volume) -> None:
        array, lun = self._snapshot(locator, ObjectNotFound)
        if locator.source is None or lun.parent != locator.source.lun_id:
            raise BadState(f"LUN {lun.id} is not a snapshot of the locator's source LUN")
        array.revert_lun(locator.source.lun_id, lun.id, host=self.host.name)

    # -- reconciliation (docs/doctor.md; the `reconciliation` module says what is judged) ----------------------

    def presentations(self, known: CatalogView) -> Presentations:
        return reconciliation.presentations(known, self.host.name, self.runner)

    def lock_files(self, known: CatalogView) -> tuple[Path, ...]:
        return reconciliation.lock_files(known, self.runner)

    def leftovers(self, known: CatalogView) -> tuple[Leftover, ...]:
        return reconciliation.leftovers(known, self.host.name, self.runner)

    def remove_leftover(self, leftover: Leftover, known: CatalogView) -> str:
        return reconciliation.remove(leftover, known, self.host.name, self.runner)
