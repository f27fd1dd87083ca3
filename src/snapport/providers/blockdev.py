"""Exposing a snapshot's block device read-only, with what duplicate filesystem identities need.

A snapshot LUN carries the same filesystem identity (UUID, fsid) as its original, and often the original is
mounted on the same host. Each filesystem copes differently (measured on Linux 6.18):

- XFS refuses a second filesystem with a UUID already mounted (`nouuid`), and a snapshot of a *frozen* XFS still
  asks for log recovery, which a read-only device cannot do (`norecovery`; the freeze wrote everything back, so
  nothing is lost by not replaying).
- ext4 would replay its journal (`noload` skips it; a frozen ext4 has an empty journal anyway).
- btrfs registers filesystems by fsid. Since Linux 6.7 a single-device clone gets a temporary fsid
  (`/sys/fs/btrfs/features/temp_fsid`); on older kernels a clone whose fsid is already mounted is refused here.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from snapport.errors import BadState, ProviderVeto, VolumeNotSupported
from snapport.osal import mount as mnt
from snapport.osal.runner import Runner

EXPOSE_OPTIONS: dict[str, tuple[str, ...]] = {
    "xfs": ("ro", "nouuid", "norecovery"),
    "ext4": ("ro", "noload"),
    "ext3": ("ro", "noload"),
    "ext2": ("ro",),
    "btrfs": ("ro",),
}

SYS_BTRFS = Path("/sys/fs/btrfs")


def expose_options(fs_type: str) -> tuple[str, ...]:
    """The read-only mount options for a snapshot of a `fs_type` filesystem."""
    try:
        return EXPOSE_OPTIONS[fs_type]
    except KeyError:
        known = ", ".join(sorted(EXPOSE_OPTIONS))
        raise VolumeNotSupported(
            f"cannot expose a {fs_type or 'unknown'} filesystem read-only (known: {known})"
        ) from None


def mounts_of(device: str) -> list[mnt.MountInfo]:
    """The mounts of this namespace whose source is `device` (by path, or by device number for block devices)."""
    try:
        st = Path(device).stat()
    except FileNotFoundError:
        return []
    number = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if stat.S_ISBLK(st.st_mode) else None
    real = os.path.realpath(device)
    return [m for m in mnt.mounts() if m.source in (device, real) or (number is not None and m.dev == number)]


def refuse_if_mounted(device: str, doing: str) -> None:
    """Raise `BadState` if `device` is mounted: detaching a mounted loop device only defers the detach."""
    found = mounts_of(device)
    if found:
        raise BadState(f"cannot {doing}: {device} is mounted at {found[0].mount_point}; unmount (unexpose) it first")


def _refuse_duplicate_btrfs(runner: Runner, device: str) -> None:
    if (SYS_BTRFS / "features" / "temp_fsid").exists():
        return  # the kernel gives the clone a temporary fsid
    _, fsid = mnt.fs_identity(runner, device)
    if fsid and (SYS_BTRFS / fsid).exists():
        raise ProviderVeto(
            f"cannot expose {device}: a btrfs filesystem with the same fsid {fsid} is mounted on this host and this "
            "kernel has no btrfs temp-fsid support (Linux 6.7+); expose it on another host or unmount the original"
        )


def expose_device(runner: Runner, device: str, fs_type: str, at: Path) -> None:
    """Mount `device` read-only at `at` (created if missing); idempotent when it is already mounted there."""
    options = expose_options(fs_type)
    current = mnt.mount_at(at)
    if current is not None:
        if current.source in (device, os.path.realpath(device)):
            return
        raise BadState(f"cannot expose {device} at {at}: {current.source} is mounted there")
    if fs_type == "btrfs":
        _refuse_duplicate_btrfs(runner, device)
    at.mkdir(parents=True, exist_ok=True)
    mnt.mount(runner, device, at, fs_type=fs_type, options=options)


def unexpose(runner: Runner, at: Path) -> None:
    """Unmount exactly `at`; idempotent. The directory stays."""
    mnt.unmount(runner, at)
