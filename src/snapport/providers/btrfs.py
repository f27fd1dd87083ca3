"""The btrfs provider: read-only subvolume snapshots inside the volume's own filesystem. Local only.

A snapshot of the subvolume mounted at `M` is `M/.snapport-snapshots/<snapshot-id>` (a read-only subvolume).
It cannot travel through shared storage, so TRANSPORTABLE is refused before anything is frozen, and "import" is
only possible on the host that made it (it returns the snapshot's path; exposing it is a read-only bind mount).

btrfs makes its own consistent cut: the snapshot ioctl flushes delalloc and commits a transaction. It also cannot
run on a FIFREEZE-frozen filesystem (it waits, unkillable, for the thaw), so `commit_while_fs_frozen` is False
and `commit` refuses at once if it finds the filesystem frozen instead of hanging the set.

Beside each snapshot, `prepare` writes `M/.snapport-snapshots/<snapshot-id>.owner` (the host and set that made
it) before the snapshot exists, and `abort`/`delete` remove it after the snapshot: so any home can tell its own
snapshots from another host's on the same filesystem, and reconciliation can find what a crash left.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from snapport.errors import (
    ImportRefused,
    ObjectNotFound,
    ProviderError,
    ProviderVeto,
    SnapportError,
    UnsupportedContext,
    VolumeNotSupported,
)
from snapport.model import Attr, Locator, Volume
from snapport.osal import ioctl
from snapport.osal import mount as mnt
from snapport.osal.atomic import write_atomically
from snapport.osal.runner import Runner
from snapport.providers.base import (
    Capabilities,
    CatalogView,
    Leftover,
    Presentations,
    ProviderHost,
    SnapshotRequest,
)

SNAPSHOT_DIR = ".snapport-snapshots"
OWNER_SUFFIX = ".owner"
MAX_OWNER_BYTES = 4096
SUBVOLUME_ROOT_INODE = 256  # BTRFS_FIRST_FREE_OBJECTID: the root directory of every subvolume, top level included
COMMIT_TIMEOUT_S = 10.0


def _is_subvolume(path: Path) -> bool:
    try:
        return path.stat().st_ino == SUBVOLUME_ROOT_INODE and mnt.containing_mount(path).fs_type == "btrfs"
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class Owner:
    """Who made a snapshot, as its owner file records it."""

    host: str
    set_id: uuid.UUID


def owner_file(snapshot: Path) -> Path:
    return snapshot.with_name(snapshot.name + OWNER_SUFFIX)


def _write_owner(snapshot: Path, owner: Owner) -> None:
    body = json.dumps({"host": owner.host, "set_id": str(owner.set_id)}, sort_keys=True) + "\n"
    write_atomically(owner_file(snapshot), body.encode(), mode=0o600)


def read_owner(snapshot: Path) -> Owner | None:
    """The owner a snapshot's owner file records; None if there is none (or it is not one of ours)."""
    try:
        with owner_file(snapshot).open("rb") as f:
            raw = json.loads(f.read(MAX_OWNER_BYTES))
        return Owner(host=str(raw["host"]), set_id=uuid.UUID(str(raw["set_id"])))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _delete_snapshot(runner: Runner, path: Path) -> None:
    """Delete the snapshot subvolume at `path` (if it is one), then its owner file."""
    if _is_subvolume(path):
        runner.run(["btrfs", "subvolume", "delete", str(path)], timeout=60)
    owner_file(path).unlink(missing_ok=True)


class BtrfsProvider:
    """btrfs subvolume snapshots: persistent, local, neither transportable nor breakable."""

    name: ClassVar[str] = "btrfs"
    capabilities: ClassVar[Capabilities] = Capabilities(
        transportable=False,
        atomic_multi_volume=False,  # one snapshot ioctl per subvolume: each its own transaction
        persistent=True,
        can_break=False,
        can_revert=False,  # would need the top-level subvolume mounted and the volume's subvolume swapped
        commit_while_fs_frozen=False,
    )

    def __init__(self, host: ProviderHost) -> None:
        self.host = host
        self.runner = host.runner

    @staticmethod
    def _snapshot_path(request: SnapshotRequest) -> Path:
        return Path(request.volume.mount_point) / SNAPSHOT_DIR / str(request.snapshot_id)

    def _path(self, locator: Locator, error: type[SnapportError]) -> Path:
        """The snapshot path a locator names; from a document, so only `<dir>/.snapport-snapshots/<uuid>`."""
        raw = locator.property("path")
        if locator.provider != self.name or not raw:
            raise error(f"the locator is not a {self.name} snapshot (provider {locator.provider!r})")
        path = Path(raw)
        try:
            uuid.UUID(path.name)
            valid = path.is_absolute() and path.parent.name == SNAPSHOT_DIR and ".." not in path.parts
        except ValueError:
            valid = False
        if not valid or str(path) != os.path.normpath(raw):
            raise error(f"{raw!r} is not a snapport btrfs snapshot path (<volume>/{SNAPSHOT_DIR}/<snapshot id>)")
        return path

    def _local(self, locator: Locator, doing: str, error: type[SnapportError]) -> Path:
        owner = locator.property("host")
        if owner != self.host.name:
            raise error(
                f"cannot {doing} on {self.host.name}: btrfs snapshot {locator.property('path')} lives in a filesystem "
                f"of host {owner} (btrfs snapshots are not transportable)"
            )
        return self._path(locator, error)

    # -- the protocol ------------------------------------------------------------------------------------------

    def is_supported(self, volume: Volume) -> bool:
        return volume.fs_type == "btrfs" and _is_subvolume(Path(volume.mount_point))

    def check_request(self, volume: Volume, attrs: Attr) -> None:
        if not self.is_supported(volume):
            raise VolumeNotSupported(f"volume {volume.mount_point} is not a mounted btrfs subvolume")
        if Attr.TRANSPORTABLE in attrs:
            raise UnsupportedContext(
                "btrfs snapshots cannot be transported: they live inside the original filesystem, not on shared "
                "storage; put the volume on an array LUN (reflink-array) or drop --transportable"
            )

    def prepare(self, requests: Sequence[SnapshotRequest]) -> None:
        for request in requests:
            self.check_request(request.volume, request.attrs)
            snapshots = Path(request.volume.mount_point) / SNAPSHOT_DIR
            snapshots.mkdir(mode=0o700, exist_ok=True)  # outside the freeze: commit must not write metadata itself
            _write_owner(self._snapshot_path(request), Owner(self.host.name, request.set_id))

    def commit(self, requests: Sequence[SnapshotRequest]) -> dict[uuid.UUID, Locator]:
        made: list[Path] = []
        try:
            for request in requests:
                mount_point = Path(request.volume.mount_point)
                if ioctl.is_frozen(mount_point):
                    raise ProviderError(
                        f"{mount_point} is frozen: btrfs cannot snapshot a frozen filesystem (the snapshot would "
                        "wait for the thaw); the coordinator must not fs-freeze btrfs volumes"
                    )
                target = self._snapshot_path(request)
                self.runner.run(
                    ["btrfs", "subvolume", "snapshot", "-r", str(mount_point), str(target)], timeout=COMMIT_TIMEOUT_S
                )
                made.append(target)
        except BaseException:
            for target in made:
                self.runner.run(["btrfs", "subvolume", "delete", str(target)], check=False)
            raise
        return {
            request.snapshot_id: Locator(
                provider=self.name,
                properties=(
                    ("host", self.host.name),
                    ("mount_point", request.volume.mount_point),
                    ("path", str(self._snapshot_path(request))),
                ),
            )
            for request in requests
        }

    def post_commit(self, requests: Sequence[SnapshotRequest], locators: dict[uuid.UUID, Locator]) -> None:
        return None  # nothing to record: the subvolume is the record

    def abort(self, requests: Sequence[SnapshotRequest]) -> None:
        for request in requests:
            _delete_snapshot(self.runner, self._snapshot_path(request))

    def delete(self, locator: Locator) -> None:
        path = self._local(locator, "delete", ProviderVeto)
        if path.exists() and not _is_subvolume(path):
            raise ProviderError(f"{path} is not a btrfs subvolume; not deleting it")
        _delete_snapshot(self.runner, path)

    def sees_original(self, locator: Locator) -> bool:
        return locator.property("host") == self.host.name  # the snapshot lives inside the original

    def check_import(self, locator: Locator, *, set_id: uuid.UUID | None = None) -> None:
        self.import_snapshot(locator)  # a local "import" changes nothing; the path names the snapshot itself

    def import_snapshot(self, locator: Locator) -> str:
        path = self._local(locator, "import", ImportRefused)
        if not _is_subvolume(path):
            raise ImportRefused(f"btrfs snapshot {path} does not exist on {self.host.name}")
        return str(path)

    def unimport(self, locator: Locator, device: str) -> None:
        return None  # a local "import" presented nothing

    def expose(self, locator: Locator, device: str, fs_type: str, at: Path) -> None:
        path = self._local(locator, "expose", ObjectNotFound)
        if str(path) != device or not _is_subvolume(path):
            raise ObjectNotFound(f"btrfs snapshot {device} does not exist on {self.host.name}")
        if mnt.mount_at(at) is not None:
            here, there = at.stat(), path.stat()
            if (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino):
                return  # already exposed there
            raise ProviderVeto(f"cannot expose {path} at {at}: something else is mounted there")
        at.mkdir(parents=True, exist_ok=True)
        self.runner.run(["mount", "--bind", str(path), str(at)], timeout=60)
        try:
            # A bind mount inherits rw; the remount makes this mount read-only (the snapshot already is).
            self.runner.run(["mount", "-o", "remount,bind,ro", str(at)], timeout=60)
        except BaseException:
            mnt.unmount(self.runner, at)
            raise

    def unexpose(self, locator: Locator, at: Path) -> None:
        mnt.unmount(self.runner, at)

    def break_snapshot(self, locator: Locator, device: str) -> str:
        raise ProviderVeto(
            "btrfs snapshots cannot be broken off into standalone volumes (they stay inside the original "
            "filesystem); copy the exposed snapshot instead"
        )

    def revert(self, locator: Locator, volume: Volume) -> None:
        raise ProviderVeto(
            "the btrfs provider cannot revert a volume to a snapshot; restore the files from the exposed snapshot"
        )

    # -- reconciliation (docs/doctor.md) -----------------------------------------------------------------------

    def presentations(self, known: CatalogView) -> Presentations:
        return Presentations()  # a snapshot is a directory of its own filesystem: no device presents it

    def lock_files(self, known: CatalogView) -> tuple[Path, ...]:
        return ()

    def leftovers(self, known: CatalogView) -> tuple[Leftover, ...]:
        """In the snapshot directory of each volume this host's sets snapshotted with btrfs (and only there):
        `snapshot-subvolume`, a snapshot no live set records; `snapshot-owner`, an owner file whose snapshot was
        never taken or is gone. Another host's (by its owner file) are left to it."""
        found: list[Leftover] = []
        for volume in self._volumes(known):
            found += self._leftovers_in(volume, known)
        return tuple(found)

    def remove_leftover(self, leftover: Leftover, known: CatalogView) -> str:
        if leftover.provider != self.name or leftover.kind not in ("snapshot-subvolume", "snapshot-owner"):
            raise ProviderError(f"{leftover.kind} {leftover.object} is not a leftover of the {self.name} provider")
        volume = Path(leftover.get("volume"))
        if volume not in self._volumes(known):
            return "its volume is no longer one this host's sets snapshot here; left alone"
        path = Path(leftover.object)
        current = {(x.kind, x.object) for x in self._leftovers_in(volume, known)}
        if (leftover.kind, leftover.object) not in current:
            return "already gone, or no longer a leftover (its set is live); left alone"
        if leftover.kind == "snapshot-subvolume":
            _delete_snapshot(self.runner, path)
            return "deleted the snapshot subvolume and its owner file"
        path.unlink(missing_ok=True)
        return "removed the owner file"

    def _volumes(self, known: CatalogView) -> list[Path]:
        """This host's volumes that its sets snapshotted with btrfs and that are still the subvolume they
        recorded (a volume whose device is recorded must still be on that device)."""
        found: set[Path] = set()
        for _, snapshot in known.snapshots(self.name):
            volume = snapshot.volume
            mount_point = Path(volume.mount_point)
            if volume.host != self.host.name or mount_point in found or not _is_subvolume(mount_point):
                continue
            source = mnt.containing_mount(mount_point).source
            if volume.device and os.path.realpath(volume.device) != os.path.realpath(source):
                continue
            found.add(mount_point)
        return sorted(found)

    def _leftovers_in(self, volume: Path, known: CatalogView) -> Iterator[Leftover]:
        directory = volume / SNAPSHOT_DIR
        try:
            names = sorted(p.name for p in directory.iterdir())
        except OSError:
            return
        handle = (("volume", str(volume)),)
        for name in names:
            snapshot_name = name.removesuffix(OWNER_SUFFIX)
            try:
                snapshot_id = uuid.UUID(snapshot_name)
            except ValueError:
                continue  # not our naming: never ours to judge
            if snapshot_name != str(snapshot_id) or known.live_snapshot(snapshot_id):
                continue
            snapshot = directory / snapshot_name
            owner = read_owner(snapshot)
            if owner is not None and owner.host != self.host.name:
                continue  # another host's (another home on this machine)
            if name == snapshot_name and _is_subvolume(snapshot):
                yield Leftover(self.name, "snapshot-subvolume", str(snapshot), self._why(owner, known), handle)
            elif name != snapshot_name and owner is not None and not snapshot.exists():
                why = f"records a snapshot of set {owner.set_id} ({self._state(owner.set_id, known)}) that is not there"
                yield Leftover(self.name, "snapshot-owner", str(directory / name), why, handle)

    @staticmethod
    def _state(set_id: uuid.UUID, known: CatalogView) -> str:
        recorded = known.set_of(set_id)
        return f"{recorded.state.value} here" if recorded is not None else "absent from the catalog"

    def _why(self, owner: Owner | None, known: CatalogView) -> str:
        if owner is None:
            return "a snapshot with no owner file that no live set records (taken for this host's: its volume is)"
        return f"snapshot of set {owner.set_id}, which is {self._state(owner.set_id, known)}"
