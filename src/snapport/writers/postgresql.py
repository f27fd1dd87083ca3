"""The `postgresql` writer: a PostgreSQL cluster (data directory, tablespaces, WAL) in a snapshot set.

Two modes. `backup-mode` makes the snapshot a base backup in PostgreSQL's own sense: `pg_backup_start` on a held
connection before the freeze, `pg_backup_stop` after the thaw; the backup label and tablespace map it returns go
into the BCD as the component's backup metadata, for a restore to write back. PostgreSQL needs the WAL up to
`pg_backup_stop` to start such a copy, and that WAL is written after the snapshot: a restore takes it from the WAL
archive. `atomic` takes a CHECKPOINT before the freeze and relies on the set being one cut across every volume
holding the cluster (refused otherwise); a restore is PostgreSQL's crash recovery. In both modes the filesystem
freeze makes the I/O cut; this writer's freeze only checks that its backup is still alive.

The backup metadata is one JSON object (`parse_backup_metadata`); docs/writers.md lists its fields.
"""

from __future__ import annotations

import os
import re
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from snapport.errors import FreezeTimeout, PathEscape, SnapportError, UnsupportedContext, UsageError, WriterError
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

if TYPE_CHECKING:
    import psycopg

CLASS_ID = uuid.uuid5(uuid.NAMESPACE_DNS, "snapport.writers.postgresql")
MODES = ("backup-mode", "atomic")
METADATA_FORMAT = "snapport-postgresql/1"
APPLICATION_NAME = "snapport-postgresql-writer"
MIN_SERVER_VERSION = 150000  # pg_backup_start / pg_backup_stop (before 15: pg_start_backup / pg_stop_backup)
# Never copied into a restore: the lock file of the running server (a restored server refuses to start if a live
# process has that pid) and its command line.
EXCLUDED_FILES = ("postmaster.pid", "postmaster.opts")
_WAL_FILE = re.compile(r"^[0-9A-F]{24}(\.partial)?$")
_START_WAL = re.compile(r"^START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)$", re.M)
_START_TIMELINE = re.compile(r"^START TIMELINE: (\d+)$", re.M)
# A WAL archive's path becomes part of restore_command, a shell command: only characters no shell gives a meaning.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+@=,:-]*$")
RECOVERY_SETTINGS_FILE = "postgresql.auto.conf"  # where pg_basebackup -R writes its recovery settings too


def check_archive_path(path: str | Path, error: type[SnapportError]) -> Path:
    """A WAL archive directory fit for restore_command: absolute, no '..', only plain characters."""
    text = str(path)
    if not _SAFE_PATH.match(text) or ".." in Path(text).parts:
        raise error(
            f"postgresql writer: WAL archive {text!r} must be an absolute path of letters, digits and ._/+@=,:- "
            "only (it becomes part of restore_command)"
        )
    return Path(text)


@dataclass(frozen=True, slots=True)
class ClusterLayout:
    """Where a cluster keeps its files (symlinks resolved), read from its data directory without a connection."""

    data_dir: Path
    wal_dir: Path
    tablespaces: tuple[tuple[str, Path], ...]  # (oid, location), by oid

    def places(self) -> list[tuple[str, Path, bool]]:
        """Every directory of the cluster: what it is (for messages), where, and whether it holds the WAL."""
        found = [("data directory", self.data_dir, False), ("WAL (pg_wal)", self.wal_dir, True)]
        return found + [(f"tablespace {oid}", path, False) for oid, path in self.tablespaces]


def cluster_layout(data_dir: Path) -> ClusterLayout:
    """The cluster's data directory, its `pg_wal` and the targets of its `pg_tblspc` links."""
    real = Path(os.path.realpath(data_dir))
    if not (real / "PG_VERSION").is_file():
        raise UsageError(f"postgresql writer: {data_dir} is not a PostgreSQL data directory (no PG_VERSION)")
    links = real / "pg_tblspc"
    tablespaces = tuple(
        sorted((entry.name, Path(os.path.realpath(entry))) for entry in links.iterdir() if entry.is_symlink())
        if links.is_dir()
        else ()
    )
    return ClusterLayout(real, Path(os.path.realpath(real / "pg_wal")), tablespaces)


def parse_backup_metadata(text: str) -> dict[str, object]:
    """The fields of a component's backup metadata, as `post_snapshot` wrote them."""
    return decode_metadata(METADATA_FORMAT, text)


def wal_file_name(lsn: str, timeline: int, segment_size: int, *, previous: bool = False) -> str:
    """The WAL segment file holding `lsn` (with `previous`, the byte before it, as `pg_walfile_name` does)."""
    high, low = (int(part, 16) for part in lsn.split("/"))
    position = (high << 32 | low) - (1 if previous else 0)
    segment = position // segment_size
    per_id = 0x1_0000_0000 // segment_size
    return f"{timeline:08X}{segment // per_id:08X}{segment % per_id:08X}"


def purge_archive(archive: Path, oldest_kept: str) -> list[str]:
    """Remove archived WAL segments (and `.partial` ones) older than `oldest_kept`, as `pg_archivecleanup` does:
    names compared without their timeline; history and backup-history files stay. Returns the names removed."""
    removed = []
    for entry in sorted(archive.iterdir()):
        name = entry.name
        if _WAL_FILE.match(name) and name[8:24] < oldest_kept[8:24] and entry.is_file() and not entry.is_symlink():
            entry.unlink()
            removed.append(name)
    return removed


def postgresql_writer_id(host: str, data_dir: Path) -> uuid.UUID:
    """Stable across runs for the same host and cluster."""
    return uuid.uuid5(CLASS_ID, f"{host}:{data_dir}")


class PostgresqlWriter(Writer):
    """Makes one PostgreSQL cluster (15 or later) restorable from a snapshot set; see the module docstring."""

    kind: ClassVar[str] = "postgresql"
    tier: ClassVar[Tier] = Tier.APPLICATION
    class_id: ClassVar[uuid.UUID] = CLASS_ID

    def __init__(
        self,
        data_dir: str | Path,
        volumes: Sequence[Volume],
        *,
        host: str,
        mode: str = "backup-mode",
        server: str = "/run/postgresql",
        port: int = 5432,
        user: str = "postgres",
        dbname: str = "postgres",
        archive: str | Path | None = None,
        wal_archive: str | Path | None = None,
    ) -> None:
        if mode not in MODES:
            raise UsageError(f"postgresql writer: mode must be one of {', '.join(MODES)}, not {mode!r}")
        if not Path(data_dir).is_absolute():
            raise UsageError(f"postgresql writer: data directory {str(data_dir)!r} is not absolute")
        if archive is not None and not Path(archive).is_absolute():
            raise UsageError(f"postgresql writer: purge_archive {str(archive)!r} is not absolute")
        self.data_dir = Path(os.path.realpath(data_dir))
        self.volumes = tuple(volumes)
        self.host = host
        self.mode = mode
        self.server, self.port, self.user, self.dbname = server, port, user, dbname
        self.archive = Path(archive) if archive is not None else None
        # Where the server archives its WAL, for a restore's restore_command (purge_archive is that too).
        self.wal_archive = check_archive_path(wal_archive, UsageError) if wal_archive is not None else self.archive
        self.writer_id = postgresql_writer_id(host, self.data_dir)
        self.instance_name = str(self.data_dir)
        self.backup_complete_count = 0  # observable: backup-complete must come at most once per backup
        self.last_purge: list[str] | str | None = None  # the archived WAL files removed, or why none were
        self._lock = threading.Lock()  # events may come from several worker threads (an overrun one included)
        self._conn: psycopg.Connection[Any] | None = None  # holds the backup (backup-mode), prepare to post-snapshot
        self._started: dict[str, object] = {}  # what prepare-snapshot learnt, for post-snapshot
        self._aborted: uuid.UUID | None = None

    @property
    def component(self) -> str:
        """The one component's name (and full path): the data directory."""
        return str(self.data_dir)

    def check_volumes(self, volumes: Sequence[Volume]) -> ClusterLayout:
        """Refuse a set that does not hold the cluster: the data directory and tablespaces must be in it, and in
        atomic mode the WAL too (`UsageError`, `UnsupportedContext`)."""
        layout = cluster_layout(self.data_dir)
        off = [(what, path, wal) for what, path, wal in layout.places() if volume_of(path, volumes) is None]
        listed = ", ".join(v.mount_point for v in volumes) or "none"
        if off and self.mode == "atomic":
            what, path, _ = off[0]
            raise UnsupportedContext(
                f"postgresql writer (mode=atomic): the cluster's {what} ({path}) is on a volume that is not in the "
                f"snapshot set ({listed}); atomic mode needs every volume holding the cluster in the set: add it, "
                "or use mode=backup-mode"
            )
        off = [place for place in off if not place[2]]  # backup-mode: a restore takes the WAL from the archive
        if off:
            what, path, _ = off[0]
            raise UsageError(
                f"postgresql writer: the cluster's {what} ({path}) is on a volume that is not in the snapshot set "
                f"({listed}); add that volume"
            )
        return layout

    # -- the Writer protocol ------------------------------------------------------------------------------------

    def identify(self, deadline: Deadline) -> WriterMetadata:
        layout = cluster_layout(self.data_dir)
        data: list[FileSpec] = []
        logs: list[FileSpec] = []
        for _what, path, wal in layout.places():
            volume = volume_of(path, self.volumes)
            if volume is None:  # only the WAL can be off the set (backup-mode); check_volumes refuses the rest
                continue
            (logs if wal else data).append(spec_for(path, volume))
        data_volume = volume_of(layout.data_dir, self.volumes)
        excludes = (
            tuple(spec_for(layout.data_dir, data_volume, name, recursive=False) for name in EXCLUDED_FILES)
            if data_volume is not None
            else ()
        )
        return WriterMetadata(
            writer_id=self.writer_id,
            class_id=self.class_id,
            name=self.kind,
            instance_name=self.instance_name,
            usage=UsageType.USER_DATA,
            components=(
                Component(
                    type=ComponentType.DATABASE,
                    name=self.component,
                    caption=f"PostgreSQL cluster {layout.data_dir} ({self.mode})",
                    database_files=tuple(data),
                    log_files=tuple(logs),
                ),
            ),
            excludes=excludes,
            restore_method=RestoreMethodSpec(method=RestoreMethod.STOP_RESTORE_START, service="postgresql"),
            backup_schema=BackupSchema.COPY,
        )

    def prepare_backup(self, session: Session, components: tuple[str, ...], deadline: Deadline) -> None:
        """Check the set holds the cluster and that the server at the address given serves this data directory."""
        self.check_volumes(session.volumes)
        conn = self._connect(deadline)
        try:
            row = self._query(
                conn,
                "SELECT current_setting('data_directory'), current_setting('server_version_num')::int, "
                "current_setting('archive_mode'), current_setting('archive_command') <> '' "
                "OR coalesce(current_setting('archive_library', true), '') <> ''",
                deadline,
            )
        finally:
            conn.close()
        served, version, archive_mode, archiver = str(row[0]), int(row[1]), str(row[2]), bool(row[3])
        if os.path.realpath(served) != str(self.data_dir):
            raise WriterError(
                f"the PostgreSQL server at {self._address} serves {served}, not {self.data_dir}; check host and port"
            )
        if version < MIN_SERVER_VERSION:
            raise WriterError(f"PostgreSQL {version} is too old: the postgresql writer needs 15 or later")
        if self.mode == "backup-mode" and (archive_mode == "off" or not archiver):
            # The copy needs the WAL written up to pg_backup_stop, after the snapshot: only the archive has it.
            what = (
                "archive_mode is off" if archive_mode == "off" else "neither archive_command nor archive_library is set"
            )
            raise WriterError(
                f"the PostgreSQL server at {self._address} does not archive its WAL ({what}): a backup-mode copy "
                "could never be restored; set up WAL archiving, or use mode=atomic with every volume of the cluster"
            )

    def prepare_snapshot(self, session: Session, deadline: Deadline) -> None:
        """backup-mode: `pg_backup_start` (with an immediate checkpoint) on a connection held until post-snapshot;
        atomic: a CHECKPOINT, so crash recovery from the copy has little WAL to replay."""
        with self._lock:
            self._close()
            self._started = {}
            conn = self._connect(deadline)
            try:
                if self.mode == "backup-mode":
                    label = f"snapport {session.set_id}"
                    size = self._query(
                        conn, "SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'", deadline
                    )
                    start_lsn = self._query(conn, "SELECT pg_backup_start(%s, fast => true)::text", deadline, label)
                    self._started = {"label": label, "start_lsn": str(start_lsn[0]), "segment_size": int(size[0])}
                    self._conn = conn  # the backup lives as long as this session
                else:
                    self._query(conn, "CHECKPOINT", deadline, fetch=False)
                    row = self._query(
                        conn, "SELECT redo_lsn::text, redo_wal_file, timeline_id FROM pg_control_checkpoint()", deadline
                    )
                    self._started = {"redo_lsn": str(row[0]), "redo_wal_file": str(row[1]), "timeline": int(row[2])}
            finally:
                if self._conn is not conn:
                    conn.close()

    def freeze(self, session: Session, deadline: Deadline) -> None:
        """Nothing to hold (the filesystem freeze cuts the I/O); backup-mode vetoes if its backup session died, as
        the copy could then never be restored from its label."""
        with self._lock:
            if self._aborted == session.set_id:
                raise WriterError(f"set {session.set_id} was aborted; not freezing {self.instance_name}")
            if self.mode != "backup-mode":
                return
            if self._conn is None:
                raise WriterError("no backup in progress: prepare-snapshot did not start one")
            try:
                self._query(self._conn, "SELECT 1", deadline)
            except WriterError as exc:
                self._close()
                raise WriterError(f"the backup's session ended before the freeze ({exc.message})") from None

    def thaw(self, session: Session, deadline: Deadline) -> None:
        """Nothing was held; `pg_backup_stop` comes with post-snapshot."""

    def post_snapshot(self, session: Session, deadline: Deadline) -> Mapping[str, str]:
        """backup-mode: `pg_backup_stop`, and its backup label and tablespace map for the BCD; atomic: the
        checkpoint the copy's crash recovery starts at or after."""
        with self._lock:
            if self.mode == "atomic":
                if not self._started:
                    raise WriterError("no checkpoint was taken: prepare-snapshot did not run")
                fields: dict[str, object] = {"mode": self.mode, **self._started}
                fields["oldest_wal_file"] = self._started["redo_wal_file"]
                return {self.component: encode_metadata(METADATA_FORMAT, fields)}
            if self._conn is None:
                raise WriterError("no backup in progress: it was never started, or its session ended")
            try:
                stop_lsn, label, tablespace_map = self._query(
                    self._conn,
                    "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(wait_for_archive => false)",
                    deadline,
                )
            finally:
                self._close()
        label, tablespace_map = str(label), str(tablespace_map or "")
        start_file, timeline = _START_WAL.search(label), _START_TIMELINE.search(label)
        if start_file is None or timeline is None:
            raise WriterError(f"pg_backup_stop returned a backup label snapport cannot read: {label!r}")
        segment_size = self._started["segment_size"]
        assert isinstance(segment_size, int)
        fields = {
            "mode": self.mode,
            "label": self._started["label"],
            "start_lsn": self._started["start_lsn"],
            "stop_lsn": str(stop_lsn),
            "timeline": int(timeline.group(1)),
            "start_wal_file": start_file.group(1),
            "stop_wal_file": wal_file_name(str(stop_lsn), int(timeline.group(1)), segment_size, previous=True),
            "oldest_wal_file": start_file.group(1),
            "backup_label": label,
            "tablespace_map": tablespace_map,
        }
        if self.wal_archive is not None:
            fields["wal_archive"] = str(self.wal_archive)
        return {self.component: encode_metadata(METADATA_FORMAT, fields)}

    def abort(self, session: Session, deadline: Deadline) -> None:
        """Close the backup's connection: PostgreSQL aborts a backup whose session ends."""
        with self._lock:
            self._aborted = session.set_id
            self._close()
            self._started = {}

    def backup_complete(self, session: Session, succeeded: Mapping[str, bool], deadline: Deadline) -> None:
        """With `purge_archive=DIR`: remove the archived WAL older than this backup needs, unless the backup is a
        `copy` (it must not break another backup chain) or its component did not succeed."""
        self.backup_complete_count += 1
        if self.archive is None:
            return
        if session.backup_type is BackupType.COPY:
            self.last_purge = "not purged: a copy backup leaves the archive alone"
            return
        if not succeeded.get(self.component, False):
            self.last_purge = "not purged: the cluster's component was not backed up"
            return
        text = session.backup_metadata.get(self.component)
        if text is None:
            self.last_purge = "not purged: the BCD holds no backup metadata for the cluster"
            raise WriterError(f"no backup metadata for {self.component}; archived WAL in {self.archive} left alone")
        oldest = parse_backup_metadata(text).get("oldest_wal_file")
        if not isinstance(oldest, str) or not _WAL_FILE.match(oldest):
            raise WriterError(f"the backup metadata names no oldest WAL file; archived WAL in {self.archive} kept")
        try:
            self.last_purge = purge_archive(self.archive, oldest)
        except OSError as exc:
            raise WriterError(f"cannot purge the WAL archive {self.archive}: {exc}") from exc

    def backup_shutdown(self, session: Session, deadline: Deadline) -> None:
        with self._lock:
            self._close()
            self._started = {}

    def pre_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        """Veto while a live postmaster owns a restored data directory, or when a backup-mode copy could not
        recover (no backup metadata, or no WAL archive to read the WAL after the snapshot from)."""
        for component in restore.components:
            data = restore.location(component)
            pid = _live_postmaster(data)
            if pid is not None:
                raise WriterError(
                    f"a PostgreSQL server (pid {pid}) runs on {data}; stop it first (pg_ctl -D {data} stop -m fast) "
                    "or restore somewhere else"
                )
            fields = self._restore_metadata(restore, component)
            if fields["mode"] == "backup-mode":
                self._restore_archive(fields, component)

    def post_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        """Make each restored cluster startable: no stale lock file, links into the restore, and in backup-mode
        `backup_label`, `tablespace_map`, `recovery.signal` and the recovery settings (docs/writers.md)."""
        for component in restore.components:
            data = restore.location(component)
            if not (data / "PG_VERSION").is_file() or data.is_symlink():
                raise WriterError(f"the restored cluster {component} is not at {data} (no PG_VERSION there)")
            fields = self._restore_metadata(restore, component)
            owner = data.stat()
            try:
                for name in EXCLUDED_FILES:  # a stale lock file stops the server when its pid is alive again
                    (data / name).unlink(missing_ok=True)
                if fields["mode"] == "backup-mode":
                    self._prepare_recovery(restore, component, data, fields, (owner.st_uid, owner.st_gid))
                else:
                    self._relink(restore, data, backup_mode=False, owner=(owner.st_uid, owner.st_gid))
            except OSError as exc:
                raise WriterError(f"cannot prepare the restored cluster at {data}: {exc}") from exc

    # -- restore helpers ----------------------------------------------------------------------------------------

    def _restore_metadata(self, restore: RestoreContext, component: str) -> dict[str, object]:
        text = restore.backup_metadata.get(component)
        if text is None:
            raise WriterError(f"the set holds no backup metadata for the cluster {component}; it cannot be restored")
        fields = parse_backup_metadata(text)
        if fields.get("mode") not in MODES:
            raise WriterError(f"the backup metadata of {component} names no mode snapport knows")
        return fields

    def _restore_archive(self, fields: Mapping[str, object], component: str) -> Path:
        """The WAL archive a backup-mode restore reads: the writer's own (`wal_archive=`), else the metadata's."""
        given = self.wal_archive if self.wal_archive is not None else fields.get("wal_archive")
        if not isinstance(given, str | Path):
            raise WriterError(
                f"{component} was backed up in backup-mode: its restore needs the WAL archive, and neither the "
                "writer (wal_archive=DIR) nor the backup metadata names one"
            )
        archive = check_archive_path(given, WriterError)
        if not archive.is_dir():
            raise WriterError(
                f"the WAL archive {archive} is not a directory here; the restored cluster could not recover"
            )
        return archive

    def _relink(self, restore: RestoreContext, data: Path, *, backup_mode: bool, owner: tuple[int, int]) -> None:
        """Point the restored `pg_wal` and tablespace links at their restored targets, never at the originals (a
        copy beside the original would write into the original's files). In backup-mode an unrestored WAL
        directory becomes an empty one: recovery reads the WAL from the archive."""
        if restore.in_place:
            return
        links = [data / "pg_wal"]
        if (data / "pg_tblspc").is_dir():
            links += sorted(p for p in (data / "pg_tblspc").iterdir() if p.is_symlink())
        for link in links:
            if not link.is_symlink():
                continue
            original = str(link.readlink())
            try:
                restored = restore.location(original)
            except PathEscape:
                raise WriterError(f"{link} points to {original!r}, which cannot be restored") from None
            if restored.is_dir() and not restored.is_symlink():
                link.unlink()
                link.symlink_to(restored)
            elif backup_mode and link.name == "pg_wal":
                link.unlink()
                link.mkdir(mode=0o700)
                os.chown(link, *owner)
            else:
                raise WriterError(
                    f"{link} points to {original}, which was not restored (not at {restored}); restore every "
                    "volume of the cluster"
                )
            os.lchown(link, *owner)

    def _prepare_recovery(
        self,
        restore: RestoreContext,
        component: str,
        data: Path,
        fields: Mapping[str, object],
        owner: tuple[int, int],
    ) -> None:
        """backup-mode: the base backup's own files and the settings that make the server recover from the
        archive up to the backup's end, then promote (PostgreSQL 15 docs, §26.3.4 and §26.3.5)."""
        label, tablespace_map = fields.get("backup_label"), fields.get("tablespace_map", "")
        if not isinstance(label, str) or not label or not isinstance(tablespace_map, str):
            raise WriterError(f"the backup metadata of {component} holds no backup label")
        archive = self._restore_archive(fields, component)
        self._relink(restore, data, backup_mode=True, owner=owner)
        relocated = []
        for line in tablespace_map.splitlines():
            oid, _, location = line.partition(" ")
            if not oid.isdigit() or not location.startswith("/") or "\\" in location:
                raise WriterError(f"the tablespace map of {component} has a line snapport cannot read: {line!r}")
            try:
                relocated.append(f"{oid} {restore.location(location)}\n")
            except PathEscape as exc:
                raise WriterError(f"the tablespace map of {component}: {exc.message}") from None
        settings = [
            f"# snapport restore of set {restore.set_id}: recover from the WAL archive to the end of the backup",
            f"restore_command = 'cp {archive}/%f \"%p\"'",
            "recovery_target = 'immediate'",
            "recovery_target_action = 'promote'",
        ]
        if not restore.in_place:  # a copy beside the original must not archive into the original's archive
            settings.append("archive_mode = 'off'")
        files = {"backup_label": label, "recovery.signal": ""}
        if relocated:
            files["tablespace_map"] = "".join(relocated)
        for name, text in files.items():
            _write_owned(data / name, text, owner)
        conf = data / RECOVERY_SETTINGS_FILE
        existing = conf.read_text() if conf.exists() else ""
        separator = "" if not existing or existing.endswith("\n") else "\n"
        _write_owned(conf, existing + separator + "\n".join(settings) + "\n", owner)

    # -- helpers ------------------------------------------------------------------------------------------------

    @property
    def _address(self) -> str:
        return f"{self.server}:{self.port}"

    def _connect(self, deadline: Deadline) -> psycopg.Connection[Any]:
        import psycopg  # noqa: PLC0415  (psycopg takes ~0.2 s to import; the CLI must not pay it at start)

        try:
            return psycopg.connect(
                host=self.server,
                port=self.port,
                user=self.user,
                dbname=self.dbname,
                autocommit=True,
                connect_timeout=max(2, int(statement_budget_s(deadline))),
                application_name=APPLICATION_NAME,
            )
        except psycopg.Error as exc:
            raise WriterError(f"cannot connect to PostgreSQL at {self._address} as {self.user}: {exc}") from None

    def _query(
        self, conn: psycopg.Connection[Any], sql: str, deadline: Deadline, *params: object, fetch: bool = True
    ) -> tuple[Any, ...]:
        """Run one statement, bounded by the deadline (statement_timeout); its first row."""
        import psycopg  # noqa: PLC0415

        budget_ms = max(1, int(statement_budget_s(deadline) * 1000))
        try:
            conn.execute("SELECT set_config('statement_timeout', %s, false)", (f"{budget_ms}ms",))
            cursor = conn.execute(sql.encode(), params or None)
            row = cursor.fetchone() if fetch else ()
        except psycopg.errors.QueryCanceled:
            raise FreezeTimeout(f"PostgreSQL at {self._address} did not finish {sql!r} within {budget_ms} ms") from None
        except psycopg.Error as exc:
            raise WriterError(f"PostgreSQL at {self._address}: {exc}") from None
        if row is None:
            raise WriterError(f"PostgreSQL at {self._address} returned no row for {sql!r}")
        return tuple(row)

    def _close(self) -> None:
        """Close the held connection, if any (idempotent; call with the lock held)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __repr__(self) -> str:
        return f"PostgresqlWriter({str(self.data_dir)!r}, mode={self.mode!r}, host={self.host!r})"


def _live_postmaster(data: Path) -> int | None:
    """The pid in `data`'s postmaster.pid if that process is alive and works in `data` (a postmaster's working
    directory is its data directory); None for no lock file or a stale one."""
    try:
        first = (data / "postmaster.pid").read_text().splitlines()[0]
        pid = int(first)
    except (OSError, IndexError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        cwd = Path(f"/proc/{pid}/cwd").readlink()
    except FileNotFoundError:
        return None  # no such process: a stale lock file
    except OSError:
        return pid  # alive, and we may not look: assume it is the server
    return pid if os.path.realpath(cwd) == os.path.realpath(data) else None


def _write_owned(path: Path, text: str, owner: tuple[int, int]) -> None:
    """Write a small file of the cluster as its owner would (mode 0600); never through a link."""
    if path.is_symlink():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fchown(fd, *owner)
        os.fsync(fd)
    finally:
        os.close(fd)
