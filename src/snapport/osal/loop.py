"""Loop devices: how a LUN image is presented to a host as a block device."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

from snapport.errors import SystemCommandError
from snapport.osal.runner import Runner

_LOOP = re.compile(r"^/dev/loop(\d+)$")


@dataclass(frozen=True, slots=True)
class LoopDevice:
    device: str
    backing_file: str
    read_only: bool


def _sys_dir(device: str) -> Path:
    if not _LOOP.match(device):
        raise SystemCommandError(f"{device!r} is not a loop device path")
    return Path("/sys/block") / device.removeprefix("/dev/") / "loop"


def attach(
    runner: Runner, image: Path, *, read_only: bool = False, direct_io: bool = False, device: str | None = None
) -> str:
    """Attach `image` to a free loop device (or to `device`, which must be free) and return its path (e.g.
    /dev/loop7). `direct_io`: the loop device reads and writes the image with O_DIRECT, past the page cache of the
    filesystem holding it (for an image served by a FUSE daemon, whose cached pages could outlive a change the
    daemon made)."""
    if device is not None:
        _sys_dir(device)  # a loop device path, or refused
    where = [device] if device is not None else ["--find"]
    argv = ["losetup", *where, "--show"] + (["--read-only"] if read_only else [])
    argv += (["--direct-io=on"] if direct_io else []) + [str(image)]
    device = runner.run(argv, timeout=30).stdout.strip()
    if not _LOOP.match(device):
        raise SystemCommandError(f"losetup returned {device!r} for {image}")
    return device


def backing_file(device: str) -> str | None:
    """The image behind `device`, or None if it is not attached."""
    try:
        return (_sys_dir(device) / "backing_file").read_text().strip()
    except FileNotFoundError:
        return None


def detach(runner: Runner, device: str, *, wait_s: float = 10.0) -> bool:
    """Detach `device`; idempotent (False when it was not attached). Never touches another device.

    While anyone else holds the device open (a scan by blkid or btrfs from another process is enough), the
    kernel only marks it to detach on last close; so this waits up to `wait_s` for the image to be let go, lest
    the filesystem holding the image be found busy just after.
    """
    image = backing_file(device)
    if image is None:
        return False
    runner.run(["losetup", "--detach", device], timeout=30)
    deadline = time.monotonic() + wait_s
    while backing_file(device) == image and time.monotonic() < deadline:
        time.sleep(0.01)
    return True


def attached(runner: Runner) -> list[LoopDevice]:
    """Every attached loop device on this host."""
    out = runner.run(["losetup", "--list", "--json", "--output", "NAME,BACK-FILE,RO"], timeout=30).stdout
    if not out.strip():
        return []
    rows = json.loads(out).get("loopdevices", [])
    return [
        LoopDevice(
            device=str(r["name"]),
            backing_file=str(r.get("back-file") or "").removesuffix(" (deleted)"),
            read_only=str(r.get("ro")) in ("1", "True", "true"),
        )
        for r in rows
    ]


def devices_for(runner: Runner, image: Path) -> list[str]:
    """The loop devices presenting `image` on this host."""
    target = str(image.resolve())
    return [d.device for d in attached(runner) if d.backing_file == target]
