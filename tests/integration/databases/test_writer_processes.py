"""The postgresql and mariadb writers in their own processes, run as `postgres` and `mysql` (as
contrib/systemd/snapport-writer@.service deploys them), on real servers whose files live on array LUNs.

Each writer is the real `snapport writer run KIND --config FILE` with `user =` in its TOML; `snapport create`
finds it in the registry (no --writer) and `snapport complete` reaches it again. Every process a test starts is
stopped by its pid, every server by `servers`.
"""

from __future__ import annotations

import json
import pwd
import signal
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from snapport.documents import load_documents
from snapport.errors import BadState, WriterError
from snapport.model import SelectedComponent
from snapport.writers import mariadb, postgresql
from tests.support.array_world import ArrayWorld
from tests.support.database_world import snapport
from tests.support.databases import (
    MariaServer,
    PgServer,
    missing_mariadb,
    missing_postgresql,
    owned_dir,
    wait_for,
    wal_archiving,
    wal_files,
)
from tests.support.writer_processes import (
    WriterProcess,
    gone,
    set_events,
    started,
    writer_events,
    writer_run,
)

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.timeout(240)]
needs_postgresql = pytest.mark.skipif(missing_postgresql() is not None, reason=f"PostgreSQL: {missing_postgresql()}")
needs_mariadb = pytest.mark.skipif(missing_mariadb() is not None, reason=f"MariaDB: {missing_mariadb()}")

Servers = list[PgServer | MariaServer]
SET_EVENTS = [(e, True) for e in ("identify", "prepare-backup", "prepare-snapshot", "freeze", "thaw", "post-snapshot")]
COMPLETE_EVENTS = [("backup-complete", True), ("backup-shutdown", True)]
# The writer's backup session as the server sees it (pg_backup_start's connection is held until post-snapshot).
PG_BACKUP_SESSIONS = f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{postgresql.APPLICATION_NAME}'"


def _assert_runs_as(world: ArrayWorld, writer: WriterProcess, user: str) -> None:
    """The writer process runs as `user` (every uid and gid, from the kernel), its socket is that user's, and
    `snapport writers` shows it stable with that uid."""
    entry = pwd.getpwnam(user)
    status = dict(line.split(":", 1) for line in Path(f"/proc/{writer.proc.pid}/status").read_text().splitlines())
    assert [int(u) for u in status["Uid"].split()] == [entry.pw_uid] * 4
    assert [int(g) for g in status["Gid"].split()] == [entry.pw_gid] * 4
    st = writer.socket.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (entry.pw_uid, 0o600)
    [listed] = snapport(world, "writers")["writers"]  # type: ignore[misc]
    assert (listed["writer_id"], listed["state"]) == (writer.writer_id, "stable")
    assert (listed["process"]["pid"], listed["process"]["uid"]) == (writer.proc.pid, entry.pw_uid)


def _component(created: dict[str, object], writer: WriterProcess) -> SelectedComponent:
    """The writer's one component in the BCD `create` saved."""
    bcd, _ = load_documents(Path(str(created["documents"])))
    [entry] = [w for w in bcd.writers if str(w.writer_id) == writer.writer_id]
    [component] = entry.components
    return component


def _complete_once(world: ArrayWorld, set_id: str, writer: WriterProcess) -> None:
    """`complete --succeeded` delivers BackupComplete to the writer process, and a second one is refused."""
    snapport(world, "complete", set_id, "--succeeded")
    assert writer_events(world, set_id, writer.writer_id)[-2:] == COMPLETE_EVENTS
    again = snapport(world, "complete", set_id, "--succeeded", check=False)
    assert again["rc"] == BadState.exit_code
    assert [e for e, _ in writer_events(world, set_id, writer.writer_id)].count("backup-complete") == 1
    assert writer.proc.poll() is None


def _error(result: dict[str, object]) -> dict[str, object]:
    """The one-line JSON error of a failed `snapport ... --json`."""
    return dict(json.loads(str(result["stderr"]).strip().splitlines()[-1]))


def _set_state(world: ArrayWorld, set_id: str) -> str:
    [found] = [s for s in snapport(world, "list")["sets"] if s["id"] == set_id]  # type: ignore[union-attr]
    return str(found["state"])


def _the_new_set(world: ArrayWorld, known: set[str]) -> str:
    [new] = [str(s["id"]) for s in snapport(world, "list")["sets"] if str(s["id"]) not in known]  # type: ignore[union-attr]
    return new


def _set_ids(world: ArrayWorld) -> set[str]:
    return {str(s["id"]) for s in snapport(world, "list")["sets"]}  # type: ignore[union-attr]


# -- PostgreSQL, backup-mode, as postgres -------------------------------------------------------------------------


def _pg_server(world: ArrayWorld, servers: Servers) -> tuple[PgServer, Path, Path]:
    """A cluster on a LUN volume, archiving its WAL into a shared directory: (server, volume, archive)."""
    volume = world.volume("pgdata")
    archive = owned_dir(world.tmp / "archive", "postgres")
    server = PgServer(volume / "data", world.tmp / "sock")
    servers.append(server)
    server.init(settings=wal_archiving(archive))
    server.start()
    return server, volume, archive


def _pg_config(server: PgServer, **extra: str) -> dict[str, str]:
    return {
        "target": str(server.data),
        "mode": "backup-mode",
        "host": str(server.socket_dir),
        "port": str(server.port),
        **extra,
        "user": "postgres",
    }


@pytest.mark.postgresql
@needs_postgresql
def test_a_postgresql_writer_running_as_postgres_makes_a_base_backup_and_hears_backup_complete(
    db_world: ArrayWorld, servers: Servers
) -> None:
    world = db_world
    server, volume, archive = _pg_server(world, servers)
    server.query("CREATE TABLE t (v text)")
    for i in range(3):  # WAL older than the backup, for BackupComplete to purge
        server.query(f"INSERT INTO t VALUES ('{i}')")
        server.query("SELECT pg_switch_wal()")
    wait_for(lambda: len(wal_files(archive)) >= 3, "three archived WAL files")
    older = wal_files(archive)

    with writer_run(world, "postgresql", _pg_config(server, purge_archive=str(archive))) as writer:
        _assert_runs_as(world, writer, "postgres")
        created = snapport(world, "create", str(volume))  # no --writer: it registered itself
        set_id = str(created["set_id"])
        assert writer_events(world, set_id, writer.writer_id) == SET_EVENTS
        assert any(f"postgresql ({server.data})" in m for m in set_events(world, set_id, "writer-discovered"))
        component = _component(created, writer)
        assert component.name == str(server.data)
        metadata = postgresql.parse_backup_metadata(str(component.backup_metadata))
        assert (metadata["mode"], metadata["label"]) == ("backup-mode", f"snapport {set_id}")
        label = str(metadata["backup_label"])
        assert f"LABEL: snapport {set_id}\n" in label
        assert f"START WAL LOCATION: {metadata['start_lsn']} (file {metadata['start_wal_file']})" in label
        # The server ran that backup: pg_backup_stop wrote its history file, which the archiver copied.
        history = f"{metadata['start_wal_file']}.*.backup"
        wait_for(lambda: any(archive.glob(history)), "the backup history file in the archive")
        [history_file] = archive.glob(history)
        assert f"LABEL: snapport {set_id}\n" in history_file.read_text()
        assert f"STOP WAL LOCATION: {metadata['stop_lsn']} " in history_file.read_text()
        assert server.query(PG_BACKUP_SESSIONS) == [(0,)]  # its session ended with pg_backup_stop

        _complete_once(world, set_id, writer)
        # BackupComplete ran as postgres and purged the archived WAL the backup does not need.
        kept = wal_files(archive)
        assert older and not set(older) & set(kept)
        assert all(name[8:] >= str(metadata["oldest_wal_file"])[8:] for name in kept)
    assert world.leftovers(world.host()) == []


@pytest.mark.postgresql
@needs_postgresql
def test_a_postgresql_writer_process_that_dies_or_cannot_reach_its_server_leaves_no_backup_running(
    db_world: ArrayWorld, servers: Servers
) -> None:
    world = db_world
    server, volume, _archive = _pg_server(world, servers)

    # The coordinator dies while every writer is frozen: the writer (as postgres) sees its connection drop and
    # aborts, which ends the server's backup; the next creation rolls the interrupted set back.
    with writer_run(world, "postgresql", _pg_config(server)) as writer:
        killed = snapport(world, "create", str(volume), fault="provider.commit:kill", check=False)
        assert killed["rc"] == -signal.SIGKILL
        wait_for(lambda: server.query(PG_BACKUP_SESSIONS) == [(0,)], "the writer to end its backup")
        server.query("SELECT pg_backup_start('probe', fast => true)")  # no backup of ours in the way
        assert writer.proc.poll() is None

        # SIGKILLed between registration and create: its socket is stale; the set is made without it.
        writer.proc.send_signal(signal.SIGKILL)
        assert gone(writer.proc.pid, within_s=10)
        created = snapport(world, "create", str(volume))
        set_id = str(created["set_id"])
        assert any(str(writer.socket) in m for m in set_events(world, set_id, "writer-stale"))
        assert writer_events(world, set_id, writer.writer_id) == []
        snapport(world, "delete", set_id)
    assert "before the set was made; aborting" in writer.log

    # The server is down: the writer fails prepare-backup; the set fails cleanly, or is made without it.
    server.stop()
    with writer_run(world, "postgresql", _pg_config(server)) as writer:
        known = _set_ids(world)
        refused = snapport(world, "create", str(volume), check=False)
        assert refused["rc"] == WriterError.exit_code, refused
        error = _error(refused)
        assert error["error"] == "WRITER_ERROR" and "cannot connect to PostgreSQL" in str(error["message"])
        set_id = _the_new_set(world, known)
        assert _set_state(world, set_id) == "aborted"
        assert writer_events(world, set_id, writer.writer_id)[-3:] == [
            ("prepare-backup", False),
            ("abort", True),
            ("backup-shutdown", True),
        ]

        created = snapport(world, "create", str(volume), "--on-writer-failure", "exclude")
        [excluded] = created["excluded_writers"]  # type: ignore[misc]
        assert excluded["writer_id"] == writer.writer_id and "cannot connect" in excluded["reason"]
        assert _component_excluded(created, writer)
        snapport(world, "complete", str(created["set_id"]), "--succeeded")
        assert "backup-complete" not in [e for e, _ in writer_events(world, str(created["set_id"]), writer.writer_id)]
        assert writer.proc.poll() is None
    server.start()
    assert server.query(PG_BACKUP_SESSIONS) == [(0,)]
    assert world.leftovers(world.host()) == []


def _component_excluded(created: dict[str, object], writer: WriterProcess) -> bool:
    bcd, wmds = load_documents(Path(str(created["documents"])))
    [entry] = [w for w in bcd.writers if str(w.writer_id) == writer.writer_id]
    return (
        entry.components == ()
        and entry.excluded is not None
        and all(str(w.writer_id) != writer.writer_id for w in wmds)
    )


# -- MariaDB, BACKUP STAGE, as mysql ------------------------------------------------------------------------------


def _maria_server(world: ArrayWorld, servers: Servers) -> tuple[MariaServer, Path, Path]:
    """A server on a LUN volume with its general query log on, and the writer's database account: (server,
    volume, general log)."""
    volume = world.volume("mysql")
    server = MariaServer(volume / "data", world.tmp / "run")
    servers.append(server)
    server.install()
    general_log = server.run_dir / "general.log"
    server.start("--general-log=1", f"--general-log-file={general_log}")
    server.query("CREATE DATABASE app")
    server.query("CREATE TABLE app.t (id INT PRIMARY KEY AUTO_INCREMENT, v TEXT) ENGINE=InnoDB")
    # The writer's database account, as Debian sets up `mysql`: unix_socket, with what docs/writers.md lists.
    server.query("CREATE OR REPLACE USER mysql@localhost IDENTIFIED VIA unix_socket")
    server.query("GRANT RELOAD, BINLOG MONITOR, BINLOG ADMIN ON *.* TO mysql@localhost")
    return server, volume, general_log


def _maria_writer(world: ArrayWorld, server: MariaServer, **options: str) -> AbstractContextManager[WriterProcess]:
    """`snapport writer run mariadb` as the system user `mysql`, logging in as the database account `mysql` by
    unix_socket (as Debian's server is set up), given in `[options]`: the top-level `user` is who it runs as."""
    config = world.tmp / f"mariadb-{server.datadir.name}.toml"
    settings = {"user": "mysql", **options}
    config.write_text(
        f'target = {json.dumps(str(server.socket))}\nuser = "mysql"\n[options]\n'
        + "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    )
    argv = [sys.executable, "-m", "snapport", "writer", "run", "mariadb", "--config", str(config), "--json"]
    return started(world, argv)


def _binlogs(server: MariaServer) -> list[str]:
    return [str(row[0]) for row in server.query("SHOW BINARY LOGS")]


def _checkpointed(server: MariaServer, binlog: str) -> bool:
    """Whether `binlog` holds its own checkpoint event (which the server writes by itself, some time after a FLUSH
    BINARY LOGS, once the earlier logs are no longer needed for crash recovery)."""
    events = server.query(f"SHOW BINLOG EVENTS IN '{binlog}'")
    return any(row[2] == "Binlog_checkpoint" and str(row[5]).endswith(binlog) for row in events)


def _write_goes_through(server: MariaServer) -> None:
    """One committed insert, waiting at most 10 s for a lock (a backup stage left held would block it)."""
    conn = server.connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SET SESSION lock_wait_timeout = 10")
            cursor.execute("INSERT INTO app.t (v) VALUES ('after')")
    finally:
        conn.close()


@needs_mariadb
def test_a_mariadb_writer_running_as_mysql_blocks_commits_and_hears_backup_complete(
    db_world: ArrayWorld, servers: Servers
) -> None:
    world = db_world
    server, volume, general_log = _maria_server(world, servers)
    for i in range(3):
        server.query("INSERT INTO app.t (v) VALUES (%s)", [str(i)])
        server.query("FLUSH BINARY LOGS")
    before = _binlogs(server)
    wait_for(lambda: _checkpointed(server, before[-1]), "the binary log checkpoint")  # written after the flush
    [(binlog_file, binlog_position, *_)] = server.query("SHOW MASTER STATUS")

    with _maria_writer(world, server, purge_binlogs="yes") as writer:
        _assert_runs_as(world, writer, "mysql")
        created = snapport(world, "create", str(volume))
        set_id = str(created["set_id"])
        assert writer_events(world, set_id, writer.writer_id) == SET_EVENTS
        assert any(f"mariadb ({server.socket})" in m for m in set_events(world, set_id, "writer-discovered"))
        component = _component(created, writer)
        assert component.name == str(server.datadir)
        position = mariadb.parse_backup_metadata(str(component.backup_metadata))
        assert position["lock"] == "backup-stage"
        # Nothing was written since: the position read while commits were blocked is the server's own.
        assert (position["binlog_file"], position["binlog_position"]) == (binlog_file, binlog_position)
        # The server was asked, in order, by the writer process, logged in as the database account mysql.
        logged = general_log.read_text()
        assert "Connect\tmysql@localhost" in logged
        asked = [logged.find(f"BACKUP STAGE {s}") for s in ("START", "FLUSH", "BLOCK_DDL", "BLOCK_COMMIT", "END")]
        assert -1 not in asked and asked == sorted(asked), asked
        assert asked[3] < logged.find("SHOW MASTER STATUS", asked[3]) < asked[4]  # the position, read while blocked
        _write_goes_through(server)

        server.query("FLUSH BINARY LOGS")
        _complete_once(world, set_id, writer)
        # BackupComplete (from another process, to the writer running as mysql) purged the binary logs before it.
        after = _binlogs(server)
        assert after[0] == position["binlog_file"] and set(before[:-1]).isdisjoint(after)
    assert world.leftovers(world.host()) == []


@needs_mariadb
def test_a_mariadb_writer_process_that_loses_its_coordinator_or_its_server_leaves_commits_flowing(
    db_world: ArrayWorld, servers: Servers
) -> None:
    world = db_world
    server, volume, _general_log = _maria_server(world, servers)
    with _maria_writer(world, server) as writer:
        # The coordinator dies while the writer holds BACKUP STAGE BLOCK_COMMIT: the writer ends the stage.
        killed = snapport(world, "create", str(volume), fault="provider.commit:kill", check=False)
        assert killed["rc"] == -signal.SIGKILL
        _write_goes_through(server)
        assert writer.proc.poll() is None

        # The server is gone: the writer cannot identify its files; the set fails cleanly, or is made without it.
        server.stop()
        known = _set_ids(world)
        refused = snapport(world, "create", str(volume), check=False)
        assert refused["rc"] == WriterError.exit_code, refused
        error = _error(refused)
        assert error["error"] == "WRITER_ERROR" and "cannot connect to MariaDB" in str(error["message"])
        assert _set_state(world, _the_new_set(world, known)) == "aborted"

        created = snapport(world, "create", str(volume), "--on-writer-failure", "exclude")
        [excluded] = created["excluded_writers"]  # type: ignore[misc]
        assert excluded["writer_id"] == writer.writer_id and "cannot connect" in excluded["reason"]
        assert _component_excluded(created, writer)
        snapport(world, "delete", str(created["set_id"]))
        assert writer.proc.poll() is None
    assert "before the set was made; aborting" in writer.log
    server.start()
    _write_goes_through(server)
    assert world.leftovers(world.host()) == []
