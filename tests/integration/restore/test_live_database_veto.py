"""A restore refuses to write over a live database: the SQLite writer's pre-restore vetoes while a process has the
database (or its WAL, shared memory, journal) open, the MariaDB writer's while a server runs on the datadir.
Real processes: the `sqlite3` shell holding a restored database open, a real `mariadbd`."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapport.coordinator import lifecycle
from snapport.documents import load_documents
from snapport.engines import ArchiveEngine, SetDocuments, select_components
from snapport.errors import WriterError
from snapport.model import BackupType
from snapport.writers.base import Deadline, RestoreContext
from snapport.writers.mariadb import MariadbWriter, live_server
from snapport.writers.sqlite import SqliteWriter, processes_using
from tests.conftest import needs_tool
from tests.support.array_world import HOST_ONE, ArrayWorld
from tests.support.databases import MariaServer, missing_mariadb, shared_dir

pytestmark = [pytest.mark.timeout(300)]


def snapport(world: ArrayWorld, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "snapport", *args, "--json"],
        capture_output=True,
        text=True,
        env=world.env(HOST_ONE),
        timeout=180,
        check=False,
    )


class Holder:
    """A `sqlite3` shell with a database open, waiting on its stdin (ended by closing it, then by pid)."""

    def __init__(self, database: Path) -> None:
        self.proc = subprocess.Popen(
            ["sqlite3", str(database)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("SELECT count(*) FROM t;\n")  # the shell opens the file on its first statement
        self.proc.stdin.flush()
        self.proc.stdout.readline()

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.close()


def _make_db(path: Path, wal: bool) -> None:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    conn.close()


@needs_tool("sqlite3")
@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback-journal"])
def test_sqlite_pre_restore_vetoes_while_a_process_has_the_database_open(
    tmp_path: Path, holders: list[Holder], wal: bool
) -> None:
    target = tmp_path / "restored"
    original = "/srv/data/app.db"
    database = target / "srv" / "data" / "app.db"
    database.parent.mkdir(parents=True)
    _make_db(database, wal)
    writer = SqliteWriter.for_restore(original, host="prod1")
    context = RestoreContext(uuid.uuid4(), BackupType.FULL, target, (original,))
    writer.pre_restore(context, Deadline.after(10))  # nobody has it open

    holder = Holder(database)
    holders.append(holder)
    assert [pid for pid, _ in processes_using([database])] == [holder.proc.pid]
    with pytest.raises(WriterError, match=rf"pid {holder.proc.pid}, sqlite3\) has the SQLite database {database}"):
        writer.pre_restore(context, Deadline.after(10))
    # Another database of the same name elsewhere is not this one.
    other = SqliteWriter.for_restore("/srv/other/app.db", host="prod1")
    other.pre_restore(RestoreContext(uuid.uuid4(), BackupType.FULL, target, ("/srv/other/app.db",)), Deadline.after(10))

    holder.close()
    writer.pre_restore(context, Deadline.after(10))


@pytest.mark.root
@pytest.mark.slow
@needs_tool("sqlite3")
def test_snapport_restore_refuses_a_live_sqlite_database_and_changes_nothing(
    world: ArrayWorld, tmp_path: Path, holders: list[Holder]
) -> None:
    volume = world.volume("data")
    db = volume / "app.db"
    _make_db(db, wal=True)
    made = snapport(world, "create", str(volume), "--writer", f"sqlite:{db}", "--out", str(tmp_path / "docs"))
    assert made.returncode == 0, made.stderr
    set_id = uuid.UUID(json.loads(made.stdout)["set_id"])
    bcd, wmds = load_documents(tmp_path / "docs")
    documents = SetDocuments(bcd, tuple(wmds))
    host = world.host()
    lifecycle.expose(host, set_id)
    try:
        ArchiveEngine(tmp_path / "repo").backup(
            documents, select_components(documents), lambda p: Path(lifecycle.map_path(host, set_id, p))
        )
    finally:
        lifecycle.unexpose(host, set_id)
    assert snapport(world, "delete", str(set_id)).returncode == 0

    target = tmp_path / "restored"
    base = ["restore", "--repo", str(tmp_path / "repo"), "--set", str(set_id), "--to", str(target)]
    first = snapport(world, *base)
    assert first.returncode == 0, first.stderr
    sqlite_part = [w for w in json.loads(first.stdout)["writers"] if w["kind"] == "sqlite"]
    assert [e["event"] for e in sqlite_part[0]["events"]] == ["pre-restore", "post-restore"]

    restored = target / str(db).lstrip("/")
    holder = Holder(restored)
    holders.append(holder)
    before = restored.stat()
    vetoed = snapport(world, *base, "--overwrite")
    assert vetoed.returncode == WriterError.exit_code, vetoed.stderr
    assert f"pid {holder.proc.pid}" in vetoed.stderr and "nothing was restored" in vetoed.stderr
    after = restored.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not replaced, not written
    assert not list(restored.parent.glob(".snapport-restore-*"))

    holder.close()
    again = snapport(world, *base, "--overwrite")
    assert again.returncode == 0, again.stderr
    assert sqlite3.connect(restored).execute("SELECT x FROM t").fetchall() == [(1,)]
    assert world.leftovers(host) == []


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.skipif(missing_mariadb() is not None, reason=str(missing_mariadb()))
def test_mariadb_pre_restore_vetoes_while_a_server_runs_on_the_datadir() -> None:
    with shared_dir() as shared:
        server = MariaServer(shared / "data", shared / "run")
        server.install()
        writer = MariadbWriter(server.socket, (), host="prod1")
        in_place = RestoreContext(uuid.uuid4(), BackupType.FULL, Path("/"), (str(server.datadir),))
        elsewhere = RestoreContext(uuid.uuid4(), BackupType.FULL, shared / "elsewhere", (str(server.datadir),))
        writer.pre_restore(in_place, Deadline.after(10))  # installed, not running
        server.start()
        try:
            assert server.proc is not None
            assert live_server(server.datadir) == server.proc.pid
            with pytest.raises(WriterError, match=rf"MariaDB server \(pid {server.proc.pid}\) runs on"):
                writer.pre_restore(in_place, Deadline.after(10))
            writer.pre_restore(elsewhere, Deadline.after(10))  # a copy beside it does not touch it
        finally:
            server.stop()
        assert live_server(server.datadir) is None
        writer.pre_restore(in_place, Deadline.after(10))
