"""The file-backed array (DESIGN §7): LUN images on a reflink filesystem, a crash-safe manifest, loop devices.

An array is a directory on XFS (reflink) or btrfs that plays a storage array::

    DIR/manifest.json      what the array holds; replaced atomically (temp file, fsync, rename, fsync DIR)
    DIR/luns/<lun-id>.img  one sparse image per LUN
    DIR/.lock              flock held while the manifest is read, changed and written back

A LUN is presented to a host as a loop device. `presented_to` records the devices each *host name* holds, so two
hosts on one machine (two SNAPPORT_HOMEs) are two records. A snapshot LUN is reserved `pending` by `prepare` (so a
crash leaves a recognisable orphan), cloned by FICLONE in `commit` while the volume is frozen, and marked `ready`
by `post_commit`. Clones share blocks copy-on-write: instant at any size, and independent of their parent.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from snapport.errors import (
    BadState,
    ImportRefused,
    ObjectNotFound,
    ProviderError,
    ProviderVeto,
    SnapportError,
    SystemCommandError,
    UsageError,
    VolumeNotSupported,
)
from snapport.osal import ioctl, loop
from snapport.osal import mount as mnt
from snapport.osal.atomic import write_atomically
from snapport.osal.lock import FileLock
from snapport.osal.runner import Runner, SubprocessRunner
from snapport.providers import blockdev

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
LUNS_DIR = "luns"
LOCK_NAME = ".lock"
LOCK_TIMEOUT_S = 60.0
PENDING, READY = "pending", "ready"
SECTOR = 512

_TEMP_PREFIX = f".{MANIFEST_NAME}.tmp-"
_LUN_ID = re.compile(r"^[0-9a-f]{12}$")
_SERIAL = re.compile(r"^SNP[0-9A-F]{12}$")
_LOOP = re.compile(r"^/dev/loop\d+$")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def valid_lun_id(lun_id: str, error: type[SnapportError] = UsageError) -> str:
    """A LUN id as the array makes them (12 hex digits): it becomes a file name, so nothing else gets through."""
    if not isinstance(lun_id, str) or not _LUN_ID.match(lun_id):
        raise error(f"{lun_id!r} is not a LUN id (12 lower-case hex digits)")
    return lun_id


def _valid_host(host: str) -> str:
    if not host or len(host) > 255 or not host.isprintable() or host != host.strip():
        raise UsageError(f"{host!r} is not a host name")
    return host


def _valid_name(name: str) -> str:
    if not name or len(name) > 128 or not name.isprintable():
        raise UsageError(f"{name!r} is not a LUN name (1 to 128 printable characters)")
    return name


@dataclass(frozen=True, slots=True)
class Lun:
    """One LUN as the manifest records it."""

    id: str
    name: str
    serial: str
    size_bytes: int
    state: str = READY
    created_at: str = ""
    parent: str | None = None  # the LUN this one was cloned from (kept as history after a break)
    snapshot_of_set: str | None = None  # set id, while this LUN is a snapshot
    snapshot_id: str | None = None
    presented_to: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (host name, loop devices), sorted by host

    def devices_on(self, host: str) -> tuple[str, ...]:
        return dict(self.presented_to).get(host, ())

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(host for host, devices in self.presented_to if devices)

    def with_devices(self, host: str, devices: Iterable[str]) -> Lun:
        hosts = dict(self.presented_to)
        hosts[host] = tuple(devices)
        return replace(self, presented_to=tuple(sorted((h, d) for h, d in hosts.items() if d)))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "serial": self.serial,
            "size_bytes": self.size_bytes,
            "state": self.state,
            "created_at": self.created_at,
            "parent": self.parent,
            "snapshot_of_set": self.snapshot_of_set,
            "snapshot_id": self.snapshot_id,
            "presented_to": {host: list(devices) for host, devices in self.presented_to},
        }

    @classmethod
    def from_json(cls, raw: Any) -> Lun:
        if not isinstance(raw, dict):
            raise ValueError("a LUN entry is not an object")
        presented = raw.get("presented_to") or {}
        if not isinstance(presented, dict) or not all(
            isinstance(h, str) and isinstance(d, list) and all(isinstance(x, str) and _LOOP.match(x) for x in d)
            for h, d in presented.items()
        ):
            raise ValueError(f"LUN {raw.get('id')!r}: presented_to is not a map of host to loop devices")
        lun = cls(
            id=valid_lun_id(raw["id"], ProviderError),
            name=str(raw["name"]),
            serial=str(raw["serial"]),
            size_bytes=int(raw["size_bytes"]),
            state=str(raw.get("state", READY)),
            created_at=str(raw.get("created_at", "")),
            parent=None if raw.get("parent") is None else valid_lun_id(raw["parent"], ProviderError),
            snapshot_of_set=None if raw.get("snapshot_of_set") is None else str(raw["snapshot_of_set"]),
            snapshot_id=None if raw.get("snapshot_id") is None else str(raw["snapshot_id"]),
            presented_to=tuple(sorted((h, tuple(d)) for h, d in presented.items() if d)),
        )
        if lun.state not in (PENDING, READY) or not _SERIAL.match(lun.serial) or lun.size_bytes <= 0:
            raise ValueError(f"LUN {lun.id}: bad state, serial or size")
        return lun


@dataclass
class _Manifest:
    """The manifest while a transaction holds the lock (mutable; never leaves this module)."""

    array_id: str
    created_at: str
    luns: list[Lun] = field(default_factory=list)

    def find(self, lun_id: str) -> Lun | None:
        return next((lun for lun in self.luns if lun.id == lun_id), None)

    def put(self, lun: Lun) -> None:
        self.luns = [lun if old.id == lun.id else old for old in self.luns]
        if self.find(lun.id) is None:
            self.luns.append(lun)

    def remove(self, lun_id: str) -> None:
        self.luns = [lun for lun in self.luns if lun.id != lun_id]

    def new_id(self) -> str:
        while True:
            lun_id = uuid.uuid4().hex[:12]
            if self.find(lun_id) is None:
                return lun_id

    def new_serial(self) -> str:
        taken = {lun.serial for lun in self.luns}
        while True:
            serial = "SNP" + uuid.uuid4().hex[:12].upper()
            if serial not in taken:
                return serial

    def to_bytes(self) -> bytes:
        body = {
            "array_id": self.array_id,
            "version": MANIFEST_VERSION,
            "created_at": self.created_at,
            "luns": [lun.to_json() for lun in self.luns],
        }
        return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes, where: Path) -> _Manifest:
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or not isinstance(raw.get("luns"), list):
                raise ValueError("not a manifest object")
            version = int(raw["version"])
            if version <= MANIFEST_VERSION:
                luns = [Lun.from_json(entry) for entry in raw["luns"]]
                array_id = str(uuid.UUID(str(raw["array_id"])))
        except (ValueError, KeyError, TypeError, SnapportError) as exc:
            raise ProviderError(f"the array manifest {where} is damaged: {exc}") from exc
        if version > MANIFEST_VERSION:
            raise ProviderError(f"{where} is version {version}, made by a newer snapport (this one reads 1)")
        if len({lun.id for lun in luns}) != len(luns):
            raise ProviderError(f"the array manifest {where} is damaged: a LUN id appears twice")
        return cls(array_id=array_id, created_at=str(raw.get("created_at", "")), luns=luns)


class _Transaction:
    """Lock, read the manifest, let the caller change it, write it back (only if the body did not raise)."""

    def __init__(self, array: Array) -> None:
        self.array = array
        self.committed = False  # the new manifest is in place: undoing the body's side effects is wrong now
        self._lock = FileLock(array.path / LOCK_NAME, timeout_s=LOCK_TIMEOUT_S, what=f"the array {array.path}")

    def __enter__(self) -> _Manifest:
        self._lock.__enter__()
        try:
            for stale in self.array.path.glob(f"{_TEMP_PREFIX}*"):  # left by a writer that died; we hold the lock
                stale.unlink(missing_ok=True)
            manifest = self.array._read()
            if manifest.array_id != self.array.array_id:
                raise ProviderError(f"the array at {self.array.path} was re-initialised (id {manifest.array_id})")
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        self._manifest = manifest
        return manifest

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc_type is None:
                try:
                    write_atomically(
                        self.array.path / MANIFEST_NAME, self._manifest.to_bytes(), fault_point="array.manifest"
                    )
                except OSError as error:  # e.g. EPERM, EROFS, ENOSPC: the array's directory cannot be written
                    raise ProviderError(
                        f"cannot update the manifest of array {self.array.path}: {error.strerror or error}"
                    ) from error
                self.committed = True
        finally:
            self._lock.__exit__(exc_type, exc, tb)


def _probe_reflink(directory: Path) -> None:
    """Clone a small temp file: the only sure test that the filesystem under `directory` can FICLONE."""
    probe = directory / f".reflink-probe-{uuid.uuid4().hex[:8]}"
    clone = probe.with_name(probe.name + ".clone")
    try:
        probe.write_bytes(b"snapport" * 512)
        ioctl.reflink(probe, clone)
    except SystemCommandError as exc:
        fs_type = mnt.containing_mount(directory).fs_type
        raise VolumeNotSupported(
            f"cannot make an array in {directory}: its {fs_type} filesystem cannot clone files (FICLONE); "
            "use XFS with reflink (mkfs.xfs -m reflink=1) or btrfs"
        ) from exc
    finally:
        probe.unlink(missing_ok=True)
        clone.unlink(missing_ok=True)


def _read_only(runner: Runner, device: str) -> bool:
    return any(d.read_only for d in loop.attached(runner) if d.device == device)


class Array:
    """A file-backed array: `Array.init` makes one, `Array.open` opens one; every change goes through the lock."""

    def __init__(self, path: Path, array_id: str, runner: Runner) -> None:
        self.path = path
        self.array_id = array_id
        self.runner = runner

    # -- opening -----------------------------------------------------------------------------------------------

    @classmethod
    def init(cls, path: Path, runner: Runner | None = None) -> Array:
        """Make an array in `path` (created if missing); refuses a filesystem that cannot reflink, or an array."""
        path = Path(os.path.realpath(path))
        if (path / MANIFEST_NAME).exists():
            raise BadState(f"{path} is already an array (it has a {MANIFEST_NAME})")
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        try:
            _probe_reflink(path)
        except SnapportError:
            if created:
                path.rmdir()
            raise
        (path / LUNS_DIR).mkdir(exist_ok=True)
        with FileLock(path / LOCK_NAME, timeout_s=LOCK_TIMEOUT_S, what=f"the array {path}"):
            if (path / MANIFEST_NAME).exists():
                raise BadState(f"{path} is already an array (another process made it)")
            manifest = _Manifest(array_id=str(uuid.uuid4()), created_at=_now())
            write_atomically(path / MANIFEST_NAME, manifest.to_bytes(), fault_point="array.manifest")
        return cls(path, manifest.array_id, runner or SubprocessRunner())

    @classmethod
    def open(cls, path: Path, runner: Runner | None = None) -> Array:
        """Open the array in `path`; `ObjectNotFound` if there is none."""
        path = Path(os.path.realpath(path))
        array = cls(path, "", runner or SubprocessRunner())
        array.array_id = array._read().array_id
        return array

    @classmethod
    def of_image(cls, image: str | Path, runner: Runner | None = None) -> tuple[Array, str] | None:
        """The array and LUN id an image path belongs to (`<array>/luns/<id>.img`), or None."""
        path = Path(image)
        if path.suffix != ".img" or path.parent.name != LUNS_DIR or not _LUN_ID.match(path.stem):
            return None
        if not (path.parent.parent / MANIFEST_NAME).is_file():
            return None
        try:
            return cls.open(path.parent.parent, runner), path.stem
        except SnapportError:
            return None

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_NAME

    def image(self, lun_id: str) -> Path:
        return self.path / LUNS_DIR / f"{valid_lun_id(lun_id)}.img"

    def _read(self) -> _Manifest:
        try:
            data = self.manifest_path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            raise ObjectNotFound(f"{self.path} is not an array (it has no {MANIFEST_NAME})") from None
        return _Manifest.parse(data, self.manifest_path)

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    # -- reading (no lock: the manifest is only ever replaced whole) --------------------------------------------

    def luns(self) -> list[Lun]:
        """Every LUN, in creation order."""
        return list(self._read().luns)

    def find(self, lun_id: str) -> Lun | None:
        return self._read().find(lun_id)

    def get(self, lun_id: str) -> Lun:
        lun = self.find(valid_lun_id(lun_id))
        if lun is None:
            raise ObjectNotFound(f"LUN {lun_id} is not in array {self.array_id} ({self.path})")
        return lun

    def snapshot_luns(self, snapshot_id: str) -> list[Lun]:
        """The LUNs made for snapshot `snapshot_id` (normally one)."""
        return [lun for lun in self._read().luns if lun.snapshot_id == snapshot_id]

    def local_devices(self, lun_id: str) -> list[str]:
        """The loop devices on this machine backed by the LUN's image, recorded in the manifest or not."""
        return loop.devices_for(self.runner, self.image(lun_id))

    def orphan_images(self) -> list[Path]:
        """Images with no manifest entry (a process died between making the image and recording it)."""
        known = {lun.id for lun in self._read().luns}
        images = (self.path / LUNS_DIR).glob("*.img")
        return sorted(p for p in images if _LUN_ID.match(p.stem) and p.stem not in known)  # only our own naming

    def remove_orphan_image(self, lun_id: str) -> bool:
        """Remove `luns/<lun_id>.img` if no LUN records it, decided under the lock (an image being made is
        recorded in the same transaction, so it is never taken for an orphan). False if there was none to remove."""
        valid_lun_id(lun_id)
        with self._transaction() as manifest:
            image = self.image(lun_id)
            if manifest.find(lun_id) is not None or not image.exists():
                return False
            image.unlink()
        return True

    def stale_presentations(self, host: str) -> list[tuple[str, str]]:
        """(LUN id, device) recorded as presented to `host` whose loop device no longer presents the LUN's image."""
        return [
            (lun.id, device)
            for lun in self._read().luns
            for device in lun.devices_on(host)
            if loop.backing_file(device) != str(self.image(lun.id))
        ]

    def prune_presentations(self, host: str) -> list[tuple[str, str]]:
        """Forget the presentations to `host` whose loop device is gone (or now backs something else)."""
        pruned = []
        with self._transaction() as manifest:
            for lun in list(manifest.luns):
                image = str(self.image(lun.id))
                live = [d for d in lun.devices_on(host) if loop.backing_file(d) == image]
                pruned += [(lun.id, d) for d in lun.devices_on(host) if d not in live]
                manifest.put(lun.with_devices(host, live))
        return pruned

    def stray_devices(self, also_known: Iterable[str] = ()) -> list[tuple[str, str]]:
        """(device, LUN id) of loop devices on this machine backed by one of the array's images (our naming) that
        no host's presentation records, nor `also_known` (devices a catalog records)."""
        return self._strays(self._read(), set(also_known))

    def _strays(self, manifest: _Manifest, known: set[str]) -> list[tuple[str, str]]:
        known |= {device for lun in manifest.luns for _, devices in lun.presented_to for device in devices}
        prefix = f"{self.path / LUNS_DIR}/"
        found = []
        for attached in loop.attached(self.runner):
            name = attached.backing_file.removeprefix(prefix)
            ours = attached.backing_file.startswith(prefix) and name.endswith(".img") and _LUN_ID.match(name[:-4])
            if ours and attached.device not in known:
                found.append((attached.device, name[:-4]))
        return found

    def detach_stray(self, device: str, also_known: Iterable[str] = ()) -> bool:
        """Detach `device` if it is still a stray of this array (checked again under the array lock, so a
        presentation being made meanwhile is never taken for one); refuses a mounted one. False if not a stray."""
        with self._transaction() as manifest:
            if device not in {d for d, _ in self._strays(manifest, set(also_known))}:
                return False
            blockdev.refuse_if_mounted(device, f"detach the stray loop device {device}")
            return loop.detach(self.runner, device)

    # -- LUNs --------------------------------------------------------------------------------------------------

    def create_lun(self, name: str, size_bytes: int) -> Lun:
        """A new sparse LUN of `size_bytes` (a multiple of 512)."""
        _valid_name(name)
        if size_bytes <= 0 or size_bytes % SECTOR:
            raise UsageError(f"a LUN size must be a positive multiple of {SECTOR} bytes, not {size_bytes}")
        made: Path | None = None
        txn = self._transaction()
        try:
            with txn as manifest:
                lun = Lun(manifest.new_id(), name, manifest.new_serial(), size_bytes, READY, _now())
                made = self.image(lun.id)
                fd = os.open(made, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
                try:
                    os.ftruncate(fd, size_bytes)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                manifest.put(lun)
        except BaseException:
            if made is not None and not txn.committed:
                made.unlink(missing_ok=True)
            raise
        return lun

    def present(self, lun_id: str, host: str, *, read_only: bool = False, exclusive: bool = False) -> str:
        """Attach the LUN as a loop device for `host` and return it; idempotent for the same host and mode.
        `exclusive` (an import): `ImportRefused` while another host has it presented, decided under the array's
        lock, so of two hosts importing one snapshot at the same moment exactly one wins."""
        _valid_host(host)
        attached: str | None = None
        txn = self._transaction()
        try:
            with txn as manifest:
                lun = self._entry(manifest, lun_id)
                if lun.state != READY:
                    raise BadState(f"LUN {lun_id} is {lun.state}: its snapshot is not complete")
                image = str(self.image(lun_id))
                if exclusive:
                    others = [
                        other
                        for other in lun.hosts
                        if other != host and any(loop.backing_file(d) == image for d in lun.devices_on(other))
                    ]
                    if others:
                        raise ImportRefused(
                            f"LUN {lun_id} of array {self.array_id} is already imported by {', '.join(others)}"
                        )
                live = [d for d in lun.devices_on(host) if loop.backing_file(d) == image]
                manifest.put(lun.with_devices(host, live))  # forget devices that are gone
                for device in live:
                    if _read_only(self.runner, device) == read_only:
                        return device
                if live:
                    mode = "read-only" if read_only else "read-write"
                    raise BadState(f"LUN {lun_id} is presented to {host} as {live[0]}, not {mode}; unpresent it first")
                attached = loop.attach(self.runner, self.image(lun_id), read_only=read_only)
                manifest.put(lun.with_devices(host, [attached]))
        except BaseException:
            if attached is not None and not txn.committed:
                loop.detach(self.runner, attached)
            raise
        assert attached is not None
        return attached

    def unpresent(self, lun_id: str, host: str) -> list[str]:
        """Detach exactly the devices recorded for `host` (those still backed by this LUN); idempotent."""
        with self._transaction() as manifest:
            lun = self._entry(manifest, lun_id)
            detached = self._detach(lun, host)
            manifest.put(lun.with_devices(host, ()))
        return detached

    def _detach(self, lun: Lun, host: str) -> list[str]:
        image = str(self.image(lun.id))
        live = [d for d in lun.devices_on(host) if loop.backing_file(d) == image]  # a reused number is not ours
        for device in live:
            blockdev.refuse_if_mounted(device, f"unpresent LUN {lun.id} from {host}")
        for device in live:
            loop.detach(self.runner, device)
        return live

    def delete_lun(self, lun_id: str, *, unpresent_from: str | None = None) -> bool:
        """Remove a LUN's image and entry; refuses one still presented (after unpresenting `unpresent_from`).

        Idempotent: False when there was no such LUN.
        """
        valid_lun_id(lun_id)
        with self._transaction() as manifest:
            lun = manifest.find(lun_id)
            if lun is None:
                self.image(lun_id).unlink(missing_ok=True)  # an orphan image (we hold the lock: nobody is making it)
                return False
            if unpresent_from is not None:
                self._detach(lun, unpresent_from)
                lun = lun.with_devices(unpresent_from, ())
                manifest.put(lun)
            if lun.hosts:
                raise BadState(f"LUN {lun_id} is still presented to {', '.join(lun.hosts)}; unpresent it first")
            stray = self.local_devices(lun_id)
            if stray:
                raise BadState(f"LUN {lun_id} is attached here as {', '.join(stray)} outside the array; detach it")
            self.image(lun_id).unlink(missing_ok=True)
            manifest.remove(lun_id)
        return True

    # -- clones and snapshots ----------------------------------------------------------------------------------

    def reserve_clone(
        self,
        source_id: str,
        *,
        name: str | None = None,
        snapshot_of_set: str | None = None,
        snapshot_id: str | None = None,
    ) -> Lun:
        """Record a `pending` clone of `source_id` (no image yet); idempotent for the same `snapshot_id`."""
        with self._transaction() as manifest:
            if snapshot_id is not None:
                for lun in manifest.luns:
                    if lun.snapshot_id == snapshot_id:
                        return lun
            source = self._entry(manifest, source_id)
            if source.state != READY:
                raise BadState(f"LUN {source_id} is {source.state}; it cannot be cloned")
            clone = Lun(
                id=manifest.new_id(),
                name=_valid_name(name or f"{source.name}@{(snapshot_id or uuid.uuid4().hex)[:8]}"),
                serial=manifest.new_serial(),
                size_bytes=source.size_bytes,
                state=PENDING,
                created_at=_now(),
                parent=source.id,
                snapshot_of_set=snapshot_of_set,
                snapshot_id=snapshot_id,
            )
            manifest.put(clone)
        return clone

    def clone_into(self, clone: Lun) -> None:
        """FICLONE the parent's image into the reserved clone's image: the instant, lock-free part."""
        if clone.parent is None:
            raise BadState(f"LUN {clone.id} has no parent to clone")
        ioctl.reflink(self.image(clone.parent), self.image(clone.id))

    def mark_ready(self, lun_ids: Sequence[str]) -> None:
        """Mark cloned LUNs `ready`; a LUN without its image is refused (its clone never happened)."""
        with self._transaction() as manifest:
            for lun_id in lun_ids:
                lun = self._entry(manifest, lun_id)
                if not self.image(lun_id).exists():
                    raise BadState(f"LUN {lun_id} has no image: it was never cloned")
                manifest.put(replace(lun, state=READY))

    def unlink_snapshot(self, lun_id: str) -> Lun:
        """Make a snapshot LUN a standalone LUN (its parent stays, as history)."""
        with self._transaction() as manifest:
            lun = replace(self._entry(manifest, lun_id), snapshot_of_set=None, snapshot_id=None)
            manifest.put(lun)
        return lun

    def revert_lun(self, lun_id: str, from_lun_id: str, *, host: str) -> None:
        """Clone `from_lun_id`'s image back over `lun_id`'s, in place; refuses while `lun_id` is in use."""
        with self._transaction() as manifest:
            target = self._entry(manifest, lun_id)
            source = self._entry(manifest, from_lun_id)
            if source.state != READY:
                raise BadState(f"LUN {from_lun_id} is {source.state}; it cannot be reverted to")
            if self.image(lun_id).stat().st_size != self.image(from_lun_id).stat().st_size:
                raise BadState(f"LUNs {lun_id} and {from_lun_id} differ in size; cannot revert one to the other")
            elsewhere = [h for h in target.hosts if h != host]
            if elsewhere:
                raise ProviderVeto(
                    f"cannot revert LUN {lun_id}: it is presented to {', '.join(elsewhere)}, which may be using it; "
                    "unpresent it there first"
                )
            devices = self.local_devices(lun_id)
            for device in devices:
                in_use = blockdev.mounts_of(device)
                if in_use:
                    raise ProviderVeto(
                        f"cannot revert LUN {lun_id} while it is mounted at {in_use[0].mount_point} ({device}); "
                        "unmount it first"
                    )
            ioctl.reflink_over(self.image(from_lun_id), self.image(lun_id))
            for device in devices:  # drop the loop devices' cached blocks of the old content
                self.runner.run(["blockdev", "--flushbufs", device], timeout=30)

    def _entry(self, manifest: _Manifest, lun_id: str) -> Lun:
        lun = manifest.find(valid_lun_id(lun_id))
        if lun is None:
            raise ObjectNotFound(f"LUN {lun_id} is not in array {self.array_id} ({self.path})")
        return lun
