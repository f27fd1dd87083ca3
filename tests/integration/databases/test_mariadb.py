"""The mariadb writer on a real MariaDB server whose datadir lives on an array LUN, through the `snapport` command.

A restore copies the datadir out of the exposed snapshot and starts a server on it: InnoDB's crash recovery makes
it the state at the freeze, when no transaction could commit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest

from snapport.documents import load_documents
from snapport.errors import BadState
from snapport.writers import mariadb
from snapport.writers.mariadb import parse_backup_metadata
from tests.support.array_world import ArrayWorld
from tests.support.database_world import (
    component_of,
    copy_tree,
    events_of,
    record_freeze_window,
    snapport,
)
from tests.support.databases import MariaServer, PgServer, chown_tree, missing_mariadb

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(300),
    pytest.mark.skipif(missing_mariadb() is not None, reason=f"MariaDB: {missing_mariadb()}"),
]

ACCOUNTS, OPENING = 100, 1000
Servers = list[PgServer | MariaServer]

TRANSFERS = textwrap.dedent(
    """
    import random, sys, pymysql
    conn = pymysql.connect(unix_socket=sys.argv[1], user="root", database="bank", autocommit=False)
    print("ready", flush=True)
    done = 0
    while True:
        src, dst = random.sample(range(1, int(sys.argv[2]) + 1), 2)
        amount = random.randint(1, 50)
        try:
            with conn.cursor() as c:
                c.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, src))
                c.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, dst))
                c.execute("INSERT INTO transfers (src, dst, amount) VALUES (%s, %s, %s)", (src, dst, amount))
            conn.commit()
        except pymysql.err.OperationalError as exc:
            if exc.args[0] not in (1213, 1205):  # deadlock, lock wait: another worker; try again
                raise
            conn.rollback()
            continue
        done += 1
        print(done, flush=True)
    """
)
# Each account's balance is its opening balance plus what the transfers say it received minus what it sent.
MISMATCHED = (
    "SELECT count(*) FROM bank.accounts a WHERE a.balance <> %s "
    "- (SELECT coalesce(sum(amount), 0) FROM bank.transfers WHERE src = a.id) "
    "+ (SELECT coalesce(sum(amount), 0) FROM bank.transfers WHERE dst = a.id)"
)


class Transfers:
    """Processes moving money between accounts in transactions, without pause; killed by their pids."""

    def __init__(self, server: MariaServer, workers: int = 3) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", TRANSFERS, str(server.socket), str(ACCOUNTS)], stdout=subprocess.PIPE, text=True
            )
            for _ in range(workers)
        ]
        self.counts = [0] * workers
        self._readers = []
        for i, proc in enumerate(self.procs):
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            reader = threading.Thread(target=self._read, args=(i, proc), daemon=True)
            reader.start()
            self._readers.append(reader)

    def _read(self, i: int, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.counts[i] = int(line)

    @property
    def total(self) -> int:
        return sum(self.counts)

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 60
        while self.total < count:
            assert all(p.poll() is None for p in self.procs), "a transfer worker died"
            assert time.monotonic() < deadline, "the transfers make no progress"
            time.sleep(0.01)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        for reader in self._readers:
            reader.join(5)


@contextlib.contextmanager
def transfers(server: MariaServer) -> Iterator[Transfers]:
    load = Transfers(server)
    try:
        yield load
    finally:
        load.stop()


def _bank(server: MariaServer) -> None:
    server.query("CREATE DATABASE bank")
    server.query("CREATE TABLE bank.accounts (id INT PRIMARY KEY, balance BIGINT NOT NULL) ENGINE=InnoDB")
    server.query(
        "CREATE TABLE bank.transfers (id BIGINT AUTO_INCREMENT PRIMARY KEY, src INT, dst INT, amount INT) ENGINE=InnoDB"
    )
    values = ", ".join(f"({i}, {OPENING})" for i in range(1, ACCOUNTS + 1))
    server.query(f"INSERT INTO bank.accounts VALUES {values}")


def _server(world: ArrayWorld, servers: Servers, volume: Path) -> MariaServer:
    server = MariaServer(volume / "data", world.tmp / "run")
    servers.append(server)
    server.install()
    server.start()
    return server


@pytest.mark.slow
@pytest.mark.parametrize("lock", ["backup-stage", "ftwrl"])
def test_a_copy_taken_under_transfers_restores_with_the_total_unchanged(
    lock: str, db_world: ArrayWorld, servers: Servers, record_property: object
) -> None:
    world, shared = db_world, db_world.tmp
    volume = world.volume("mysql")
    server = _server(world, servers, volume)
    _bank(server)
    docs = shared / "docs"
    with transfers(server) as load:
        load.wait_for(300)
        created = snapport(world, "create", str(volume), "--writer", server.spec(lock=lock), "--out", str(docs))
        at_thaw = load.total
        load.wait_for(at_thaw + 100)  # commits go on after the thaw
    record_freeze_window(record_property, world, created, f"mariadb lock={lock}")
    set_id = str(created["set_id"])
    live_transfers = server.query("SELECT count(*) FROM bank.transfers")[0][0]

    _, wmds = load_documents(docs)
    [wmd] = [w for w in wmds if w.class_id == mariadb.CLASS_ID]
    [described] = wmd.components
    assert described.name == str(server.datadir)
    assert [s.original_path for s in described.database_files] == [str(server.datadir)]
    assert {s.pattern for s in described.log_files} >= {"ib_logfile*", "binlog.*"}
    position = parse_backup_metadata(str(component_of(docs, mariadb.CLASS_ID).backup_metadata))
    assert position["lock"] == lock
    assert isinstance(position["binlog_file"], str) and isinstance(position["binlog_position"], int)

    restored = shared / "restored"
    snapport(world, "expose", set_id)
    try:
        datadir_copy = Path(str(snapport(world, "map", set_id, str(server.datadir))["path"]))
        copy_tree(datadir_copy, restored, {e.pattern for e in wmd.excludes})
    finally:
        snapport(world, "unexpose", set_id)
    # Commits were blocked when the position was read, until the snapshot was taken: the copy's binary log ends
    # exactly there.
    assert (restored / position["binlog_file"]).stat().st_size == position["binlog_position"]
    chown_tree(restored, "mysql")
    copy = MariaServer(restored, shared / "restored-run")
    copy.run_dir.mkdir()
    chown_tree(copy.run_dir, "mysql")
    servers.append(copy)
    copy.start()
    [(total, count)] = copy.query("SELECT sum(balance), (SELECT count(*) FROM bank.transfers) FROM bank.accounts")
    assert total == ACCOUNTS * OPENING
    assert copy.query(MISMATCHED, [OPENING]) == [(0,)]
    assert 300 <= count < live_transfers, "the copy is not a past state taken under load"

    snapport(world, "complete", set_id, "--succeeded")
    assert world.leftovers(world.host()) == []


def _binlogs(server: MariaServer) -> list[str]:
    return [str(row[0]) for row in server.query("SHOW BINARY LOGS")]


def _stage_is_free(server: MariaServer) -> bool:
    """Whether another connection can start a backup stage now (none is held)."""
    conn = server.connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SET SESSION max_statement_time = 2")
            try:
                cursor.execute("BACKUP STAGE START")
            except pymysql.MySQLError:
                return False
            cursor.execute("BACKUP STAGE END")
            return True
    finally:
        conn.close()


def test_backup_complete_purges_binary_logs_once_for_a_full_backup_and_never_for_a_copy(
    db_world: ArrayWorld, servers: Servers
) -> None:
    world, shared = db_world, db_world.tmp
    volume = world.volume("mysql")
    server = _server(world, servers, volume)
    _bank(server)
    for _ in range(3):
        server.query("FLUSH BINARY LOGS")
    before = _binlogs(server)
    assert len(before) == 4
    spec = server.spec(purge_binlogs="yes")

    copy_set = str(snapport(world, "create", str(volume), "--writer", spec, "--backup-type", "copy")["set_id"])
    server.query("FLUSH BINARY LOGS")
    snapport(world, "complete", copy_set, "--succeeded")
    assert events_of(world, copy_set, "mariadb").count("backup-complete") == 1
    assert _binlogs(server)[: len(before)] == before  # a copy backup purges nothing

    # A set whose creation failed never reaches BackupComplete, and its backup stage was ended.
    failed = snapport(world, "create", str(volume), "--writer", spec, fault="provider.commit:raise", check=False)
    assert failed["rc"] != 0
    [aborted] = [s for s in snapport(world, "list")["sets"] if s["state"] == "aborted"]  # type: ignore[union-attr]
    assert snapport(world, "complete", str(aborted["id"]), "--succeeded", check=False)["rc"] == BadState.exit_code
    assert "backup-complete" not in events_of(world, str(aborted["id"]), "mariadb")
    assert _stage_is_free(server)

    failed_set = str(snapport(world, "create", str(volume), "--writer", spec)["set_id"])
    snapport(world, "complete", failed_set, "--failed")
    assert "backup-complete" not in events_of(world, failed_set, "mariadb")
    assert _binlogs(server)[: len(before)] == before

    docs = shared / "full-docs"
    full_set = str(snapport(world, "create", str(volume), "--writer", spec, "--out", str(docs))["set_id"])
    position = parse_backup_metadata(str(component_of(docs, mariadb.CLASS_ID).backup_metadata))
    server.query("FLUSH BINARY LOGS")
    snapport(world, "complete", full_set, "--succeeded")
    after = _binlogs(server)
    assert after[0] == position["binlog_file"] and not set(before) & set(after)
    assert not (server.datadir / before[0]).exists()
    again = snapport(world, "complete", full_set, "--succeeded", check=False)
    assert again["rc"] == BadState.exit_code and "already" in str(again["stderr"])
    assert events_of(world, full_set, "mariadb").count("backup-complete") == 1
    assert _stage_is_free(server)
    assert world.leftovers(world.host()) == []
