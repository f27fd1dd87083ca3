"""Connecting to the catalog database and bringing its schema to the head revision, safely under concurrency.

SQLite: every connection gets WAL, synchronous=FULL, a busy timeout and foreign keys; write transactions start
with BEGIN IMMEDIATE (the write lock is taken up front, so a read-then-write transaction cannot fail half-way with
SQLITE_BUSY); opening (version check, switch to WAL, migration) is serialised by an fcntl lock file next to
the database.
PostgreSQL: the migration runs under a transaction-scoped advisory lock. Everything else is portable Core.

alembic is imported only when a migration is due: opening an up-to-date catalog (every CLI call) reads the version
stamp with plain Core and compares it with the newest `migrations/versions/NNNN_*.py` file.
"""

from __future__ import annotations

import fcntl
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, Connection, Engine, MetaData, String, Table, create_engine, event, inspect, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from snapport.errors import CatalogError

if TYPE_CHECKING:
    from alembic.config import Config

BUSY_TIMEOUT_S = 10.0
WRITE = "snapport_write"  # execution option: this transaction writes (SQLite: BEGIN IMMEDIATE)
_PG_MIGRATION_LOCK = 0x736E6170706F7274  # "snapport", the advisory lock key of the schema migration
SCRIPT_LOCATION = "snapport.catalog:migrations"
VERSIONS = Path(__file__).parent / "migrations" / "versions"
_REVISION_FILE = re.compile(r"^(\d{4})_\w+\.py$")
# alembic's own version stamp, read without alembic (not part of `schema.metadata`: alembic owns it).
_alembic_version = Table("alembic_version", MetaData(), Column("version_num", String(32), primary_key=True))


def parse_url(url: str) -> URL:
    """The URL, with `postgresql://` meaning psycopg 3; anything but SQLite or PostgreSQL is refused."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise CatalogError(f"not a catalog URL: {url!r}") from exc
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise CatalogError(f"unsupported catalog database {parsed.get_backend_name()!r}: use sqlite or postgresql")
    return parsed


def sqlite_path(url: URL) -> Path | None:
    """The database file of an SQLite URL (None for in-memory databases and non-SQLite URLs)."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.database is not None and url.database.startswith("file:"):
        return None
    return Path(url.database or "")


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Take transaction control from the sqlite3 module (it would not BEGIN before SELECT or DDL); `_sqlite_begin`
    # emits BEGIN itself. Busy timeout first, so the journal-mode switch waits for other processes.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _ensure_wal(cursor)
        # FULL: in WAL mode this syncs the log on every commit, so a commit survives a power cut, not just a crash.
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _ensure_wal(cursor: Any) -> None:
    """Switch the database to WAL (once per file: the mode is stored in it). SQLite answers a contended switch
    with SQLITE_BUSY at once, without waiting on the busy timeout, so retry here for as long as that timeout.
    (An in-memory database stays in its `memory` mode; that is accepted.)"""
    if str(cursor.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.005
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _sqlite_begin(connection: Connection) -> None:
    writes = bool(connection.get_execution_options().get(WRITE, False))
    connection.exec_driver_sql("BEGIN IMMEDIATE" if writes else "BEGIN")


def make_engine(url: URL) -> Engine:
    """An engine for `url` with the durability settings of its backend."""
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S})
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": int(BUSY_TIMEOUT_S)})


def alembic_config(connection: Connection | None = None) -> Config:
    """An alembic configuration built in code (no alembic.ini), optionally bound to an open connection."""
    from alembic.config import Config  # noqa: PLC0415  (only when migrating: alembic is slow to import)

    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def known_revisions() -> list[str]:
    """The schema revisions this snapport ships, oldest first: `NNNN` of each `versions/NNNN_what.py`."""
    return sorted(m.group(1) for p in VERSIONS.iterdir() if (m := _REVISION_FILE.match(p.name)))


def head_revision() -> str:
    """The newest schema revision this snapport knows."""
    return known_revisions()[-1]


def current_revision(connection: Connection) -> str | None:
    """The schema revision of the database behind `connection` (None for an empty database)."""
    if not inspect(connection).has_table(_alembic_version.name):
        return None
    stamps = list(connection.scalars(select(_alembic_version.c.version_num)))
    if len(stamps) > 1:
        raise CatalogError(f"the catalog has several schema revisions ({', '.join(stamps)}); it was not made by us")
    return stamps[0] if stamps else None


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on `path`, released when the block ends (or the process dies).

    A user who may only read the catalog cannot create the lock file; it needs no lock, as it cannot migrate.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except PermissionError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def migrate(engine: Engine) -> None:
    """Bring the schema to head; a no-op when it is there already.

    Two processes opening a fresh catalog at once: one migrates, the other waits on the lock and then finds the
    schema at head. The whole upgrade is one transaction, so a crash mid-migration leaves the old schema.
    SQLite: the first connection (which may switch a new file to WAL) is made under the file lock as well.
    """
    path = sqlite_path(engine.url)
    with _file_lock(path.with_name(path.name + ".lock")) if path is not None else nullcontext():
        with engine.connect() as connection:
            current = current_revision(connection)
            connection.rollback()
        if current == head_revision():
            return
        _check_known(current)
        _upgrade(engine)


def _upgrade(engine: Engine) -> None:
    with engine.connect() as connection:
        connection.execution_options(**{WRITE: True})
        with connection.begin():
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
            _check_known(current_revision(connection))
            from alembic import command  # noqa: PLC0415  (only when migrating: alembic is slow to import)

            command.upgrade(alembic_config(connection), "head")


def _check_known(revision: str | None) -> None:
    if revision is not None and revision not in known_revisions():
        raise CatalogError(
            f"the catalog's schema revision {revision} is newer than this snapport knows ({head_revision()}); "
            "upgrade snapport"
        )


def describe(exc: SQLAlchemyError) -> str:
    """The first line of a database error, without SQLAlchemy's background link."""
    orig = getattr(exc, "orig", None)
    text_ = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig or exc).__name__}: {text_[0] if text_ else ''}"
