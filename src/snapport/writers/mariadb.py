"""The `mariadb` writer: a MariaDB server's files (datadir, InnoDB and Aria logs, binary logs) in a snapshot set.

One connection over the server's Unix socket is held from prepare-snapshot to thaw. With `lock=backup-stage` (the
default) it runs `BACKUP STAGE START`, `FLUSH` and `BLOCK_DDL` before the freeze window (they may wait for running
DDL), and only `BACKUP STAGE BLOCK_COMMIT` at freeze: no transaction commits, and the binary log stands still,
until `BACKUP STAGE END` at thaw. `lock=ftwrl` uses `FLUSH TABLES WITH READ LOCK` instead (after a plain
`FLUSH TABLES` in prepare-snapshot), for servers without backup stages. Either way the copy is what a crash at that
instant would leave, which InnoDB and Aria recover on start. The binary log position read while commits are
blocked goes into the BCD as the component's backup metadata (`parse_backup_metadata`); BackupComplete may purge
the binary logs before it. Every statement is bounded by its event's deadline (`max_statement_time`), and a
watchdog lets go when the session's freeze window runs out, as the sqlite writer's does.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from snapport.errors import FreezeTimeout, UsageError, WriterError
from snapport.model import (
    BackupSchema,
    BackupType,
    Component,
    ComponentType,
    FileSpec,
    RestoreMethod,
    RestoreMethodSpec,
    UsageType,
    Volume,
    WriterMetadata,
)
from snapport.writers.base import Deadline, RestoreContext, Session, Tier, Writer
from snapport.writers.database_support import (
    decode_metadata,
    encode_metadata,
    spec_for,
    statement_budget_s,
    volume_of,
)
from snapport.writers.watchdog import FreezeWindowWatchdog

CLASS_ID = uuid.uuid5(uuid.NAMESPACE_DNS, "snapport.writers.mariadb")
LOCKS = ("backup-stage", "ftwrl")
METADATA_FORMAT = "snapport-mariadb/1"
BACKUP_STAGE_SINCE = (10, 4, 1)
_TIMEOUT_ERRORS = (1205, 1969)  # ER_LOCK_WAIT_TIMEOUT, ER_STATEMENT_TIMEOUT (max_statement_time)
_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)")
_LAYOUT_SQL = (
    "SELECT @@datadir, @@log_bin, @@log_bin_basename, @@innodb_log_group_home_dir, @@innodb_data_home_dir, "
    "@@innodb_undo_directory, @@aria_log_dir_path, @@pid_file, @@socket, @@version"
)


@dataclass(frozen=True, slots=True)
class ServerLayout:
    """Where a running server keeps its files, from its own variables (relative directories resolved)."""

    datadir: Path
    version: str
    places: tuple[tuple[str, Path, str, bool], ...]  # (what, directory, pattern, is a log), datadir first
    runtime_files: tuple[Path, ...]  # the pid file and socket: never restored

    @classmethod
    def from_variables(cls, row: Sequence[Any]) -> ServerLayout:
        datadir = Path(os.path.realpath(str(row[0])))

        def place(value: object) -> Path:
            return Path(os.path.realpath(datadir / str(value))) if value else datadir

        log_bin, binlog_base, redo, data_home, undo, aria, pid_file, sock, version = row[1:]
        places: list[tuple[str, Path, str, bool]] = [("datadir", datadir, "*", False)]
        for what, directory in (("InnoDB data home", place(data_home)), ("InnoDB undo directory", place(undo))):
            if directory != datadir:
                places.append((what, directory, "*", False))
        places.append(("InnoDB redo log", place(redo), "ib_logfile*", True))
        places.append(("Aria log", place(aria), "aria_log*", True))
        if int(log_bin or 0) and binlog_base:
            base = place(binlog_base)
            places.append(("binary log", base.parent, glob.escape(base.name) + ".*", True))
        runtime = tuple(place(p) for p in (pid_file, sock) if p)
        return cls(datadir, str(version), tuple(places), runtime)

    @property
    def version_tuple(self) -> tuple[int, int, int] | None:
        found = _VERSION.match(self.version)
        return (int(found[1]), int(found[2]), int(found[3])) if found else None


def parse_backup_metadata(text: str) -> dict[str, object]:
    """The fields of a component's backup metadata, as `post_snapshot` wrote them."""
    return decode_metadata(METADATA_FORMAT, text)


def mariadb_writer_id(host: str, socket: Path) -> uuid.UUID:
    """Stable across runs for the same host and server socket."""
    return uuid.uuid5(CLASS_ID, f"{host}:{socket}")


class MariadbWriter(Writer):
    """Makes one MariaDB server consistent for a snapshot by blocking commits on a held connection."""

    kind: ClassVar[str] = "mariadb"
    tier: ClassVar[Tier] = Tier.APPLICATION
    class_id: ClassVar[uuid.UUID] = CLASS_ID

    def __init__(
        self,
        socket: str | Path,
        volumes: Sequence[Volume],
        *,
        host: str,
        user: str = "root",
        lock: str = "backup-stage",
        purge_binlogs: bool = False,
        defaults_file: str | Path | None = None,
    ) -> None:
        if lock not in LOCKS:
            raise UsageError(f"mariadb writer: lock must be one of {', '.join(LOCKS)}, not {lock!r}")
        for what, path in (("socket", socket), ("defaults_file", defaults_file)):
            if path is not None and not Path(path).is_absolute():
                raise UsageError(f"mariadb writer: {what} {str(path)!r} is not absolute")
        self.socket = Path(socket)
        self.volumes = tuple(volumes)
        self.host = host
        self.user = user
        self.lock = lock
        self.purge_binlogs = purge_binlogs
        self.defaults_file = Path(defaults_file) if defaults_file is not None else None
        self.writer_id = mariadb_writer_id(host, self.socket)
        self.instance_name = str(self.socket)
        self.backup_complete_count = 0  # observable: backup-complete must come at most once per backup
        self.last_purge: str | None = None  # what the last BackupComplete did to the binary logs
        self._lock = threading.Lock()  # events may come from several worker threads (an overrun one included)
        self._conn: Any = None  # pymysql.Connection, held from prepare-snapshot to thaw
        self._datadir: Path | None = None  # the component's name, learnt in prepare-snapshot
        self._position: dict[str, object] = {}  # the binary log position read while frozen
        self._watchdog = FreezeWindowWatchdog(self._lock, self._release, lambda: self._conn is not None)
        self._aborted: uuid.UUID | None = None

    @property
    def holding(self) -> bool:
        """Whether this writer holds a connection (and so a backup stage or a read lock)."""
        with self._lock:
            return self._conn is not None

    def layout(self, deadline: Deadline) -> ServerLayout:
        """Ask the server where its files are (one short connection)."""
        conn = self._connect(deadline)
        try:
            return ServerLayout.from_variables(self._query(conn, _LAYOUT_SQL, deadline)[0])
        finally:
            conn.close()

    # -- the Writer protocol ------------------------------------------------------------------------------------

    def check_volumes(self, layout: ServerLayout, volumes: Sequence[Volume]) -> list[Volume]:
        """The volume of each of the server's directories (as `layout.places`); `UsageError` if one is not in
        `volumes`: a copy without it would not start, or not be the server's state at one instant."""
        found = []
        for what, directory, _pattern, _is_log in layout.places:
            volume = volume_of(directory, volumes)
            if volume is None:
                listed = ", ".join(v.mount_point for v in volumes) or "none"
                raise UsageError(
                    f"MariaDB keeps its {what} in {directory}, on a volume that is not in the snapshot set ({listed})"
                )
            found.append(volume)
        return found

    def identify(self, deadline: Deadline) -> WriterMetadata:
        layout = self.layout(deadline)
        data: list[FileSpec] = []
        logs: list[FileSpec] = []
        for (_what, directory, pattern, is_log), volume in zip(
            layout.places, self.check_volumes(layout, self.volumes), strict=True
        ):
            (logs if is_log else data).append(spec_for(directory, volume, pattern, recursive=not is_log))
        excludes = []
        for path in layout.runtime_files:
            holder = volume_of(path.parent, self.volumes)
            if holder is not None:
                excludes.append(spec_for(path.parent, holder, glob.escape(path.name), recursive=False))
        return WriterMetadata(
            writer_id=self.writer_id,
            class_id=self.class_id,
            name=self.kind,
            instance_name=self.instance_name,
            usage=UsageType.USER_DATA,
            components=(
                Component(
                    type=ComponentType.DATABASE,
                    name=str(layout.datadir),
                    caption=f"MariaDB {layout.version} at {self.socket} ({self.lock})",
                    database_files=tuple(data),
                    log_files=tuple(logs),
                ),
            ),
            excludes=tuple(excludes),
            restore_method=RestoreMethodSpec(method=RestoreMethod.STOP_RESTORE_START, service="mariadb"),
            backup_schema=BackupSchema.COPY,
        )

    def prepare_backup(self, session: Session, components: tuple[str, ...], deadline: Deadline) -> None:
        """Check the server answers, keeps its files on the set's volumes, and supports the lock chosen."""
        layout = self.layout(deadline)
        self.check_volumes(layout, session.volumes)
        version = layout.version_tuple
        if self.lock == "backup-stage" and (
            "mariadb" not in layout.version.lower() or version is None or version < BACKUP_STAGE_SINCE
        ):
            raise WriterError(f"server {layout.version} has no BACKUP STAGE (MariaDB 10.4.1 or later); use lock=ftwrl")

    def prepare_snapshot(self, session: Session, deadline: Deadline) -> None:
        """Open the held connection and take the stages that may wait (for DDL, for table flushes) now, outside
        the freeze window."""
        steps = ("BACKUP STAGE START", "BACKUP STAGE FLUSH", "BACKUP STAGE BLOCK_DDL")
        with self._lock:
            self._release()
            conn = self._connect(deadline)
            self._conn = conn
            try:
                self._datadir = Path(os.path.realpath(str(self._query(conn, "SELECT @@datadir", deadline)[0][0])))
                for statement in steps if self.lock == "backup-stage" else ("FLUSH TABLES",):
                    self._query(conn, statement, deadline)
            except BaseException:
                self._release()
                raise

    def freeze(self, session: Session, deadline: Deadline) -> None:
        """Block commits (`BACKUP STAGE BLOCK_COMMIT` or `FLUSH TABLES WITH READ LOCK`), then read the binary log
        position, which stands still until thaw."""
        with self._lock:
            if self._aborted == session.set_id:
                raise WriterError(f"set {session.set_id} was aborted; not freezing {self.instance_name}")
            if self._conn is None:
                raise WriterError("no connection held: prepare-snapshot did not run")
            statement = "BACKUP STAGE BLOCK_COMMIT" if self.lock == "backup-stage" else "FLUSH TABLES WITH READ LOCK"
            try:
                self._query(self._conn, statement, deadline)
                status = self._query(self._conn, "SHOW MASTER STATUS", deadline)
                gtid = self._query(self._conn, "SELECT @@gtid_binlog_pos", deadline)[0][0]
            except FreezeTimeout as exc:
                self._release()
                raise FreezeTimeout(f"could not block commits: {exc.message}") from None
            except BaseException:
                self._release()
                raise
            self._position = {
                "binlog_file": str(status[0][0]) if status else None,
                "binlog_position": int(status[0][1]) if status else None,
                "gtid_binlog_pos": str(gtid or ""),
            }
            self._watchdog.start(session.freeze_window_s)

    def thaw(self, session: Session, deadline: Deadline) -> None:
        with self._lock:
            expired_after = self._watchdog.take_expiry()
            self._release()
        if expired_after is not None:
            raise WriterError(
                f"{self.instance_name}: commits were let through when the freeze window ({expired_after:g} s) ran "
                "out, before thaw was asked; the snapshot may be inconsistent"
            )

    def post_snapshot(self, session: Session, deadline: Deadline) -> Mapping[str, str]:
        """The binary log position of the copy (file, offset, GTID position) for its component."""
        with self._lock:
            if self._datadir is None or not self._position:
                raise WriterError("no binary log position: the writer did not freeze for this set")
            fields = {"lock": self.lock, **self._position}
            return {str(self._datadir): encode_metadata(METADATA_FORMAT, fields)}

    def abort(self, session: Session, deadline: Deadline) -> None:
        """End the backup stage or read lock and close: the server runs as if no backup had started."""
        with self._lock:
            self._aborted = session.set_id
            self._watchdog.take_expiry()
            self._release()

    def backup_complete(self, session: Session, succeeded: Mapping[str, bool], deadline: Deadline) -> None:
        """With `purge_binlogs=yes`: `PURGE BINARY LOGS TO` the file the backup's position is in, unless the backup
        is a `copy` or the component did not succeed."""
        self.backup_complete_count += 1
        if not self.purge_binlogs:
            return
        if session.backup_type is BackupType.COPY:
            self.last_purge = "not purged: a copy backup leaves the binary logs alone"
            return
        done = [(name, text) for name, text in session.backup_metadata.items() if succeeded.get(name, False)]
        if not done:
            self.last_purge = "not purged: no component with backup metadata succeeded"
            raise WriterError(f"no backup metadata for {self.instance_name}; binary logs left alone")
        binlog = parse_backup_metadata(done[0][1]).get("binlog_file")
        if not isinstance(binlog, str) or not binlog:
            self.last_purge = "not purged: binary logging was off during the backup"
            return
        conn = self._connect(deadline)
        try:
            self._query(conn, "PURGE BINARY LOGS TO %s", deadline, binlog)
        finally:
            conn.close()
        self.last_purge = f"purged the binary logs before {binlog}"

    def backup_shutdown(self, session: Session, deadline: Deadline) -> None:
        with self._lock:
            self._watchdog.take_expiry()
            self._release()

    def pre_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        """Veto while a live server runs on a restored datadir (STOP_RESTORE_START: it must be stopped first)."""
        for component in restore.components:
            datadir = restore.location(component)
            pid = live_server(datadir)
            if pid is not None:
                raise WriterError(
                    f"a MariaDB server (pid {pid}) runs on {datadir}; stop it first (systemctl stop mariadb, or "
                    "mariadb-admin shutdown) or restore somewhere else"
                )

    def post_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        """InnoDB and Aria recover by themselves when the server starts; nothing to do."""

    # -- helpers ------------------------------------------------------------------------------------------------

    def _connect(self, deadline: Deadline) -> Any:
        import pymysql  # type: ignore[import-untyped]  # noqa: PLC0415  (loaded only when a server is asked)

        options: dict[str, Any] = {}
        if self.defaults_file is not None:
            options = {"read_default_file": str(self.defaults_file), "read_default_group": "client"}
        try:
            return pymysql.connect(
                unix_socket=str(self.socket),
                user=self.user,
                autocommit=True,
                connect_timeout=min(max(1.0, statement_budget_s(deadline)), 60.0),
                charset="utf8mb4",
                **options,
            )
        except pymysql.MySQLError as exc:
            raise WriterError(f"cannot connect to MariaDB at {self.socket} as {self.user}: {exc}") from None

    def _query(self, conn: Any, sql: str, deadline: Deadline, *params: object) -> list[tuple[Any, ...]]:
        """Run one statement bounded by the deadline (`max_statement_time`); all its rows."""
        import pymysql  # noqa: PLC0415

        budget_s = statement_budget_s(deadline)
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"SET SESSION max_statement_time = {budget_s:.3f}")
                cursor.execute(sql, params or None)
                return [tuple(row) for row in cursor.fetchall()]
        except pymysql.MySQLError as exc:
            code = exc.args[0] if exc.args else None
            if code in _TIMEOUT_ERRORS:
                raise FreezeTimeout(f"MariaDB did not finish {sql!r} within {budget_s:.3g} s") from None
            raise WriterError(f"MariaDB at {self.socket}: {sql}: {exc}") from None

    def _release(self) -> None:
        """End the backup stage or read lock, close, stop the watchdog (idempotent; call with the lock held)."""
        self._watchdog.stop()
        conn, self._conn = self._conn, None
        if conn is None:
            return
        # Closing the connection ends a backup stage or read lock all the same; ending it first is only quicker.
        with contextlib.suppress(Exception), conn.cursor() as cursor:
            cursor.execute("BACKUP STAGE END" if self.lock == "backup-stage" else "UNLOCK TABLES")
        with contextlib.suppress(Exception):  # already closed (the server went away)
            conn.close()

    def __repr__(self) -> str:
        return f"MariadbWriter({str(self.socket)!r}, lock={self.lock!r}, host={self.host!r})"


SERVER_NAMES = ("mariadbd", "mysqld")
INNODB_SYSTEM_FILE = "ibdata1"  # InnoDB holds a POSIX write lock on it while the server runs


def live_server(datadir: Path) -> int | None:
    """The pid of a live server on `datadir`, or None: a `mariadbd`/`mysqld` process whose working directory is
    `datadir` (the server changes into its datadir at start), or a process holding InnoDB's lock on its
    `ibdata1`. A pid file is not trusted: it may be elsewhere (`--pid-file`) or stale."""
    try:
        real = os.path.realpath(datadir, strict=True)
    except OSError:
        return None  # nothing there yet: nothing runs on it
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if Path(f"/proc/{entry.name}/comm").read_text().strip() not in SERVER_NAMES:
                continue
            cwd = Path(f"/proc/{entry.name}/cwd").readlink()
        except OSError:
            continue  # gone, or not ours to look at
        if os.path.realpath(cwd) == real:
            return int(entry.name)
    return _lock_holder(Path(real) / INNODB_SYSTEM_FILE)


def _lock_holder(path: Path) -> int | None:
    """A pid holding a POSIX (fcntl) lock on `path`, from /proc/locks; None for none or no such file."""
    try:
        info = path.stat()
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    wanted = (os.major(info.st_dev), os.minor(info.st_dev), info.st_ino)
    for line in lines:
        fields = line.split()
        if "->" in fields or len(fields) < 6 or fields[1] not in ("POSIX", "OFDLCK"):
            continue
        where = fields[5].split(":")
        try:
            key = (int(where[0], 16), int(where[1], 16), int(where[2]))
        except (IndexError, ValueError):
            continue
        if key == wanted and fields[4].isdigit() and int(fields[4]) > 0:
            return int(fields[4])
    return None
