"""The real mount table (`ProcMountTable`) without root: this process's /proc/self/mountinfo, and blkid through
the runner it is given."""

from __future__ import annotations

from pathlib import Path

from snapport.osal.mount import MountTable, ProcMountTable
from snapport.osal.runner import RecordingRunner


def test_the_real_table_reads_this_process_mounts(tmp_path: Path) -> None:
    table: MountTable = ProcMountTable()
    root = table.mount_at("/")
    assert root is not None and root.mount_point == "/"
    holder = table.containing_mount(tmp_path)
    assert str(tmp_path.resolve()).startswith(holder.mount_point.rstrip("/") + "/")
    assert table.mount_at(tmp_path) is None  # a fresh directory is no mount point


def test_the_real_table_reads_identities_from_the_device_through_the_runner() -> None:
    answer = (0, "DEVNAME=/dev/vdz\nUUID=5a1e\nBLOCK_SIZE=4096\nTYPE=xfs\n", "")
    runner = RecordingRunner([lambda argv: answer if argv[0] == "blkid" else None])
    assert ProcMountTable().fs_identity(runner, "/dev/vdz") == ("xfs", "5a1e")
    assert runner.calls == [("blkid", "-p", "-o", "export", "/dev/vdz")]  # -p: the device itself, not the cache
    assert ProcMountTable().fs_identity(RecordingRunner([lambda argv: (2, "", "")]), "/dev/none") == ("", "")
