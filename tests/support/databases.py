"""Throwaway PostgreSQL and MariaDB servers for the database writer tests, each stopped by its own pid or pg_ctl;
what the tests read back from them; and the writer conformance suite's database cases.

The servers run as the `postgres` and `mysql` system users, which cannot enter pytest's temporary directories
(private to root): their files live under a `shared_dir`, a directory in /tmp that others may traverse but not
list. They listen on a Unix socket only, never on the network, and never touch a server they did not start.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pymysql

from snapport.osal import mount as mnt
from tests.conftest import Filesystem, Scratch


def _pg_bindir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists() and Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    return None


PG_BIN = _pg_bindir()
MARIADBD = shutil.which("mariadbd", path="/usr/sbin:/usr/bin:" + os.environ.get("PATH", ""))
MARIADB_INSTALL_DB = shutil.which("mariadb-install-db")


def missing_postgresql() -> str | None:
    """Why PostgreSQL servers cannot be started here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    if PG_BIN is None:
        return "no PostgreSQL binaries (initdb, pg_ctl)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "no postgres user"
    return None


def missing_mariadb() -> str | None:
    """Why MariaDB servers cannot be started here, or None."""
    if os.geteuid() != 0:
        return "needs root"
    if MARIADBD is None or MARIADB_INSTALL_DB is None:
        return "no mariadbd / mariadb-install-db"
    try:
        pwd.getpwnam("mysql")
    except KeyError:
        return "no mysql user"
    return None


def _make_shared(prefix: str) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o711)  # others may traverse it, not list it
    return path


def _remove_shared(path: Path) -> None:
    """Remove a shared directory, unless something is still mounted below it (the session's leak check reports
    the mount's loop device then; removing files through a live mount would be worse)."""
    below = str(path) + "/"
    if not any(m.mount_point.startswith(below) for m in mnt.mounts()):
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def shared_dir(prefix: str = "snapport-db-") -> Iterator[Path]:
    """A fresh directory in /tmp that the server users may traverse (mode 0711), removed at the end."""
    path = _make_shared(prefix)
    try:
        yield path
    finally:
        _remove_shared(path)


def database_filesystem(scratch: Scratch, size_mb: int = 256) -> tuple[Path, Filesystem]:
    """A scratch ext4 filesystem mounted in a fresh shared directory (for the writer conformance suite); both are
    undone by `scratch`, the directory after the unmount. Returns (shared directory, filesystem)."""
    shared = _make_shared("snapport-db-")
    scratch.defer(lambda: _remove_shared(shared), f"remove {shared}")  # deferred first, so it runs last
    image = scratch.image(shared.name, size_mb)
    scratch.mkfs("ext4", image)
    device = scratch.loop(image)
    mount_point = scratch.mount(device, shared / "volume", fs_type="ext4")
    return shared, Filesystem(image, device, mount_point, "ext4")


def owned_dir(path: Path, user: str, mode: int = 0o700) -> Path:
    """`path` created (with its parents, as root) and given to `user`."""
    path.mkdir(parents=True, exist_ok=True)
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(mode)
    return path


def chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for directory, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.lchown(Path(directory, name), entry.pw_uid, entry.pw_gid)
    os.lchown(path, entry.pw_uid, entry.pw_gid)


_TEMPLATES: dict[str, Path] = {}


def _template(kind: str, make: Callable[[Path], None]) -> Path:
    """A fresh data directory of `kind`, made once per test process (initdb and mariadb-install-db take a second or
    two) and copied for each server; removed when the process exits."""
    if kind not in _TEMPLATES:
        base = _make_shared(f"snapport-{kind}-template-")
        atexit.register(_remove_shared, base)
        make(base / "data")
        _TEMPLATES[kind] = base / "data"
    return _TEMPLATES[kind]


def _copy_template(template: Path, target: Path, user: str, mode: int) -> None:
    owned_dir(target, user, mode)
    subprocess.run(["cp", "-a", f"{template}/.", str(target)], check=True, capture_output=True, timeout=120)


def _install_db(datadir: Path) -> None:
    assert MARIADB_INSTALL_DB is not None
    owned_dir(datadir, "mysql", 0o750)
    done = subprocess.run(
        [
            MARIADB_INSTALL_DB,
            "--no-defaults",
            f"--datadir={datadir}",
            "--user=mysql",
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--skip-name-resolve",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr or done.stdout


def _kill_if_serving(pid: int, needle: str) -> None:
    """SIGKILL `pid` only if its command line names `needle` (its data directory): never another server."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return
    if needle in cmdline:
        os.kill(pid, signal.SIGKILL)


class PgServer:
    """A PostgreSQL cluster in `data` (given to the postgres user), listening on a socket in `socket_dir`."""

    def __init__(self, data: Path, socket_dir: Path, *, port: int = 5432) -> None:
        self.data = data
        self.socket_dir = socket_dir
        self.port = port
        self.log = socket_dir / f"server-{data.name}.log"

    def init(self, *, waldir: Path | None = None, settings: dict[str, str] | None = None) -> None:
        """A new cluster: initdb (with `waldir`), or a copy of this process's initdb template (without)."""
        owned_dir(self.socket_dir, "postgres", 0o755)
        if waldir is None:
            _copy_template(_template("postgresql", self._initdb), self.data, "postgres", 0o700)
        else:
            owned_dir(waldir, "postgres")
            self._initdb(self.data, "--waldir", str(waldir))
        self.configure(
            {
                "listen_addresses": "''",
                "unix_socket_directories": f"'{self.socket_dir}'",
                "port": str(self.port),
                "max_connections": "30",
                **(settings or {}),
            }
        )

    def _initdb(self, data: Path, *args: str) -> None:
        owned_dir(data, "postgres")
        self.run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "-N", *args)

    def configure(self, settings: dict[str, str]) -> None:
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self, timeout_s: int = 60) -> None:
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(timeout_s), "start")

    def stop(self) -> None:
        """pg_ctl stop (fast); if that fails, SIGKILL the postmaster named in its pid file (if it serves `data`)."""
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop")
        except (AssertionError, subprocess.TimeoutExpired):
            with contextlib.suppress(OSError, ValueError, IndexError):
                _kill_if_serving(int(pid_file.read_text().splitlines()[0]), str(self.data))

    def run(self, program: str, *args: str, timeout: float = 120) -> str:
        assert PG_BIN is not None
        done = subprocess.run(
            ["runuser", "-u", "postgres", "--", str(PG_BIN / program), *args],
            cwd=self.socket_dir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        log = self.log.read_text()[-3000:] if self.log.exists() else ""
        assert done.returncode == 0, f"{program} failed: {done.stderr or done.stdout}\n{log}"
        return done.stdout

    def client_args(self) -> list[str]:
        return ["-h", str(self.socket_dir), "-p", str(self.port), "-U", "postgres"]

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname=dbname, autocommit=True
        )

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with self.connect() as conn:
            cursor = conn.execute(sql.encode())
            return cursor.fetchall() if cursor.description else []

    def spec(self, **options: str) -> str:
        pairs = {"host": str(self.socket_dir), "port": str(self.port), **options}
        return f"postgresql:{self.data}," + ",".join(f"{k}={v}" for k, v in pairs.items())

    def pgbench(self, *args: str, **popen: Any) -> subprocess.Popen[str]:
        assert PG_BIN is not None
        return subprocess.Popen([str(PG_BIN / "pgbench"), *self.client_args(), *args, "postgres"], text=True, **popen)


class MariaServer:
    """A MariaDB server with its datadir at `datadir` (given to the mysql user), on a socket in `run_dir`."""

    def __init__(self, datadir: Path, run_dir: Path) -> None:
        self.datadir = datadir
        self.run_dir = run_dir
        self.socket = run_dir / f"{datadir.name}.sock"
        self.pid_file = run_dir / f"{datadir.name}.pid"
        self.log = run_dir / f"{datadir.name}.err"
        self.proc: subprocess.Popen[bytes] | None = None

    def install(self) -> None:
        """A new datadir: a copy of this process's mariadb-install-db template."""
        owned_dir(self.run_dir, "mysql", 0o755)
        _copy_template(_template("mariadb", _install_db), self.datadir, "mysql", 0o750)

    def argv(self, *extra: str) -> list[str]:
        assert MARIADBD is not None
        return [
            MARIADBD,
            "--no-defaults",
            f"--datadir={self.datadir}",
            "--user=mysql",
            f"--socket={self.socket}",
            "--skip-networking",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.log}",
            "--log-bin=binlog",
            "--server-id=1",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=16M",
            "--open-files-limit=4096",
            "--max-connections=50",
            *extra,
        ]

    def start(self, *extra: str, timeout_s: float = 120) -> None:
        with (self.run_dir / f"{self.datadir.name}.out").open("ab") as out:  # what it says before its log opens
            self.proc = subprocess.Popen(self.argv(*extra), stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                assert self.proc.poll() is None, f"mariadbd exited {self.proc.returncode}: {self._log_tail()}"
                if self.socket.exists():
                    with contextlib.suppress(pymysql.MySQLError):
                        self.connect().close()
                        return
                assert time.monotonic() < deadline, f"mariadbd did not answer in {timeout_s} s: {self._log_tail()}"
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM (a clean shutdown) by pid, SIGKILL if it takes longer than a minute."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)

    def connect(self, database: str | None = None) -> pymysql.Connection[Any]:
        return pymysql.connect(unix_socket=str(self.socket), user="root", database=database, autocommit=True)

    def query(self, sql: str, params: Sequence[object] | None = None) -> list[tuple[Any, ...]]:
        conn = self.connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql, params)
                return [tuple(row) for row in cursor.fetchall()]
        finally:
            conn.close()

    def spec(self, **options: str) -> str:
        pairs = {"user": "root", **options}
        return f"mariadb:{self.socket}," + ",".join(f"{k}={v}" for k, v in pairs.items())

    def _log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else "(no error log)"


# -- what the tests wait for and read back -------------------------------------------------------------------------

# pgbench's invariant (the sums of the three balances and of the history's deltas are equal in any consistent
# state), and the history's length
SUMS = (
    "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(tbalance) FROM pgbench_tellers), "
    "(SELECT sum(bbalance) FROM pgbench_branches), (SELECT coalesce(sum(delta), 0) FROM pgbench_history), "
    "(SELECT count(*) FROM pgbench_history)"
)


def wal_files(archive: Path) -> list[str]:
    """The WAL segments in a WAL archive (by their 24-character names), in order."""
    return sorted(p.name for p in archive.iterdir() if len(p.name) == 24)


def wait_for(condition: object, what: str, timeout_s: float = 60) -> None:
    """Poll `condition` (a callable) until it holds; fail naming `what` after `timeout_s`."""
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


# -- the writer conformance suite's database cases -----------------------------------------------------------------

DATABASE_KINDS = ("mariadb", "postgresql")


@dataclass
class DatabaseCase:
    """What `tests/contract/test_writers.py` needs for a database writer kind, its server already started."""

    spec: str
    probe_code: str  # one committed write, for a subprocess
    contention: Callable[[], contextlib.AbstractContextManager[None]]
    freeze_holds_writes: bool  # the postgresql writer leaves holding writes to the filesystem freeze
    stop: Callable[[], None]


def wal_archiving(archive: Path) -> dict[str, str]:
    """The settings that make a server archive its WAL into `archive` (which backup-mode needs)."""
    return {"archive_mode": "on", "archive_command": f"'test ! -f {archive}/%f && cp %p {archive}/%f'"}


def database_case(kind: str, mount_point: Path, shared: Path) -> DatabaseCase:
    """Start a server of `kind` with its files on `mount_point` and describe it for the conformance suite."""
    if kind == "postgresql":
        pg = PgServer(mount_point / "data", shared / "sock")
        pg.init(settings=wal_archiving(owned_dir(shared / "archive", "postgres")))
        pg.start()
        try:
            pg.query("CREATE TABLE t (v text)")
        except BaseException:
            pg.stop()
            raise
        connect = f"psycopg.connect(host={str(pg.socket_dir)!r}, port={pg.port}, user='postgres', autocommit=True)"
        return DatabaseCase(
            spec=pg.spec(mode="backup-mode"),
            probe_code=f"import psycopg; {connect}.execute(\"INSERT INTO t VALUES ('probe')\")",
            contention=lambda: _backup_session_ended(pg),
            freeze_holds_writes=False,
            stop=pg.stop,
        )
    maria = MariaServer(mount_point / "data", shared / "run")
    maria.install()
    maria.start()
    try:
        maria.query("CREATE DATABASE probe")
        maria.query("CREATE TABLE probe.t (v TEXT) ENGINE=InnoDB")
    except BaseException:
        maria.stop()
        raise
    connect = f"pymysql.connect(unix_socket={str(maria.socket)!r}, user='root', autocommit=True)"
    return DatabaseCase(
        spec=maria.spec(),
        probe_code=f"import pymysql; {connect}.cursor().execute(\"INSERT INTO probe.t VALUES ('probe')\")",
        contention=lambda: _commit_in_flight(maria),
        freeze_holds_writes=True,
        stop=maria.stop,
    )


@contextlib.contextmanager
def _backup_session_ended(server: PgServer) -> Iterator[None]:
    """The postgresql writer's held backup session is terminated (PostgreSQL aborts its backup)."""
    from snapport.writers.postgresql import APPLICATION_NAME  # noqa: PLC0415

    server.query(
        f"SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE application_name = '{APPLICATION_NAME}'"
    )
    yield


@contextlib.contextmanager
def _commit_in_flight(server: MariaServer) -> Iterator[None]:
    """A commit that lasts seconds (binary log group commit told to wait for a partner that never comes): what
    `BACKUP STAGE BLOCK_COMMIT` must wait for."""
    server.query("SET GLOBAL binlog_commit_wait_count = 2, GLOBAL binlog_commit_wait_usec = 3000000")
    committer = threading.Thread(target=server.query, args=("INSERT INTO probe.t VALUES ('in flight')",))
    committer.start()
    try:
        time.sleep(0.3)
        yield
    finally:
        server.query("SET GLOBAL binlog_commit_wait_count = 0, GLOBAL binlog_commit_wait_usec = 100000")
        committer.join(30)
