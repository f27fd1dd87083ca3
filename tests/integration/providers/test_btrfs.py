"""The btrfs provider's own rules on a real btrfs: what counts as a subvolume, and locators from documents."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from snapport.errors import ImportRefused, ProviderVeto
from snapport.model import Attr, Locator, Volume
from snapport.providers.base import ProviderHost, SnapshotRequest
from snapport.providers.btrfs import SNAPSHOT_DIR, BtrfsProvider
from tests.conftest import Scratch, needs_tool

pytestmark = [pytest.mark.root, needs_tool("mkfs.btrfs", "btrfs")]


def btrfs_provider(scratch: Scratch, tmp_path: Path, host: str = "host-a") -> BtrfsProvider:
    return BtrfsProvider(ProviderHost(host, tmp_path / f"home-{host}", scratch.runner))


def test_supports_subvolumes_only(scratch: Scratch, tmp_path: Path) -> None:
    fs = scratch.filesystem("btrfs")
    provider = btrfs_provider(scratch, tmp_path)
    scratch.runner.run(["btrfs", "subvolume", "create", str(fs.mount_point / "nested")])
    (fs.mount_point / "plain").mkdir()
    assert provider.is_supported(Volume("host-a", str(fs.mount_point), "btrfs", "", fs.device))  # the top level
    assert provider.is_supported(Volume("host-a", str(fs.mount_point / "nested"), "btrfs", "", fs.device))
    assert not provider.is_supported(Volume("host-a", str(fs.mount_point / "plain"), "btrfs", "", fs.device))


def test_a_nested_subvolume_is_snapshotted_under_its_own_root(scratch: Scratch, tmp_path: Path) -> None:
    fs = scratch.filesystem("btrfs")
    nested = fs.mount_point / "srv"
    scratch.runner.run(["btrfs", "subvolume", "create", str(nested)])
    (nested / "app.txt").write_text("v1")
    provider = btrfs_provider(scratch, tmp_path)
    request = SnapshotRequest(uuid.uuid4(), uuid.uuid4(), Volume("host-a", str(nested), "btrfs", ""), Attr.NONE)
    scratch.defer(lambda: provider.abort([request]), "abort")
    provider.prepare([request])
    locator = provider.commit([request])[request.snapshot_id]
    (nested / "app.txt").write_text("v2")
    path = Path(provider.import_snapshot(locator))
    assert path == nested / SNAPSHOT_DIR / str(request.snapshot_id)
    assert (path / "app.txt").read_text() == "v1"
    provider.delete(locator)
    assert not path.exists()


def test_locators_naming_paths_outside_a_snapshot_directory_are_refused(scratch: Scratch, tmp_path: Path) -> None:
    fs = scratch.filesystem("btrfs")
    victim = fs.mount_point / "victim"
    scratch.runner.run(["btrfs", "subvolume", "create", str(victim)])
    provider = btrfs_provider(scratch, tmp_path)
    for path in (str(victim), f"{fs.mount_point}/{SNAPSHOT_DIR}/../victim", f"{fs.mount_point}/{SNAPSHOT_DIR}/x"):
        hostile = Locator("btrfs", properties=(("host", "host-a"), ("path", path)))
        with pytest.raises(ProviderVeto, match="is not a snapport btrfs snapshot path"):
            provider.delete(hostile)
        with pytest.raises(ImportRefused, match="is not a snapport btrfs snapshot path"):
            provider.import_snapshot(hostile)
    assert victim.is_dir()


def test_another_host_can_neither_import_nor_delete(scratch: Scratch, tmp_path: Path) -> None:
    fs = scratch.filesystem("btrfs")
    provider = btrfs_provider(scratch, tmp_path)
    request = SnapshotRequest(uuid.uuid4(), uuid.uuid4(), Volume("host-a", str(fs.mount_point), "btrfs", ""), Attr.NONE)
    scratch.defer(lambda: provider.abort([request]), "abort")
    provider.prepare([request])
    locator = provider.commit([request])[request.snapshot_id]
    other = btrfs_provider(scratch, tmp_path, "host-b")
    with pytest.raises(ImportRefused, match="lives in a filesystem of host host-a"):
        other.import_snapshot(locator)
    with pytest.raises(ProviderVeto, match="lives in a filesystem of host host-a"):
        other.delete(locator)
    assert Path(provider.import_snapshot(locator)).is_dir()
    assert not other.sees_original(locator) and provider.sees_original(locator)
