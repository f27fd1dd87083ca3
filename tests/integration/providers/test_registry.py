"""Choosing a provider: the array before btrfs ("hardware" before "software"), and clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapport.errors import UnsupportedContext, UsageError, VolumeNotSupported
from snapport.model import Attr, Volume
from snapport.osal import mount as mnt
from snapport.osal.runner import RecordingRunner
from snapport.providers.base import ProviderHost
from snapport.providers.reflink_array import Array
from snapport.providers.registry import PROVIDERS, get_provider, provider_for
from tests.conftest import Scratch, needs_tool

HOST = "host-a"


def host(scratch: Scratch, tmp_path: Path) -> ProviderHost:
    return ProviderHost(HOST, tmp_path / "home", scratch.runner)


def test_an_unknown_provider_name_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"unknown provider 'zfs' \(known: reflink-array, ceph-rbd, btrfs\)"):
        get_provider("zfs", ProviderHost(HOST, tmp_path, RecordingRunner()))
    assert list(PROVIDERS) == ["reflink-array", "ceph-rbd", "btrfs"]


@pytest.mark.root
@needs_tool("mkfs.xfs", "mkfs.btrfs", "btrfs")
def test_an_array_lun_holding_btrfs_goes_to_the_array_unless_btrfs_is_preferred(
    scratch: Scratch, tmp_path: Path
) -> None:
    array_fs = scratch.filesystem("xfs", size_mb=1024)
    array = Array.init(array_fs.mount_point / "array", scratch.runner)
    lun = array.create_lun("btrfs-on-a-lun", 256 << 20)
    device = array.present(lun.id, HOST)
    scratch.defer(lambda: array.unpresent(lun.id, HOST), "unpresent")
    scratch.mkfs("btrfs", device)
    mount_point = scratch.mount(device, tmp_path / "vol", fs_type="btrfs")
    volume = Volume(HOST, str(mount_point), "btrfs", mnt.fs_identity(scratch.runner, device)[1], device)
    assert provider_for(volume, host(scratch, tmp_path), Attr.NONE).name == "reflink-array"
    assert provider_for(volume, host(scratch, tmp_path), Attr.TRANSPORTABLE).name == "reflink-array"
    assert provider_for(volume, host(scratch, tmp_path), Attr.NONE, "btrfs").name == "btrfs"


@pytest.mark.root
@needs_tool("mkfs.btrfs", "btrfs")
def test_plain_btrfs_goes_to_btrfs_which_refuses_transportable(scratch: Scratch, tmp_path: Path) -> None:
    fs = scratch.filesystem("btrfs")
    volume = Volume(HOST, str(fs.mount_point), "btrfs", "", fs.device)
    assert provider_for(volume, host(scratch, tmp_path), Attr.NONE).name == "btrfs"
    with pytest.raises(UnsupportedContext, match="btrfs snapshots cannot be transported"):
        provider_for(volume, host(scratch, tmp_path), Attr.TRANSPORTABLE)
    with pytest.raises(VolumeNotSupported, match=f"{fs.mount_point}.*not supported by provider reflink-array"):
        provider_for(volume, host(scratch, tmp_path), Attr.NONE, "reflink-array")


@pytest.mark.root
def test_plain_ext4_is_supported_by_nobody(scratch: Scratch, tmp_path: Path) -> None:
    fs = scratch.filesystem("ext4")
    volume = Volume(HOST, str(fs.mount_point), "ext4", "", fs.device)
    with pytest.raises(VolumeNotSupported, match=f"volume {fs.mount_point} \\(ext4 on {fs.device}\\).*any provider"):
        provider_for(volume, host(scratch, tmp_path), Attr.NONE)
