"""One conformance suite for every provider in the registry (restic's habit): real volumes, real snapshots.

Each case builds a real volume its provider supports; every test runs against every case. Capability-gated
tests check the capability when it is declared and the refusal when it is not. The reconciliation methods are
exercised with leftovers planted for real, as a crash leaves them (per provider: `PLANTERS`).
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
from snapport.model import Attr, Context, Locator, SetState, Snapshot, SnapshotSet, Volume
from snapport.osal import ioctl, loop
from snapport.osal import mount as mnt
from snapport.providers.base import CatalogView, Leftover, Presentations, Provider, ProviderHost, SnapshotRequest
from snapport.providers.btrfs import SNAPSHOT_DIR, owner_file
from snapport.providers.ceph_rbd import CephRbdProvider, ImageRef
from snapport.providers.ceph_rbd.presentation import FusePresenter
from snapport.providers.ceph_rbd.records import clone_of
from snapport.providers.reflink_array import Array
from snapport.providers.registry import PROVIDERS, get_provider
from tests.conftest import Scratch
from tests.support.ceph import Admin, client_home

pytestmark = [pytest.mark.root]

HOST_A, HOST_B = "host-a", "host-b"
CASES = ["reflink-array/xfs", "reflink-array/ext4", "ceph-rbd", "btrfs"]
TOOLS = {
    "reflink-array/xfs": ("mkfs.xfs", "losetup"),
    "reflink-array/ext4": ("mkfs.xfs", "mkfs.ext4", "losetup"),
    "ceph-rbd": ("mkfs.xfs", "losetup", "rbd-fuse"),
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
    presented: str | None = None  # the device the provider presents the volume at to its host, if it presents one
    array: Array | None = None
    ceph: Admin | None = None

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
    return Case(a, b, volume, scratch, tmp, leftovers, unmount_original, mount_original, device, array)


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


def _ceph_case(scratch: Scratch, tmp: Path, request: pytest.FixtureRequest) -> Case:
    """An RBD image of a real cluster, presented to host A through rbd-fuse and a loop device, with XFS on it."""
    site = request.getfixturevalue("ceph_site")
    admin = Admin(site)
    name = f"case-{uuid.uuid4().hex[:8]}"
    ref = admin.create(name, 320 << 20)
    a = CephRbdProvider(ProviderHost(HOST_A, client_home(tmp / "home-a", site), scratch.runner))
    b = CephRbdProvider(ProviderHost(HOST_B, client_home(tmp / "home-b", site), scratch.runner))

    def ours() -> list[str]:
        return [n for n in admin.images() if n == name or n.startswith((f"{name}.", f"{name}-"))]

    def remove_all() -> None:
        for provider in (a, b):
            for presented in provider.mine():
                if presented.image.name in ours():
                    provider.presenter.unpresent(presented.image)
        for image in sorted(ours(), key=lambda n: n == name):  # the clones before their parent
            admin.remove(image)
        admin.close()

    scratch.defer(remove_all, "unpresent and remove the case's images")
    device = a.presenter.present(ref, read_only=False)
    scratch.mkfs("xfs", device)
    mount_point = scratch.mount(device, tmp / "volume", fs_type="xfs")
    _, fs_uuid = mnt.fs_identity(scratch.runner, device)
    volume = Volume(HOST_A, str(mount_point), "xfs", fs_uuid, device)

    def leftovers() -> list[str]:
        snaps = [f"snapshot {s}" for s in admin.snapshots(name)]
        records = [f"record {k}" for k in admin.metadata(name) if k.startswith("snapport.")]
        images = [f"image {n}" for n in ours() if n.startswith((f"{name}.set-", f"{name}.broken-"))]
        presented = [f"presented {p.image} at {p.device}" for p in a.mine() + b.mine() if p.image.name != name]
        return snaps + records + images + presented

    def unmount_original() -> None:
        mnt.unmount(scratch.runner, mount_point)
        scratch.forget_mount(mount_point)

    def mount_original() -> None:
        scratch.mount(device, mount_point, fs_type="xfs")

    return Case(a, b, volume, scratch, tmp, leftovers, unmount_original, mount_original, device, ceph=admin)


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest, scratch: Scratch, tmp_path: Path) -> Iterator[Case]:
    kind: str = request.param
    missing = [t for t in TOOLS[kind] if shutil.which(t) is None]
    if missing:
        pytest.skip(f"{kind}: {', '.join(missing)} not installed")
    if kind.startswith("reflink-array/"):
        yield _array_case(scratch, tmp_path, kind.split("/")[1])
    elif kind == "ceph-rbd":
        yield _ceph_case(scratch, tmp_path, request)
    else:
        yield _btrfs_case(scratch, tmp_path)


# -- helpers: every step registers its undo with scratch before the test can fail -------------------------------


def take_snapshot(
    case: Case, attrs: Attr = Attr.NONE, *, provider: Provider | None = None, volume: Volume | None = None
) -> tuple[SnapshotRequest, Locator]:
    """prepare → freeze (if the provider commits under FIFREEZE and the volume is the case's) → commit → thaw →
    post_commit; by the case's provider of its volume unless told otherwise."""
    provider = provider or case.provider
    volume = volume or case.volume
    request = SnapshotRequest(uuid.uuid4(), uuid.uuid4(), volume, attrs)
    provider.check_request(volume, attrs)
    case.scratch.defer(lambda: provider.abort([request]), "abort the snapshot")
    provider.prepare([request])
    freeze = provider.capabilities.commit_while_fs_frozen and volume.mount_point == case.volume.mount_point
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


# -- reconciliation: leftovers planted for real, as a crash leaves them -----------------------------------------


@dataclass(frozen=True)
class Planted:
    """A leftover planted for real: the kind and exact id it must be reported by, and whether it is gone."""

    kind: str
    object: str
    gone: Callable[[], bool]


def recorded(
    request: SnapshotRequest,
    locator: Locator,
    state: SetState,
    *,
    host: str = HOST_A,
    imported: bool = False,
    device: str | None = None,
) -> SnapshotSet:
    """A catalog's record of the set of one snapshot, in `state`, on `host`."""
    attrs = Attr.IMPORTED if imported else Attr.NONE
    snapshot = Snapshot(request.snapshot_id, request.set_id, request.volume, locator, attrs, device=device)
    return SnapshotSet(request.set_id, Context.BACKUP, attrs, state, request.volume.host, host, snapshots=(snapshot,))


def view(*sets: SnapshotSet) -> CatalogView:
    return CatalogView(sets)


def reported(provider: Provider, known: CatalogView) -> list[tuple[str, str]]:
    listed = provider.leftovers(known)
    assert all(x.provider == provider.name and x.detail for x in listed), listed
    return sorted((x.kind, x.object) for x in listed)


def lun_gone(array: Array, lun_id: str) -> Callable[[], bool]:
    return lambda: array.find(lun_id) is None and not array.image(lun_id).exists()


def snapshot_gone(path: Path) -> Callable[[], bool]:
    return lambda: not path.exists() and not owner_file(path).exists()


def _plant_array(case: Case) -> tuple[CatalogView, list[Planted]]:
    """In the array: a snapshot LUN whose set the catalog has deleted (a crash mid-delete) and one whose set it
    never recorded; a loop device of one of its images that nobody records; a presentation whose loop device went
    away behind the array's back; an image no LUN describes (a crash between making and recording it)."""
    array, runner = case.array, case.scratch.runner
    assert array is not None
    deleted_request, deleted = take_snapshot(case)
    _, absent = take_snapshot(case)
    assert deleted.destination is not None and absent.destination is not None
    deleted_lun, absent_lun = deleted.destination.lun_id, absent.destination.lun_id
    stray = loop.attach(runner, array.image(deleted_lun))  # detached at the end by the case if the test fails
    stale = array.present(absent_lun, HOST_A, read_only=True)
    loop.detach(runner, stale)
    orphan = array.path / "luns" / f"{uuid.uuid4().hex[:12]}.img"
    orphan.write_bytes(b"\0" * 4096)
    planted = [
        Planted("presentation", str(array.path), lambda: array.stale_presentations(HOST_A) == []),
        Planted("loop-device", stray, lambda: loop.backing_file(stray) is None),
        Planted("snapshot-lun", deleted_lun, lun_gone(array, deleted_lun)),
        Planted("snapshot-lun", absent_lun, lun_gone(array, absent_lun)),
        Planted("image", str(orphan), lambda: not orphan.exists()),
    ]
    return view(recorded(deleted_request, deleted, SetState.DELETED)), planted


def _plant_btrfs(case: Case) -> tuple[CatalogView, list[Planted]]:
    """In the volume's snapshot directory: a snapshot whose set the catalog has deleted, one whose set it never
    recorded, an owner file whose snapshot was never taken (a crash between prepare and commit, its set lost),
    and a snapshot with no owner file (made before snapport wrote them)."""
    runner = case.scratch.runner
    deleted_request, deleted = take_snapshot(case)
    _, absent = take_snapshot(case)
    never = SnapshotRequest(uuid.uuid4(), uuid.uuid4(), case.volume, Attr.NONE)
    case.scratch.defer(lambda: case.provider.abort([never]), "abort the snapshot never taken")
    case.provider.prepare([never])
    never_owner = owner_file(case.mount_point / SNAPSHOT_DIR / str(never.snapshot_id))
    legacy = case.mount_point / SNAPSHOT_DIR / str(uuid.uuid4())
    runner.run(["btrfs", "subvolume", "snapshot", "-r", str(case.mount_point), str(legacy)])
    case.scratch.defer(lambda: _delete_subvolume(case, legacy), "delete the snapshot with no owner file")
    deleted_path, absent_path = Path(deleted.property("path") or ""), Path(absent.property("path") or "")
    planted = [
        Planted("snapshot-subvolume", str(deleted_path), snapshot_gone(deleted_path)),
        Planted("snapshot-subvolume", str(absent_path), snapshot_gone(absent_path)),
        Planted("snapshot-owner", str(never_owner), lambda: not never_owner.exists()),
        Planted("snapshot-subvolume", str(legacy), lambda: not legacy.exists()),
    ]
    return view(recorded(deleted_request, deleted, SetState.DELETED)), planted


def _delete_subvolume(case: Case, path: Path) -> None:
    if path.exists():
        case.scratch.runner.run(["btrfs", "subvolume", "delete", str(path)])


@dataclass(frozen=True)
class Foreign:
    """Objects that are not this host's to judge: another host's (with that host's catalog, which reports them)
    and some outside anything the catalog names (nobody's: they must stay)."""

    theirs: CatalogView
    planted: list[Planted]
    outside: list[Callable[[], bool]]  # each: the object is still there


def _foreign_array(case: Case) -> Foreign:
    """Host B's snapshot of B's own LUN and a presentation to B whose device went away; and another array on the
    machine, which no set of A's names, with an image no LUN describes."""
    array, runner = case.array, case.scratch.runner
    assert array is not None
    lun_b = array.create_lun("b-data", 64 << 20)
    device_b = array.present(lun_b.id, HOST_B)
    volume_b = Volume(HOST_B, str(case.tmp / "volume-b"), "ext4", "", device_b)
    b_request, b_locator = take_snapshot(case, provider=case.other_host, volume=volume_b)
    assert b_locator.destination is not None
    gone_b = array.create_lun("b-gone", 1 << 20)
    loop.detach(runner, array.present(gone_b.id, HOST_B))
    other = Array.init(array.path.parent / "another-array", runner)
    orphan = other.path / "luns" / f"{uuid.uuid4().hex[:12]}.img"
    orphan.write_bytes(b"\0" * 4096)
    b_lun = b_locator.destination.lun_id
    planted = [
        Planted("presentation", str(array.path), lambda: array.stale_presentations(HOST_B) == []),
        Planted("snapshot-lun", b_lun, lun_gone(array, b_lun)),
    ]
    theirs = view(recorded(b_request, b_locator, SetState.DELETED, host=HOST_B))
    return Foreign(theirs, planted, [orphan.exists, lambda: array.find(lun_b.id) is not None])


def _foreign_btrfs(case: Case) -> Foreign:
    """Host B's snapshot in the same filesystem (another home on this machine); an entry of the snapshot
    directory not named as snapport names them; and a btrfs that no set of A's names, with a subvolume where a
    snapshot of A's would be."""
    runner = case.scratch.runner
    volume_b = Volume(HOST_B, case.volume.mount_point, "btrfs", case.volume.fs_uuid, case.volume.device)
    b_request, b_locator = take_snapshot(case, provider=case.other_host, volume=volume_b)
    notes = case.mount_point / SNAPSHOT_DIR / "notes"
    notes.mkdir()
    elsewhere = case.scratch.filesystem("btrfs")
    (elsewhere.mount_point / SNAPSHOT_DIR).mkdir()
    unnamed = elsewhere.mount_point / SNAPSHOT_DIR / str(uuid.uuid4())
    runner.run(["btrfs", "subvolume", "snapshot", "-r", str(elsewhere.mount_point), str(unnamed)])
    b_path = Path(b_locator.property("path") or "")
    planted = [Planted("snapshot-subvolume", str(b_path), snapshot_gone(b_path))]
    theirs = view(recorded(b_request, b_locator, SetState.DELETED, host=HOST_B))
    return Foreign(theirs, planted, [notes.is_dir, unnamed.exists])


def _ceph_provider(case: Case) -> tuple[CephRbdProvider, Admin, ImageRef]:
    assert isinstance(case.provider, CephRbdProvider) and case.ceph is not None
    image = case.provider.image_of(case.volume)
    assert image is not None
    return case.provider, case.ceph, image


def _plant_ceph(case: Case) -> tuple[CatalogView, list[Planted]]:
    """In the cluster: a snapshot whose set the catalog has deleted, with this host's import of it still
    presented (a crash mid-delete); a snapshot whose set it never recorded; a record whose snapshot was never
    taken (a crash between prepare and commit); and on this host an rbd-fuse mount with no loop device on it (a
    present cut short)."""
    provider, admin, image = _ceph_provider(case)
    deleted_request, deleted = take_snapshot(case, Attr.TRANSPORTABLE)
    _, absent = take_snapshot(case)
    import_snapshot(case, provider, deleted)
    never = SnapshotRequest(uuid.uuid4(), uuid.uuid4(), case.volume, Attr.NONE)
    case.scratch.defer(lambda: provider.abort([never]), "abort the snapshot never taken")
    provider.prepare([never])
    stray = admin.create(f"{image.name}-stray", 16 << 20)
    presenter = provider.presenter
    assert isinstance(presenter, FusePresenter)
    presenter.serve(stray)
    point = presenter.mount_point(stray)
    clone = clone_of(image, deleted_request.set_id)

    def snapshot_gone(locator: Locator) -> Callable[[], bool]:
        name = locator.property("snapshot") or ""
        return lambda: (
            name not in admin.snapshots(image.name)
            and not [k for k in admin.metadata(image.name) if k.endswith(name.removeprefix("snapport-"))]
        )

    planted = [
        Planted("rbd-clone", str(clone), lambda: clone.name not in admin.images()),
        Planted("rbd-snapshot", f"{image}@{deleted.property('snapshot')}", snapshot_gone(deleted)),
        Planted("rbd-snapshot", f"{image}@{absent.property('snapshot')}", snapshot_gone(absent)),
        Planted(
            "rbd-snapshot-record",
            f"{image}#{never.snapshot_id}",
            lambda: f"snapport.snapshot.{never.snapshot_id}" not in admin.metadata(image.name),
        ),
        Planted("rbd-fuse-mount", str(point), lambda: mnt.mount_at(point) is None),
    ]
    return view(recorded(deleted_request, deleted, SetState.DELETED)), planted


def _foreign_ceph(case: Case) -> Foreign:
    """Host B's snapshot of an image B presents (another home on this machine), ended in B's catalog; and an
    image no set of A's names, with a snapshot named as snapport names them."""
    _, admin, image = _ceph_provider(case)
    other = case.other_host
    assert isinstance(other, CephRbdProvider)
    theirs_ref = admin.create(f"{image.name}-b", 64 << 20)
    device_b = other.presenter.present(theirs_ref, read_only=False)
    volume_b = Volume(HOST_B, str(case.tmp / "volume-b"), "xfs", "", device_b)
    b_request, b_locator = take_snapshot(case, provider=other, volume=volume_b)
    unnamed = admin.create(f"{image.name}-unnamed", 16 << 20)
    with admin.rbd.Image(admin.io, unnamed.name) as handle:
        handle.create_snap(f"snapport-{uuid.uuid4()}")
    name = b_locator.property("snapshot")
    planted = [Planted("rbd-snapshot", f"{theirs_ref}@{name}", lambda: name not in admin.snapshots(theirs_ref.name))]
    theirs = view(recorded(b_request, b_locator, SetState.DELETED, host=HOST_B))
    return Foreign(theirs, planted, [lambda: admin.snapshots(unnamed.name) != []])


PLANTERS: dict[str, Callable[[Case], tuple[CatalogView, list[Planted]]]] = {
    "reflink-array": _plant_array,
    "ceph-rbd": _plant_ceph,
    "btrfs": _plant_btrfs,
}
FOREIGNERS: dict[str, Callable[[Case], Foreign]] = {
    "reflink-array": _foreign_array,
    "ceph-rbd": _foreign_ceph,
    "btrfs": _foreign_btrfs,
}


def test_every_provider_has_leftovers_planted() -> None:
    assert set(PLANTERS) == set(FOREIGNERS) == set(PROVIDERS)


def test_leftovers_a_crash_leaves_are_found_and_removed_by_exact_id(case: Case) -> None:
    known, planted = PLANTERS[case.provider.name](case)
    listed = case.provider.leftovers(known)
    assert reported(case.provider, known) == sorted((p.kind, p.object) for p in planted)
    assert [p.object for p in planted if p.gone()] == []  # listing changes nothing
    assert case.provider.leftovers(known) == listed
    for leftover in listed:  # in the order listed, as reconciliation removes them
        assert case.provider.remove_leftover(leftover, known)
        assert not [x for x in case.provider.leftovers(known) if (x.kind, x.object) == (leftover.kind, leftover.object)]
    assert [p.object for p in planted if not p.gone()] == []
    assert case.provider.leftovers(known) == ()
    assert case.leftovers() == []
    for leftover in listed:  # idempotent: what is gone is left alone
        case.provider.remove_leftover(leftover, known)
    assert case.leftovers() == []


def test_a_live_sets_objects_and_another_hosts_are_never_reported(case: Case) -> None:
    request, locator = take_snapshot(case)
    device = import_snapshot(case, case.provider, locator)
    mine = view(recorded(request, locator, SetState.CREATED, device=device))
    foreign = FOREIGNERS[case.provider.name](case)
    assert case.provider.leftovers(mine) == ()
    # ... yet they are leftovers to their own host, which removes them: the check above could have failed.
    assert reported(case.other_host, foreign.theirs) == sorted((p.kind, p.object) for p in foreign.planted)
    for leftover in case.other_host.leftovers(foreign.theirs):
        case.other_host.remove_leftover(leftover, foreign.theirs)
    assert [p.object for p in foreign.planted if not p.gone()] == []
    assert all(still() for still in foreign.outside)
    assert case.provider.import_snapshot(locator) == device  # the live snapshot is untouched
    assert case.provider.leftovers(mine) == ()


def test_a_leftover_whose_set_is_recorded_meanwhile_is_left_alone(case: Case) -> None:
    """The listing saw a snapshot whose set the catalog did not record yet (a creation starting); the removal,
    given the catalog read again, finds the set live and leaves the snapshot alone."""
    anchor_request, anchor = take_snapshot(case)
    request, locator = take_snapshot(case)
    before = view(recorded(anchor_request, anchor, SetState.CREATED))
    (listed,) = case.provider.leftovers(before)
    after = view(*before.sets, recorded(request, locator, SetState.CREATED))
    assert "left alone" in case.provider.remove_leftover(listed, after)
    import_snapshot(case, case.provider, locator)  # still there, whole
    assert case.provider.leftovers(after) == ()


def test_an_importer_releases_only_its_own_presentation_of_an_ended_set(case: Case) -> None:
    provider, importer = case.provider, case.other_host
    transportable = provider.capabilities.transportable
    request, locator = take_snapshot(case, Attr.TRANSPORTABLE if transportable else Attr.NONE)
    maker = view(recorded(request, locator, SetState.CREATED))
    if not transportable:  # nothing of it can be on another host: it is never another host's leftover
        ended = view(recorded(request, locator, SetState.DELETED, host=HOST_B, imported=True))
        assert importer.leftovers(ended) == ()
        return
    device = import_snapshot(case, importer, locator)
    ended = view(recorded(request, locator, SetState.DELETED, host=HOST_B, imported=True, device=device))
    if case.array is not None:
        assert locator.destination is not None
        expected, still_the_makers = ("snapshot-lun", locator.destination.lun_id), case.array.find
    else:  # ceph-rbd: the importer's object is its clone; the snapshot is the maker's
        _, admin, image = _ceph_provider(case)
        expected = ("rbd-clone", str(clone_of(image, request.set_id)))
        snapshots = lambda _key: locator.property("snapshot") in admin.snapshots(image.name)  # noqa: E731
        still_the_makers = snapshots
    assert reported(importer, ended) == [expected]
    assert provider.leftovers(maker) == ()
    (leftover,) = importer.leftovers(ended)
    importer.remove_leftover(leftover, ended)
    assert loop.backing_file(device) is None
    assert still_the_makers(expected[1]) is not None and still_the_makers(expected[1]) is not False
    assert importer.leftovers(ended) == ()
    provider.delete(locator)
    assert case.leftovers() == []


def test_presentations_and_lock_files_come_from_what_the_catalog_names(case: Case) -> None:
    request, locator = take_snapshot(case)
    known = view(recorded(request, locator, SetState.CREATED))
    mine, theirs = case.provider.presentations(known), case.other_host.presentations(known)
    assert case.provider.presentations(view()) == Presentations()  # a catalog that names nothing: nothing looked at
    assert case.provider.lock_files(view()) == ()
    if case.presented is None:
        assert mine == theirs == Presentations()
        assert case.provider.lock_files(known) == ()
        return
    assert case.presented in mine.here and case.presented not in mine.elsewhere
    assert case.presented in theirs.elsewhere and case.presented not in theirs.here
    locks = case.provider.lock_files(known)
    assert locks and all(path.exists() for path in locks)


def test_a_leftover_of_another_provider_is_refused(case: Case) -> None:
    alien = Leftover("another-provider", "snapshot-lun", "0123456789ab", "not this provider's")
    with pytest.raises(ProviderError, match="is not a leftover of"):
        case.provider.remove_leftover(alien, view())
