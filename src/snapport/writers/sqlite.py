"""The `sqlite` writer: holds each database's write lock across the snapshot, so no transaction is half on it.

`freeze` opens its own connection and runs `BEGIN IMMEDIATE`, which takes the write lock (WAL mode) or the
RESERVED lock (rollback journal): every other writer waits, readers carry on, and the files on disk hold exactly
the committed transactions. `thaw` rolls back (nothing was written) and closes. `prepare_snapshot` checkpoints
the WAL first so the snapshot carries a short log. Like the filesystem writer's guard, an in-process watchdog
lets go of the lock when the session's freeze window runs out, and `thaw` then reports it.

At a restore, `pre_restore` vetoes while the database is live where it would be restored: a process has the
database file, or its `-wal`, `-shm` or `-journal` file, open (an idle connection holds no lock in rollback-journal
mode, so a lock probe would miss it; an open descriptor does not).
"""

from __future__ import annotations

import functools
import glob
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote

from snapport.errors import FreezeTimeout, UsageError, WriterError
from snapport.model import (
    BackupSchema,
    Component,
    ComponentType,
    FileSpec,
    RestoreMethod,
    RestoreMethodSpec,
    UsageType,
    Volume,
    WriterMetadata,
)
from snapport.model.paths import relative_to_volume
from snapport.osal.mount import containing_mount
from snapport.writers.base import Deadline, RestoreContext, Session, Tier, Writer
from snapport.writers.watchdog import FreezeWindowWatchdog

CLASS_ID = uuid.uuid5(uuid.NAMESPACE_DNS, "snapport.writers.sqlite")
CHECKPOINT_MODES = ("truncate", "restart", "full", "passive", "off")
CHECKPOINT_WAIT_S = 5.0  # the checkpoint only shortens the log the snapshot carries: not worth a longer wait
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
# SQLite's busy handler sleeps up to 100 ms between tries, and a process that commits back to back frees its lock
# for microseconds only: waiting that way starves. So locks are tried here, every half millisecond.
_POLL_S = 0.0005
_HEADER = b"SQLite format 3\x00"
DATABASE_SUFFIXES = ("", "-wal", "-shm", "-journal")  # the database and the files SQLite keeps beside it


def sqlite_writer_id(host: str, databases: Sequence[Path]) -> uuid.UUID:
    """Stable across runs for the same host and databases."""
    return uuid.uuid5(CLASS_ID, host + ":" + "\n".join(sorted(map(str, databases))))


def volume_holding(path: Path, volumes: Sequence[Volume]) -> Volume:
    """The set's volume that holds `path` (its containing mount, symlinks resolved); `UsageError` if none does."""
    real = Path(os.path.realpath(path))
    mount_point = containing_mount(real).mount_point
    for volume in volumes:
        if volume.mount_point == mount_point:
            return volume
    listed = ", ".join(v.mount_point for v in volumes) or "none"
    raise UsageError(f"{path} is on {mount_point}, which is not one of the snapshot set's volumes ({listed})")


def journal_mode(path: Path) -> str:
    """`wal` or `delete` (rollback journal), read from the file header: no connection, no lock, no state.

    A missing or empty file is what SQLite would create: a rollback-journal database.
    """
    try:
        with path.open("rb") as f:
            header = f.read(100)
    except FileNotFoundError:
        return "delete"
    # Bytes 18 and 19 are the file format write/read versions: 2 means WAL.
    if len(header) == 100 and header.startswith(_HEADER) and header[18] == 2:
        return "wal"
    return "delete"


def processes_using(paths: Sequence[Path]) -> list[tuple[int, Path]]:
    """(pid, path) for each other process with one of `paths` open, found by its /proc/PID/fd links (the same
    file: same device and inode, so a bind mount or another path to it counts too). Processes whose descriptors
    may not be read (another user's, when not root) are not seen."""
    wanted: dict[tuple[int, int], Path] = {}
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            continue  # absent: nobody has it open at this path
        if stat.S_ISREG(info.st_mode):
            wanted[(info.st_dev, info.st_ino)] = path
    if not wanted:
        return []
    names = {p.name for p in wanted.values()}
    found: list[tuple[int, Path]] = []
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            fds = list(Path(f"/proc/{entry.name}/fd").iterdir())
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                # The link's text first (no filesystem is asked); only a likely name is stat'ed to compare inodes.
                if fd.readlink().name not in names:
                    continue
                info = fd.stat()
            except OSError:
                continue
            hit = wanted.get((info.st_dev, info.st_ino))
            if hit is not None:
                found.append((int(entry.name), hit))
                break
    return found


def _command(pid: int) -> str:
    """`, COMMAND` for a message, from /proc/PID/comm; empty when it cannot be read."""
    try:
        return ", " + Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _budget_s(deadline: Deadline, share: int = 1) -> float:
    """How long one of `share` databases may wait for a lock and still let the call return inside its deadline."""
    return max(0.0, deadline.remaining() / max(share, 1) * 0.9 - 0.01)


def _is_busy(exc: sqlite3.Error) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in (_SQLITE_BUSY, _SQLITE_LOCKED)


def _begin_immediate(conn: sqlite3.Connection) -> bool:
    """Take the write lock (WAL) or RESERVED lock (rollback journal) if it is free now; False if it is not."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        if _is_busy(exc):
            return False
        raise
    return True


def _until_done(attempt: Callable[[], bool], budget_s: float) -> bool:
    """Repeat `attempt` (False: busy, try again) until it succeeds or `budget_s` has passed."""
    end = time.monotonic() + budget_s
    while not attempt():
        if time.monotonic() >= end:
            return False
        time.sleep(_POLL_S)
    return True


@dataclass(frozen=True, slots=True)
class _Database:
    path: Path  # absolute, symlinks resolved
    volume: Volume
    directory: str  # relative to the volume's mount point

    def spec(self, suffix: str = "") -> FileSpec:
        return FileSpec(
            volume=self.volume.mount_point, path=self.directory, pattern=glob.escape(self.path.name + suffix)
        )


class SqliteWriter(Writer):
    """Makes one or more SQLite databases consistent for a snapshot by holding their write locks."""

    kind: ClassVar[str] = "sqlite"
    tier: ClassVar[Tier] = Tier.APPLICATION
    class_id: ClassVar[uuid.UUID] = CLASS_ID

    def __init__(
        self, databases: Sequence[str | Path], volumes: Sequence[Volume], *, host: str, checkpoint: str = "truncate"
    ) -> None:
        if not databases:
            raise UsageError("a sqlite writer needs at least one database")
        if checkpoint not in CHECKPOINT_MODES:
            raise UsageError(f"checkpoint must be one of {', '.join(CHECKPOINT_MODES)}, not {checkpoint!r}")
        found: dict[Path, _Database] = {}
        for given in databases:
            if not Path(given).is_absolute():
                raise UsageError(f"database path {str(given)!r} is not absolute")
            path = Path(os.path.realpath(given))
            volume = volume_holding(path, volumes)
            found[path] = _Database(path, volume, relative_to_volume(volume.mount_point, str(path.parent)))
        self._setup(tuple(found[p] for p in sorted(found)), host, checkpoint)  # one lock order for every freeze

    @classmethod
    def for_restore(cls, instance_name: str, *, host: str) -> SqliteWriter:
        """A writer for a restore's events only, rebuilt from its metadata document on any host: it knows no
        database of its own (its restore context names the restored ones) and cannot take part in a backup."""
        writer = cls.__new__(cls)
        writer._setup((), host, "off")
        writer.instance_name = instance_name
        return writer

    def _setup(self, databases: tuple[_Database, ...], host: str, checkpoint: str) -> None:
        self._databases = databases
        self.host = host
        self.checkpoint = checkpoint
        self.writer_id = sqlite_writer_id(host, [d.path for d in self._databases])
        self.instance_name = ", ".join(str(d.path) for d in self._databases)
        self.backup_complete_count = 0  # observable: backup-complete must come at most once per backup
        self.last_checkpoint: dict[str, tuple[int, int, int] | str] = {}  # db → (busy, log, checkpointed) or why
        self._lock = threading.Lock()  # events may come from several worker threads (an overrun one included)
        self._held: list[sqlite3.Connection] = []
        self._watchdog = FreezeWindowWatchdog(self._lock, self._release, lambda: bool(self._held))
        self._aborted: uuid.UUID | None = None

    @property
    def databases(self) -> tuple[Path, ...]:
        return tuple(d.path for d in self._databases)

    @property
    def holding(self) -> bool:
        """Whether this writer holds any database's write lock."""
        with self._lock:
            return bool(self._held)

    def identify(self, deadline: Deadline) -> WriterMetadata:
        components = []
        for db in self._databases:
            wal = journal_mode(db.path) == "wal"
            logs = (db.spec("-wal"), db.spec("-shm")) if wal else (db.spec("-journal"),)
            components.append(
                Component(
                    type=ComponentType.DATABASE,
                    name=str(db.path),
                    caption=f"SQLite database {db.path} ({'WAL' if wal else 'rollback journal'})",
                    database_files=(db.spec(),),
                    log_files=logs,
                )
            )
        return WriterMetadata(
            writer_id=self.writer_id,
            class_id=self.class_id,
            name=self.kind,
            instance_name=self.instance_name,
            usage=UsageType.USER_DATA,
            components=tuple(components),
            restore_method=RestoreMethodSpec(method=RestoreMethod.RESTORE_IF_CAN_REPLACE),
            backup_schema=BackupSchema.COPY,
        )

    def prepare_backup(self, session: Session, components: tuple[str, ...], deadline: Deadline) -> None:
        missing = [str(d.path) for d in self._databases if not d.path.is_file()]
        if missing:
            raise WriterError(f"database(s) not found: {', '.join(missing)}")

    def prepare_snapshot(self, session: Session, deadline: Deadline) -> None:
        """Checkpoint each WAL database so the snapshot carries little log; a busy checkpoint is not an error."""
        if self.checkpoint == "off":
            return
        wal = [d for d in self._databases if journal_mode(d.path) == "wal"]
        for left, db in enumerate(wal):
            conn = self._connect(db.path)
            try:
                budget_s = min(CHECKPOINT_WAIT_S, _budget_s(deadline, len(wal) - left))
                _until_done(functools.partial(self._checkpoint, conn, db.path), budget_s)
            except sqlite3.Error as exc:
                raise WriterError(f"cannot checkpoint {db.path}: {exc}") from exc
            finally:
                conn.close()

    def freeze(self, session: Session, deadline: Deadline) -> None:
        with self._lock:
            if self._aborted == session.set_id:
                raise WriterError(f"set {session.set_id} was aborted; not freezing {self.instance_name}")
            if self._held:
                return
            try:
                for left, db in enumerate(self._databases):
                    budget_s = _budget_s(deadline, len(self._databases) - left)
                    conn = self._connect(db.path)
                    self._held.append(conn)
                    try:
                        locked = _until_done(functools.partial(_begin_immediate, conn), budget_s)
                    except sqlite3.Error as exc:
                        raise WriterError(f"cannot lock {db.path}: {exc}") from exc
                    if not locked:
                        raise FreezeTimeout(
                            f"could not take the write lock on {db.path} within {budget_s:.1f} s: another "
                            "connection holds a write transaction"
                        )
            except BaseException:
                self._release()  # the locks already taken
                raise
            self._watchdog.start(session.freeze_window_s)

    def thaw(self, session: Session, deadline: Deadline) -> None:
        with self._lock:
            expired_after = self._watchdog.take_expiry()
            self._release()
        if expired_after is not None:
            raise WriterError(
                f"{self.instance_name}: the write lock was let go when the freeze window ({expired_after:g} s) ran "
                "out, before thaw was asked; the snapshot may be inconsistent"
            )

    def post_snapshot(self, session: Session, deadline: Deadline) -> Mapping[str, str]:
        """Record each database's journal mode with its component (a restore needs the WAL with a WAL database)."""
        return {str(d.path): f"journal-mode={journal_mode(d.path)}" for d in self._databases}

    def abort(self, session: Session, deadline: Deadline) -> None:
        with self._lock:
            self._aborted = session.set_id
            self._watchdog.take_expiry()
            self._release()

    def backup_complete(self, session: Session, succeeded: Mapping[str, bool], deadline: Deadline) -> None:
        """SQLite has no log to truncate after a backup; the call is only counted."""
        self.backup_complete_count += 1

    def backup_shutdown(self, session: Session, deadline: Deadline) -> None:
        with self._lock:
            self._watchdog.take_expiry()
            self._release()

    def pre_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        """Veto while a process has a restored database (or its WAL, shared-memory or journal file) open where the
        restore would write it: the application must close it first."""
        for component in restore.components:
            database = restore.location(component)
            users = processes_using([Path(f"{database}{suffix}") for suffix in DATABASE_SUFFIXES])
            if users:
                pid, path = users[0]
                raise WriterError(
                    f"a process (pid {pid}{_command(pid)}) has the SQLite database {database} open ({path}); stop "
                    "the application using it first, or restore somewhere else"
                )

    def post_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        """A restored WAL is replayed by SQLite on the next open; nothing to do."""

    def _checkpoint(self, conn: sqlite3.Connection, path: Path) -> bool:
        """One checkpoint attempt; False while readers or a writer keep it from finishing."""
        try:
            busy, log, done = conn.execute(f"PRAGMA wal_checkpoint({self.checkpoint.upper()})").fetchone()
        except sqlite3.Error as exc:
            if not _is_busy(exc):
                raise
            self.last_checkpoint[str(path)] = f"busy: {exc}"
            return False
        self.last_checkpoint[str(path)] = (int(busy), int(log), int(done))
        return not busy

    def _connect(self, path: Path) -> sqlite3.Connection:
        # mode=rw: never create a database that is not there. Autocommit, explicit BEGIN; any thread may use it.
        # No busy timeout: every wait for a lock is `_until_done`'s, bounded by the event's deadline.
        try:
            return sqlite3.connect(
                f"file:{quote(str(path))}?mode=rw",
                uri=True,
                timeout=0,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise WriterError(f"cannot open {path}: {exc}") from exc

    def _release(self) -> None:
        """Roll back and close every held connection and stop the watchdog (idempotent; call with the lock held)."""
        self._watchdog.stop()
        held, self._held = self._held, []
        for conn in reversed(held):
            try:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # closing releases the locks all the same
            finally:
                conn.close()

    def __repr__(self) -> str:
        return f"SqliteWriter({[str(p) for p in self.databases]!r}, host={self.host!r})"
