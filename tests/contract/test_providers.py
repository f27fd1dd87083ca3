"""One conformance suite for every provider in the registry (restic's habit): real volumes, real snapshots.

Each case builds a real volume its provider supports; every test runs against every case. Capability-gated
tests check the capability when it is declared and the refusal when it is not.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from snapport.errors import ImportRefused, ProviderError, ProviderVeto, UnsupportedContext, VolumeNotSupported
from snapport.model import Attr, Locator, Volume
from snapport.osal import ioctl, loop
from snapport.osal import mount as mnt
from snapport.providers.base import Provider, ProviderHost, SnapshotRequest
from snapport.providers.btrfs import SNAPSHOT_DIR
from snapport.providers.reflink_array import Array
from snapport.providers.registry import PROVIDERS, get_provider
from tests.conftest import Scratch

pytestmark = [pytest.mark.root]

HOST_A, HOST_B = "host-a", "host-b"
CASES = ["reflink-array/xfs", "reflink-array/ext4", "btrfs"]
TOOLS = {
    "reflink-array/xfs": ("mkfs.xfs", "losetup"),
    "reflink-array/ext4": ("mkfs.xfs", "mkfs.ext4", "losetup"),
    "btrfs": ("mkfs.btrfs", "btrfs"),
}


@dataclass
class Case:
    """A provider, a real volume it supports, and what the suite needs to look behind the provider's back."""

    provider: Provider
    other_host: Provider  # the same provider as a second host (another SNAPPORT_HOME on this machine)
    volume: Volume
    scratch: Scratch
    tmp: Path
    leftovers: Callable[[], list[str]]  # what the provider made for snapshots and has not removed
    unmount_original: Callable[[], None]
    mount_original: Callable[[], None]

    @property
    def mount_point(self) -> Path:
        return Path(self.volume.mount_point)


def _hosts(scratch: Scratch, tmp: Path, name: str) -> tuple[Provider, Provider]:
    a = get_provider(name, ProviderHost(HOST_A, tmp / "home-a", scratch.runner))
    b = get_provider(name, ProviderHost(HOST_B, tmp / "home-b", scratch.runner))
    return a, b


def _unpresent_all(array: Array) -> None:
    for lun in array.luns():
        for host in lun.hosts:
            array.unpresent(lun.id, host)


def _detach_strays(scratch: Scratch, array: Array) -> None:
    for device in loop.attached(scratch.runner):
        if device.backing_file.startswith(f"{array.path}/"):
            loop.detach(scratch.runner, device.device)


def _array_case(scratch: Scratch, tmp: Path, fs_type: str) -> Case:
    array_fs = scratch.filesystem("xfs", size_mb=2048)
    array = Array.init(array_fs.mount_point / "array", scratch.runner)
    scratch.defer(lambda: _detach_strays(scratch, array), "detach loop devices the manifest lost")
    scratch.defer(lambda: _unpresent_all(array), "unpresent every LUN of the array")
    lun = array.create_lun("data", (320 if fs_type == "xfs" else 64) << 20)
    device = array.present(lun.id, HOST_A)
    scratch.mkfs(fs_type, device)
    mount_point = scratch.mount(device, tmp / "volume", fs_type=fs_type)
    _, fs_uuid = mnt.fs_identity(scratch.runner, device)
    volume = Volume(HOST_A, str(mount_point), fs_type, fs_uuid, device)
    own_image = str(array.image(lun.id))

    def leftovers() -> list[str]:
        entries = [f"manifest entry {x.id} ({x.state})" for x in array.luns() if x.id != lun.id]
        images = [f"image {p.name}" for p in (array.path / "luns").iterdir() if str(p) != own_image]
        loops = [
            f"loop {d.device}"
            for d in loop.attached(scratch.runner)
            if d.backing_file.startswith(str(array.path)) and d.backing_file != own_image
        ]
        return entries + images + loops

    def unmount_original() -> None:
        mnt.unmount(scratch.runner, mount_point)
        scratch.forget_mount(mount_point)

    def mount_original() -> None:
        scratch.mount(device, mount_point, fs_type=fs_type)

    a, b = _hosts(scratch, tmp, "reflink-array")
    return Case(a, b, volume, scratch, tmp, leftovers, unmount_original, mount_original)


def _btrfs_case(scratch: Scratch, tmp: Path) -> Case:
    fs = scratch.filesystem("btrfs")
    _, fs_uuid = mnt.fs_identity(scratch.runner, fs.device)
    volume = Volume(HOST_A, str(fs.mount_point), "btrfs", fs_uuid, fs.device)

    def leftovers() -> list[str]:
        listed = scratch.runner.run(["btrfs", "subvolume", "list", "-o", str(fs.mount_point)]).stdout
        snapshots = fs.mount_point / SNAPSHOT_DIR
        entries = sorted(p.name for p in snapshots.iterdir()) if snapshots.exists() else []
        return [line for line in listed.splitlines() if line.strip()] + entries

    def unmount_original() -> None:
        mnt.unmount(scratch.runner, fs.mount_point)
        scratch.forget_mount(fs.mount_point)

    def mount_original() -> None:
        scratch.mount(fs.device, fs.mount_point, fs_type="btrfs")

    a, b = _hosts(scratch, tmp, "btrfs")
    return Case(a, b, volume, scratch, tmp, leftovers, unmount_original, mount_original)


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest, scratch: Scratch, tmp_path: Path) -> Iterator[Case]:
    kind: str = request.param
    missing = [t for t in TOOLS[kind] if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{kind}: {', '.join(missing)} not installed")
    if kind.startswith("reflink-array/"):
        yield _array_case(scratch, tmp_path, kind.split("/")[1])
    else:
        yield _btrfs_case(scratch, tmp_path)


# -- helpers: every step registers its undo with scratch before the test can fail -------------------------------


def take_snapshot(case: Case, attrs: Attr = Attr.NONE) -> tuple[SnapshotRequest, Locator]:
    """prepare → freeze (if the provider commits under FIFREEZE) → commit → thaw → post_commit."""
    provider = case.provider
    request = SnapshotRequest(uuid.uuid4(), uuid.uuid4(), case.volume, attrs)
    provider.check_request(case.volume, attrs)
    case.scratch.defer(lambda: provider.abort([request]), "abort the snapshot")
    provider.prepare([request])
    freeze = provider.capabilities.commit_while_fs_frozen
    if freeze:
        ioctl.freeze(case.mount_point)
    try:
        locators = provider.commit([request])
    finally:
        if freeze:
            ioctl.thaw(case.mount_point)
    provider.post_commit([request], locators)
    return request, locators[request.snapshot_id]


def import_snapshot(case: Case, provider: Provider, locator: Locator) -> str:
    device = provider.import_snapshot(locator)
    case.scratch.defer(lambda: provider.unimport(locator, device), "unimport")
    return device


def expose(case: Case, provider: Provider, locator: Locator, device: str) -> Path:
    at = case.tmp / f"exposed-{uuid.uuid4().hex[:8]}"
    case.scratch.defer(lambda: provider.unexpose(locator, at), "unexpose")
    provider.expose(locator, device, case.volume.fs_type, at)
    return at


def block_device_read_only(device: str) -> bool:
    return (Path("/sys/class/block") / Path(device).name / "ro").read_text().strip() == "1"


def write_before(case: Case) -> bytes:
    """Files as they must appear in the snapshot; not synced (the commit must make them durable)."""
    blob = os.urandom(1 << 20)
    (case.mount_point / "state.txt").write_text("before\n")
    (case.mount_point / "blob.bin").write_bytes(blob)
    return blob


def write_after(case: Case) -> None:
    (case.mount_point / "state.txt").write_text("after\n")
    (case.mount_point / "blob.bin").write_bytes(os.urandom(1 << 20))


# -- the suite ---------------------------------------------------------------------------------------------------


def test_the_suite_covers_every_registered_provider() -> None:
    assert {c.split("/")[0] for c in CASES} == set(PROVIDERS)


def test_supports_its_volume_and_not_a_plain_ext4_filesystem(case: Case) -> None:
    assert case.provider.is_supported(case.volume)
    plain = case.scratch.filesystem("ext4")
    _, fs_uuid = mnt.fs_identity(case.scratch.runner, plain.device)
    other = Volume(HOST_A, str(plain.mount_point), "ext4", fs_uuid, plain.device)
    assert not case.provider.is_supported(other)
    with pytest.raises(VolumeNotSupported, match=str(plain.mount_point)):
        case.provider.check_request(other, Attr.NONE)


def test_snapshot_holds_the_content_at_the_commit_instant(case: Case) -> None:
    blob = write_before(case)
    _, locator = take_snapshot(case)
    write_after(case)
    assert (case.mount_point / "state.txt").read_text() == "after\n"
    device = import_snapshot(case, case.provider, locator)
    at = expose(case, case.provider, locator, device)
    assert (at / "state.txt").read_text() == "before\n"
    assert (at / "blob.bin").read_bytes() == blob


def test_abort_after_prepare_leaves_nothing(case: Case) -> None:
    request = SnapshotRequest(uuid.uuid4(), uuid.uuid4(), case.volume, Attr.NONE)
    case.scratch.defer(lambda: case.provider.abort([request]), "abort")
    case.provider.prepare([request])
    case.provider.prepare([request])  # idempotent
    case.provider.abort([request])
    assert case.leftovers() == []
    case.provider.abort([request])  # idempotent


def test_abort_after_commit_leaves_nothing(case: Case) -> None:
    request, _ = take_snapshot(case)
    assert case.leftovers() != []
    case.provider.abort([request])
    assert case.leftovers() == []
    case.provider.abort([request])


def test_delete_is_idempotent(case: Case) -> None:
    _, locator = take_snapshot(case)
    assert case.leftovers() != []
    case.provider.delete(locator)
    assert case.leftovers() == []
    case.provider.delete(locator)
    assert case.leftovers() == []


def test_delete_unpresents_an_imported_snapshot(case: Case) -> None:
    _, locator = take_snapshot(case)
    import_snapshot(case, case.provider, locator)
    case.provider.delete(locator)
    assert case.leftovers() == []


def test_expose_is_read_only_and_idempotent(case: Case) -> None:
    write_before(case)
    _, locator = take_snapshot(case)
    device = import_snapshot(case, case.provider, locator)
    assert case.provider.import_snapshot(locator) == device  # a second import returns the same device
    at = expose(case, case.provider, locator, device)
    case.provider.expose(locator, device, case.volume.fs_type, at)
    assert len([m for m in mnt.mounts() if m.mount_point == str(at)]) == 1
    with pytest.raises(OSError) as refused:
        (at / "new.txt").write_text("x")
    assert refused.value.errno == errno.EROFS
    case.provider.unexpose(locator, at)
    assert mnt.mount_at(at) is None
    case.provider.unexpose(locator, at)


def test_transportable_import_on_a_second_host(case: Case) -> None:
    provider, other = case.provider, case.other_host
    if not provider.capabilities.transportable:
        with pytest.raises(UnsupportedContext):
            provider.check_request(case.volume, Attr.TRANSPORTABLE)
        _, locator = take_snapshot(case)
        with pytest.raises(ImportRefused):
            other.import_snapshot(locator)
        return
    blob = write_before(case)
    _, locator = take_snapshot(case, Attr.TRANSPORTABLE)
    write_after(case)
    assert provider.sees_original(locator)
    assert not other.sees_original(locator)
    device = import_snapshot(case, other, locator)
    at = expose(case, other, locator, device)
    assert (at / "state.txt").read_text() == "before\n"
    assert (at / "blob.bin").read_bytes() == blob
    other.unexpose(locator, at)
    other.unimport(locator, device)
    other.unimport(locator, device)  # idempotent
    case.provider.delete(locator)  # refused while another host still has it presented
    assert case.leftovers() == []


def test_break_makes_a_standalone_writable_volume(case: Case) -> None:
    _, locator = take_snapshot(case)
    importer = case.other_host if case.provider.capabilities.transportable else case.provider
    device = import_snapshot(case, importer, locator)
    if not case.provider.capabilities.can_break:
        with pytest.raises(ProviderVeto):
            importer.break_snapshot(locator, device)
        return
    assert block_device_read_only(device)  # imported snapshots are read-only
    standalone = importer.break_snapshot(locator, device)
    case.scratch.defer(lambda: importer.unimport(locator, standalone), "unimport the broken-off volume")
    assert not block_device_read_only(standalone)
    case.provider.delete(locator)  # no longer a snapshot: deleting the snapshot leaves the volume alone
    assert Path(standalone).exists()
    at = case.tmp / "standalone"
    at.mkdir()
    options = ("nouuid",) if case.volume.fs_type == "xfs" else ()
    case.scratch.mount(standalone, at, fs_type=case.volume.fs_type, options=options)
    (at / "written.txt").write_text("mine now\n")


def test_revert_rolls_the_original_back(case: Case) -> None:
    write_before(case)
    _, locator = take_snapshot(case)
    write_after(case)
    if not case.provider.capabilities.can_revert:
        with pytest.raises(ProviderVeto):
            case.provider.revert(locator, case.volume)
        return
    with pytest.raises(ProviderVeto, match="mounted"):
        case.provider.revert(locator, case.volume)
    assert (case.mount_point / "state.txt").read_text() == "after\n"
    case.unmount_original()
    case.provider.revert(locator, case.volume)
    case.mount_original()
    assert (case.mount_point / "state.txt").read_text() == "before\n"


def test_commit_keeps_the_freeze_contract_it_declares(case: Case) -> None:
    """Under FIFREEZE, a provider that declares it commits there must do so well within the bound; one that does
    not must refuse at once rather than hang the set (btrfs would block, unkillable, until the thaw)."""
    provider = case.provider
    request = SnapshotRequest(uuid.uuid4(), uuid.uuid4(), case.volume, Attr.NONE)
    case.scratch.defer(lambda: provider.abort([request]), "abort")
    provider.prepare([request])
    ioctl.freeze(case.mount_point)
    started = time.monotonic()
    try:
        if provider.capabilities.commit_while_fs_frozen:
            assert set(provider.commit([request])) == {request.snapshot_id}
        else:
            with pytest.raises(ProviderError, match="frozen"):
                provider.commit([request])
    finally:
        ioctl.thaw(case.mount_point)
    assert time.monotonic() - started < 5
    provider.abort([request])
    assert case.leftovers() == []
