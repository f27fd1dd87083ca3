"""The filesystem writer on real filesystems: writes held while frozen, and the thaw guarantee through its guard."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapport.errors import FreezeTimeout, WriterError
from snapport.model import Attr, BackupType, Context, Volume
from snapport.osal import ioctl
from snapport.writers.base import Deadline, Session, WriterEvent, WriterPhase
from snapport.writers.filesystem import FilesystemWriter
from snapport.writers.guarded import GuardedWriter
from tests.conftest import Scratch, needs_tool

pytestmark = [pytest.mark.root]


class Processes:
    """Processes a test starts; whatever is still running at the end is killed, by pid."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []
        self.foreign_pids: list[int] = []  # started by our children (a guard), killed if they outlive them

    def python(self, code: str, **kwargs: object) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", code], text=True, **kwargs)  # type: ignore[call-overload]
        self.started.append(proc)
        return proc

    def write(self, path: Path) -> subprocess.Popen[str]:
        """One synced write to `path` (on a frozen filesystem it blocks until the thaw)."""
        return self.python(
            f"import os; f=os.open({str(path)!r}, os.O_WRONLY|os.O_CREAT); os.write(f, b'x'); os.fsync(f)"
        )

    def cleanup(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for pid in self.foreign_pids:
            if _alive(pid):
                os.kill(pid, 9)


@pytest.fixture
def procs() -> Iterator[Processes]:
    p = Processes()
    yield p
    p.cleanup()


MakeWriter = Callable[[Volume], FilesystemWriter]


@pytest.fixture
def make_writer(scratch: Scratch, procs: Processes) -> Iterator[MakeWriter]:
    """Build filesystem writers, each aborted at the end: a failed test holds nothing.

    Aborted before `procs` is cleaned up (a write blocked on a frozen filesystem cannot be killed) and before
    `scratch` unmounts.
    """
    made: list[FilesystemWriter] = []

    def make(volume: Volume) -> FilesystemWriter:
        made.append(FilesystemWriter(volume))
        return made[-1]

    yield make
    for writer in made:
        writer.abort(_session(writer.volume), Deadline.after(10))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _blocked(proc: subprocess.Popen[str], seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return True
    return False


def _volume(mount_point: Path, fs_type: str = "ext4") -> Volume:
    return Volume(host="itest", mount_point=str(mount_point), fs_type=fs_type, fs_uuid="")


def _session(volume: Volume, freeze_window_s: float = 30.0) -> Session:
    return Session(uuid.uuid4(), Context.BACKUP, Attr.NONE, BackupType.FULL, (volume,), freeze_window_s)


def _wait_thawed(mount_point: Path, within_s: float) -> float:
    started = time.monotonic()
    while ioctl.is_frozen(mount_point):
        assert time.monotonic() - started < within_s, f"{mount_point} still frozen after {within_s} s"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize("fs_type", ["ext4", pytest.param("xfs", marks=needs_tool("mkfs.xfs"))])
def test_a_write_blocks_while_frozen_and_completes_after_thaw(
    scratch: Scratch, make_writer: MakeWriter, procs: Processes, fs_type: str
) -> None:
    fs = scratch.filesystem(fs_type)
    volume = _volume(fs.mount_point, fs_type)
    writer, session = make_writer(volume), _session(volume)
    writer.prepare_snapshot(session, Deadline.after(10))
    assert not ioctl.is_frozen(fs.mount_point)  # prepare only starts the guard
    writer.freeze(session, Deadline.after(10))
    assert ioctl.is_frozen(fs.mount_point)
    pending = procs.write(fs.mount_point / "probe")
    assert _blocked(pending, 0.5)
    writer.thaw(session, Deadline.after(10))
    assert not _blocked(pending, 10) and pending.returncode == 0
    assert not ioctl.is_frozen(fs.mount_point)


def test_freeze_comes_after_prepare_snapshot(scratch: Scratch, make_writer: MakeWriter) -> None:
    fs = scratch.filesystem("ext4")
    volume = _volume(fs.mount_point)
    writer, session = make_writer(volume), _session(volume)
    with pytest.raises(WriterError, match="before prepare-snapshot"):
        writer.freeze(session, Deadline.after(10))
    assert not ioctl.is_frozen(fs.mount_point)


def test_sigkill_of_the_process_holding_the_freeze_thaws_at_once(scratch: Scratch, procs: Processes) -> None:
    fs = scratch.filesystem("ext4")
    code = (
        "import sys, time, uuid\n"
        "from snapport.model import Attr, BackupType, Context, Volume\n"
        "from snapport.writers.base import Deadline, Session\n"
        "from snapport.writers.filesystem import FilesystemWriter\n"
        f"volume = Volume('itest', {str(fs.mount_point)!r}, 'ext4', '')\n"
        "session = Session(uuid.uuid4(), Context.BACKUP, Attr.NONE, BackupType.FULL, (volume,), 60)\n"
        "writer = FilesystemWriter(volume)\n"
        "writer.prepare_snapshot(session, Deadline.after(10)); writer.freeze(session, Deadline.after(10))\n"
        "print('frozen', flush=True); time.sleep(120)\n"
    )
    holder = procs.python(code, stdout=subprocess.PIPE)
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "frozen"
    [guard_pid] = map(int, Path(f"/proc/{holder.pid}/task/{holder.pid}/children").read_text().split())
    procs.foreign_pids.append(guard_pid)
    assert ioctl.is_frozen(fs.mount_point)
    holder.kill()
    holder.wait()
    assert _wait_thawed(fs.mount_point, within_s=5) < 5  # the bound was 60 s
    pending = procs.write(fs.mount_point / "probe")
    assert not _blocked(pending, 10)
    started = time.monotonic()
    while _alive(guard_pid):  # the guard ends itself once it has thawed
        assert time.monotonic() - started < 5
        time.sleep(0.02)


def test_the_guard_thaws_on_its_own_timeout_and_thaw_reports_it(
    scratch: Scratch, make_writer: MakeWriter, procs: Processes
) -> None:
    fs = scratch.filesystem("ext4")
    volume = _volume(fs.mount_point)
    writer = GuardedWriter(make_writer(volume))
    session = _session(volume, freeze_window_s=1)
    writer.prepare_snapshot(session, Deadline.after(10))
    frozen_at = time.monotonic()
    writer.freeze(session, Deadline.after(10))
    pending = procs.write(fs.mount_point / "probe")
    _wait_thawed(fs.mount_point, within_s=10)
    assert time.monotonic() - frozen_at >= 0.9  # held for its window, then let go without being asked
    assert not _blocked(pending, 10)
    with pytest.raises(WriterError, match=r"thawed before thaw was asked \(timeout, freeze window 1 s\)"):
        writer.thaw(session, Deadline.after(10))
    assert (writer.status.phase, writer.status.failed_at) == (WriterPhase.FAILED, WriterEvent.THAW)
    writer.abort(session, Deadline.after(10))
    assert not _blocked(procs.write(fs.mount_point / "probe2"), 10)


def test_a_freeze_that_overruns_its_deadline_leaves_nothing_frozen(scratch: Scratch, make_writer: MakeWriter) -> None:
    """The guard is killed when it does not answer in time; a FIFREEZE it got through must not outlive it."""
    fs = scratch.filesystem("ext4", size_mb=64)
    volume = _volume(fs.mount_point)
    writer = make_writer(volume)
    timeouts = 0
    for attempt in range(8):
        (fs.mount_point / "dirty").write_bytes(os.urandom(4 << 20))  # a flush for FIFREEZE to wait on
        session = _session(volume)
        writer.prepare_snapshot(session, Deadline.after(10))
        try:
            writer.freeze(session, Deadline.after(0.001 * (attempt + 1)))
        except FreezeTimeout:
            timeouts += 1
        writer.abort(session, Deadline.after(10))
        assert not ioctl.is_frozen(fs.mount_point), f"left frozen after attempt {attempt}"
    assert timeouts > 0
