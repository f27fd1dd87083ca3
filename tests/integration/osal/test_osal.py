"""The OS door on real devices: loop devices, mounts, FICLONE and the freeze guard's thaw guarantee."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapport.errors import SystemCommandError
from snapport.osal import ioctl, loop
from snapport.osal import mount as mnt
from snapport.osal.freeze_guard import FreezeGuard
from snapport.osal.lock import FileLock
from tests.conftest import Scratch, needs_tool

pytestmark = [pytest.mark.root]


def _start_write(path: Path) -> subprocess.Popen[bytes]:
    """A process making one synced write to `path` (on a frozen filesystem it blocks until the thaw)."""
    code = f"import os; f=os.open({str(path)!r}, os.O_WRONLY|os.O_CREAT); os.write(f, b'x'); os.fsync(f)"
    return subprocess.Popen([sys.executable, "-c", code])


def _blocked(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        return True


def test_loop_attach_read_only_and_detach(scratch: Scratch) -> None:
    image = scratch.image("plain", 8)
    device = scratch.loop(image, read_only=True)
    assert loop.backing_file(device) == str(image)
    assert device in loop.devices_for(scratch.runner, image)
    assert [d.read_only for d in loop.attached(scratch.runner) if d.device == device] == [True]
    assert loop.detach(scratch.runner, device) is True
    assert loop.detach(scratch.runner, device) is False  # idempotent
    scratch.forget_loop(device)


def test_mount_table_and_identity(scratch: Scratch) -> None:
    fs = scratch.filesystem("ext4")
    info = mnt.mount_at(fs.mount_point)
    assert info is not None and info.source == fs.device and info.fs_type == "ext4"
    (fs.mount_point / "sub").mkdir()
    assert mnt.containing_mount(fs.mount_point / "sub").mount_point == str(fs.mount_point)
    fs_type, fs_uuid = mnt.fs_identity(scratch.runner, fs.device)
    assert fs_type == "ext4" and len(fs_uuid) == 36


@needs_tool("mkfs.xfs")
def test_reflink_on_xfs_and_refusal_on_ext4(scratch: Scratch) -> None:
    xfs = scratch.filesystem("xfs")
    source = xfs.mount_point / "a.img"
    source.write_bytes(os.urandom(1 << 20))
    ioctl.reflink(source, xfs.mount_point / "b.img")
    assert (xfs.mount_point / "b.img").read_bytes() == source.read_bytes()
    with pytest.raises(SystemCommandError, match="exists"):
        ioctl.reflink(source, xfs.mount_point / "b.img")  # never overwrites
    ext4 = scratch.filesystem("ext4")
    (ext4.mount_point / "a").write_bytes(b"x" * 4096)
    with pytest.raises(SystemCommandError, match="cannot reflink"):
        ioctl.reflink(ext4.mount_point / "a", ext4.mount_point / "b")
    assert not (ext4.mount_point / "b").exists()


def test_freeze_guard_freezes_and_thaws_on_request(scratch: Scratch) -> None:
    fs = scratch.filesystem("ext4")
    with FreezeGuard([fs.mount_point]) as guard:
        guard.freeze(timeout_s=30, answer_within_s=10)
        assert ioctl.is_frozen(fs.mount_point)
        writer = _start_write(fs.mount_point / "probe")
        assert _blocked(writer, 0.5)
    assert guard.thaw_reason == "asked"
    assert not _blocked(writer, 10)
    assert not ioctl.is_frozen(fs.mount_point)


def test_freeze_guard_thaws_on_its_own_timeout(scratch: Scratch) -> None:
    fs = scratch.filesystem("ext4")
    guard = FreezeGuard([fs.mount_point])
    guard.freeze(timeout_s=1, answer_within_s=10)
    started = time.monotonic()
    while ioctl.is_frozen(fs.mount_point):
        assert time.monotonic() - started < 10
        time.sleep(0.05)
    assert guard.thaw() == "timeout"


def test_freeze_guard_refuses_an_already_frozen_filesystem(scratch: Scratch) -> None:
    fs = scratch.filesystem("ext4")
    ioctl.freeze(fs.mount_point)
    try:
        guard = FreezeGuard([fs.mount_point])
        with pytest.raises(SystemCommandError, match="already frozen"):
            guard.freeze(timeout_s=5, answer_within_s=10)
        guard.close()
        assert ioctl.is_frozen(fs.mount_point)  # not ours: left as it was
    finally:
        ioctl.thaw(fs.mount_point)


def test_sigkill_of_the_coordinator_thaws_at_once(scratch: Scratch) -> None:
    fs = scratch.filesystem("ext4")
    code = (
        "import sys, time; from pathlib import Path; from snapport.osal.freeze_guard import FreezeGuard\n"
        f"g = FreezeGuard([Path({str(fs.mount_point)!r})]); g.freeze(timeout_s=60, answer_within_s=10)\n"
        "print('frozen', flush=True); time.sleep(120)\n"
    )
    coordinator = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert coordinator.stdout is not None
    assert coordinator.stdout.readline().strip() == "frozen"
    assert ioctl.is_frozen(fs.mount_point)
    coordinator.kill()
    coordinator.wait()
    started = time.monotonic()
    while ioctl.is_frozen(fs.mount_point):
        assert time.monotonic() - started < 5, "the guard did not thaw after its coordinator died"
        time.sleep(0.02)
    assert not _blocked(_start_write(fs.mount_point / "probe"), 10)


def test_file_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    lock_path = tmp_path / "x.lock"
    code = (
        "from pathlib import Path; from snapport.osal.lock import FileLock\n"
        f"with FileLock(Path({str(lock_path)!r}), timeout_s=0.3): pass"
    )
    with FileLock(lock_path):
        assert subprocess.run([sys.executable, "-c", code], capture_output=True, check=False).returncode != 0
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, check=False).returncode == 0
