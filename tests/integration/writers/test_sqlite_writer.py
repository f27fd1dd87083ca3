"""The sqlite writer against real databases on a real filesystem, with other processes writing to them."""

from __future__ import annotations

import contextlib
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from snapport.errors import FreezeTimeout, WriterError
from snapport.model import Attr, BackupType, Context, Volume
from snapport.writers.base import Deadline, Session
from snapport.writers.guarded import GuardedWriter
from snapport.writers.sqlite import SqliteWriter
from tests.conftest import Scratch

pytestmark = [pytest.mark.root]

COMMITTER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
first = True
while True:  # commit without pause
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO t (v) VALUES ('x')")
    conn.execute("COMMIT")
    if first:
        print("committing", flush=True)
        first = False
"""

HOLDER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO t (v) VALUES ('held')")
print("holding", flush=True)
time.sleep(120)
"""

ONE_WRITE = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], timeout=30, isolation_level=None)
conn.execute("INSERT INTO t (v) VALUES ('one')")
"""

Spawn = Callable[[str, Path], subprocess.Popen[str]]
MakeWriter = Callable[[list[Path], Volume], SqliteWriter]


@pytest.fixture
def spawn() -> Iterator[Spawn]:
    """Start a Python snippet on a database; every process started is killed at the end, by pid."""
    started: list[subprocess.Popen[str]] = []

    def start(code: str, db: Path) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.fixture
def make_writer(scratch: Scratch) -> Iterator[MakeWriter]:
    """Build sqlite writers; each is aborted at the end (before `scratch` unmounts), so a failed test holds nothing."""
    made: list[tuple[SqliteWriter, Volume]] = []

    def make(dbs: list[Path], volume: Volume) -> SqliteWriter:
        writer = SqliteWriter(dbs, [volume], host="itest")
        made.append((writer, volume))
        return writer

    yield make
    for writer, volume in made:
        writer.abort(_session(volume), Deadline.after(10))


def _setup(scratch: Scratch, *, wal: bool, names: tuple[str, ...] = ("app.db",)) -> tuple[Volume, list[Path]]:
    fs = scratch.filesystem("ext4")
    volume = Volume(host="itest", mount_point=str(fs.mount_point), fs_type="ext4", fs_uuid="")
    dbs = []
    for name in names:
        db = fs.mount_point / "data" / name
        db.parent.mkdir(exist_ok=True)
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
            conn.execute(f"PRAGMA journal_mode={'WAL' if wal else 'DELETE'}")
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        dbs.append(db)
    return volume, dbs


def _session(volume: Volume, freeze_window_s: float = 30.0) -> Session:
    return Session(uuid.uuid4(), Context.BACKUP, Attr.NONE, BackupType.FULL, (volume,), freeze_window_s)


def _rows(db: Path) -> int:
    """The committed row count. Tried every millisecond: SQLite's own busy wait starves behind a busy committer."""
    started = time.monotonic()
    with contextlib.closing(sqlite3.connect(db, timeout=0)) as conn:
        while True:
            try:
                count: int = conn.execute("SELECT count(*) FROM t").fetchone()[0]
                return count
            except sqlite3.OperationalError:
                assert time.monotonic() - started < 10
                time.sleep(0.001)


def _wait_for(predicate: Callable[[], bool], within_s: float) -> None:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < within_s, "gave up waiting"
        time.sleep(0.02)


def _started(proc: subprocess.Popen[str], word: str) -> None:
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == word


def _blocked(proc: subprocess.Popen[str], seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return True
    return False


def _can_write_at_once(db: Path) -> bool:
    with contextlib.closing(sqlite3.connect(db, timeout=0, isolation_level=None)) as conn:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False
        conn.execute("ROLLBACK")
        return True


@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback-journal"])
def test_commits_stop_while_frozen_and_resume_after_thaw(
    scratch: Scratch, make_writer: MakeWriter, spawn: Spawn, wal: bool
) -> None:
    volume, [db] = _setup(scratch, wal=wal)
    committer = spawn(COMMITTER, db)
    _started(committer, "committing")
    _wait_for(lambda: _rows(db) > 50, within_s=10)
    writer = GuardedWriter(make_writer([db], volume))
    session = _session(volume)
    writer.prepare_snapshot(session, Deadline.after(10))
    started = time.monotonic()
    writer.freeze(session, Deadline.after(10))
    assert time.monotonic() - started < 10  # the lock was had despite the committer
    frozen_rows = _rows(db)
    time.sleep(0.5)
    assert _rows(db) == frozen_rows, "another process committed while the writer was frozen"
    assert committer.poll() is None
    writer.thaw(session, Deadline.after(10))
    _wait_for(lambda: _rows(db) > frozen_rows + 10, within_s=5)
    assert writer.status.last_freeze_ms is not None and writer.status.last_freeze_ms >= 500


def test_prepare_snapshot_checkpoints_the_wal(scratch: Scratch, make_writer: MakeWriter) -> None:
    volume, [db] = _setup(scratch, wal=True)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA wal_autocheckpoint=0")
        for _ in range(200):
            conn.execute("INSERT INTO t (v) VALUES ('x')")
        wal = db.with_name(db.name + "-wal")
        assert wal.stat().st_size > 0
        writer = make_writer([db], volume)
        writer.prepare_snapshot(_session(volume), Deadline.after(10))
        assert wal.stat().st_size == 0  # TRUNCATE left an empty log
        assert writer.last_checkpoint[str(db)] == (0, 0, 0)


def test_freeze_times_out_cleanly_behind_a_long_write_transaction(
    scratch: Scratch, make_writer: MakeWriter, spawn: Spawn
) -> None:
    volume, [db] = _setup(scratch, wal=True)
    holder = spawn(HOLDER, db)
    _started(holder, "holding")
    writer = make_writer([db], volume)
    session = _session(volume)
    writer.prepare_snapshot(session, Deadline.after(0.5))  # its checkpoint is busy: not an error
    assert str(writer.last_checkpoint[str(db)]).startswith(("(1,", "busy"))
    started = time.monotonic()
    with pytest.raises(FreezeTimeout, match=r"could not take the write lock on .*app\.db within 0\.\d s"):
        writer.freeze(session, Deadline.after(1))
    assert time.monotonic() - started < 1.25  # inside its deadline, give or take scheduling
    assert not writer.holding
    holder.kill()
    holder.wait()
    assert _can_write_at_once(db)  # the writer holds nothing
    writer.abort(session, Deadline.after(2))


def test_the_freeze_window_bounds_the_hold_and_thaw_reports_it(
    scratch: Scratch, make_writer: MakeWriter, spawn: Spawn
) -> None:
    volume, [db] = _setup(scratch, wal=True)
    writer = make_writer([db], volume)
    session = _session(volume, freeze_window_s=1)
    writer.prepare_snapshot(session, Deadline.after(10))
    writer.freeze(session, Deadline.after(10))
    frozen_at = time.monotonic()
    pending = spawn(ONE_WRITE, db)
    assert not _blocked(pending, 10) and pending.returncode == 0  # let through when the window ran out ...
    assert time.monotonic() - frozen_at >= 0.9  # ... and not before
    assert not writer.holding
    with pytest.raises(WriterError, match=r"freeze window \(1 s\) ran out, before thaw was asked"):
        writer.thaw(session, Deadline.after(10))
    writer.thaw(session, Deadline.after(10))  # reported once


def test_several_databases_freeze_together(scratch: Scratch, make_writer: MakeWriter, spawn: Spawn) -> None:
    volume, dbs = _setup(scratch, wal=True, names=("a.db", "b.db"))
    writer = make_writer(dbs, volume)
    session = _session(volume)
    assert [c.name for c in writer.identify(Deadline.after(1)).components] == [str(db) for db in dbs]
    writer.prepare_snapshot(session, Deadline.after(10))
    writer.freeze(session, Deadline.after(10))
    pending = [spawn(ONE_WRITE, db) for db in dbs]
    assert all(_blocked(p, 0.3) for p in pending)
    writer.thaw(session, Deadline.after(10))
    assert all(not _blocked(p, 10) and p.returncode == 0 for p in pending)


def test_backup_complete_is_seen_once_per_backup(scratch: Scratch, make_writer: MakeWriter) -> None:
    volume, [db] = _setup(scratch, wal=True)
    writer = make_writer([db], volume)
    guarded = GuardedWriter(writer)
    session = _session(volume)
    components = tuple(c.full_path for c in guarded.identify(Deadline.after(5)).components)
    guarded.prepare_backup(session, components, Deadline.after(5))
    guarded.prepare_snapshot(session, Deadline.after(5))
    guarded.freeze(session, Deadline.after(5))
    guarded.thaw(session, Deadline.after(5))
    assert guarded.post_snapshot(session, Deadline.after(5)) == {str(db): "journal-mode=wal"}
    assert writer.backup_complete_count == 0
    guarded.backup_complete(session, dict.fromkeys(components, True), Deadline.after(5))
    guarded.backup_shutdown(session, Deadline.after(5))
    assert writer.backup_complete_count == 1


def test_a_missing_database_fails_prepare_backup_and_is_never_created(
    scratch: Scratch, make_writer: MakeWriter
) -> None:
    volume, [db] = _setup(scratch, wal=True)
    gone = db.with_name("gone.db")
    writer = make_writer([gone], volume)
    session = _session(volume)
    with pytest.raises(WriterError, match="not found"):
        writer.prepare_backup(session, (), Deadline.after(5))
    with pytest.raises(WriterError, match="cannot open"):
        writer.freeze(session, Deadline.after(5))
    assert not gone.exists()
