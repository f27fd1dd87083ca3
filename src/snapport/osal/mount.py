"""Mounts: reading the mount table, mounting and unmounting by exact path, filesystem identities.

`MountTable` is the part of this a coordinator's `Host` reads (`ProcMountTable`, the real one, over
/proc/self/mountinfo); a unit test gives the host a table of its own instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from snapport.osal.runner import Runner


@dataclass(frozen=True, slots=True)
class MountInfo:
    """One line of /proc/self/mountinfo."""

    mount_point: str
    source: str
    fs_type: str
    options: tuple[str, ...]
    dev: str  # major:minor

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    return field.encode().decode("unicode_escape") if "\\" in field else field


def mounts() -> list[MountInfo]:
    """The mount table of this process's mount namespace."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        parts, tail = left.split(), right.split()
        found.append(
            MountInfo(
                mount_point=_unescape(parts[4]),
                source=_unescape(tail[1]) if len(tail) > 1 else "",
                fs_type=tail[0],
                options=tuple(parts[5].split(",")) + tuple(tail[2].split(",") if len(tail) > 2 else ()),
                dev=parts[2],
            )
        )
    return found


def mount_at(path: str | Path) -> MountInfo | None:
    """What is mounted exactly at `path` (the topmost mount), or None."""
    target = os.path.realpath(path)
    hits = [m for m in mounts() if m.mount_point == target]
    return hits[-1] if hits else None


def containing_mount(path: str | Path) -> MountInfo:
    """The mount that holds `path` (the longest mount point that is a prefix of it)."""
    target = os.path.realpath(path)
    best: MountInfo | None = None
    for m in mounts():
        prefix = m.mount_point.rstrip("/") + "/"
        if (target == m.mount_point or target.startswith(prefix) or m.mount_point == "/") and (
            best is None or len(m.mount_point) >= len(best.mount_point)
        ):
            best = m
    assert best is not None  # "/" is always mounted
    return best


def mount(
    runner: Runner,
    source: str,
    target: Path,
    *,
    fs_type: str | None = None,
    options: Sequence[str] = (),
    read_only: bool = False,
) -> None:
    opts = list(options) + (["ro"] if read_only else [])
    argv = ["mount"] + (["-t", fs_type] if fs_type else []) + (["-o", ",".join(opts)] if opts else [])
    runner.run([*argv, source, str(target)], timeout=60)


def unmount(runner: Runner, target: Path) -> bool:
    """Unmount exactly `target`; idempotent (False when nothing was mounted there)."""
    if mount_at(target) is None:
        return False
    runner.run(["umount", str(target)], timeout=60)
    return True


def fs_identity(runner: Runner, device: str) -> tuple[str, str]:
    """(filesystem type, UUID) read from the device itself, bypassing blkid's cache."""
    out = runner.run(["blkid", "-p", "-o", "export", device], timeout=30, check=False).stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return values.get("TYPE", ""), values.get("UUID", "")


class MountTable(Protocol):
    """What is mounted where, and what a device holds: what `Host.volume` reads to describe a volume."""

    def mount_at(self, path: str | Path) -> MountInfo | None:
        """What is mounted exactly at `path` (the topmost mount), or None."""
        ...

    def containing_mount(self, path: str | Path) -> MountInfo:
        """The mount that holds `path`."""
        ...

    def fs_identity(self, runner: Runner, device: str) -> tuple[str, str]:
        """(filesystem type, UUID) of the filesystem on `device`."""
        ...


class ProcMountTable:
    """The real `MountTable`: this process's mount namespace, and blkid for identities."""

    def mount_at(self, path: str | Path) -> MountInfo | None:
        return mount_at(path)

    def containing_mount(self, path: str | Path) -> MountInfo:
        return containing_mount(path)

    def fs_identity(self, runner: Runner, device: str) -> tuple[str, str]:
        return fs_identity(runner, device)
