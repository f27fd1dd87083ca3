"""A throwaway PostgreSQL server for the catalog tests (the fixtures in conftest.py start one per module)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg


class PostgresUnavailable(Exception):
    pass


class PostgresServer:
    """A PostgreSQL cluster in a fresh temporary directory, listening only on a Unix socket there.

    As root, the server runs as the `postgres` system user (PostgreSQL refuses to run as root); its directory is
    made under the system temporary directory rather than pytest's, which is private to root.
    """

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="snapport-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "sock"
        self.port = _free_port()
        self.bindir = _pg_bindir()
        self._as: list[str] = []

    def start(self) -> None:
        if self.bindir is None:
            raise PostgresUnavailable("no PostgreSQL binaries (initdb, pg_ctl) on this machine")
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no postgres user to run the server") from None
            os.chown(self.base, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "-N")
        self._run("mkdir", "-p", str(self.socket_dir), bin_dir=False)
        # Durability off: this server only checks that the SQL works on PostgreSQL; SQLite's crash tests cover
        # what fsync buys.
        settings = {
            "listen_addresses": "''",
            "unix_socket_directories": f"'{self.socket_dir}'",
            "port": str(self.port),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "50",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.base / "server.log"), "-w", "-t", "30", "start")

    def stop(self) -> None:
        """Stop the server (by pg_ctl, else by the pid it recorded) and remove its directory."""
        pid_file = self.data / "postmaster.pid"
        try:
            if pid_file.exists():
                try:
                    self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "20", "stop")
                except PostgresUnavailable:
                    _kill_postmaster(pid_file, self.data)
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def create_database(self) -> str:
        name = f"catalog_{uuid.uuid4().hex[:12]}"
        self._sql(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self._sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def empty_database(self, name: str) -> None:
        """Remove every row (a fresh database per test would cost a CREATE DATABASE each time)."""
        with self._connect(name) as conn:
            tables = [
                row[0]
                for row in conn.execute(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
                )
            ]
            if tables:
                conn.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE".encode())

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def _connect(self, database: str = "postgres") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname=database, autocommit=True
        )

    def _sql(self, statement: str) -> None:
        with self._connect() as conn:
            conn.execute(statement.encode())

    def _run(self, program: str, *args: str, bin_dir: bool = True) -> None:
        exe = str(Path(self.bindir or "") / program) if bin_dir else program
        done = subprocess.run(
            [*self._as, exe, *args], check=False, cwd=self.base, capture_output=True, text=True, timeout=60
        )
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise PostgresUnavailable(f"{program} failed: {lines[-1] if lines else done.returncode}")


def _pg_bindir() -> str | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists() and Path(candidate, "pg_ctl").exists():
            return candidate
    initdb = shutil.which("initdb")
    return str(Path(initdb).resolve().parent) if initdb and shutil.which("pg_ctl") else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _kill_postmaster(pid_file: Path, data: Path) -> None:
    """Last resort: SIGKILL the postmaster named in the pid file, if it is really ours (serves `data`)."""
    try:
        pid = int(pid_file.read_text().splitlines()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError, IndexError):
        return
    if str(data) in cmdline:
        os.kill(pid, signal.SIGKILL)
