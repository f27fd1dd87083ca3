"""The postgresql and mariadb writers without a server: specs, layouts, metadata, WAL names, and what
BackupComplete may remove (never on a copy backup). The servers themselves: tests/integration/databases."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from snapport.documents import wmd_from_xml, wmd_to_xml
from snapport.errors import UnsupportedContext, UsageError, WriterError
from snapport.model import Attr, BackupType, ComponentType, Context, Volume
from snapport.osal.mount import MountInfo
from snapport.writers import database_support
from snapport.writers.base import Deadline, Session
from snapport.writers.database_support import decode_metadata, encode_metadata
from snapport.writers.mariadb import MariadbWriter, ServerLayout
from snapport.writers.postgresql import (
    METADATA_FORMAT,
    PostgresqlWriter,
    parse_backup_metadata,
    purge_archive,
    wal_file_name,
)
from snapport.writers.registry import parse_spec, writer_from_spec

HOST = "unit-host"


@pytest.fixture
def mounts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Pretend mount points: a path lies on the longest registered directory it is under (else on "/")."""
    table: dict[str, str] = {}

    def containing(path: str | Path) -> MountInfo:
        real = os.path.realpath(path)
        best = max((m for m in table if real == m or real.startswith(m + "/")), key=len, default="/")
        return MountInfo(mount_point=best, source="/dev/fake", fs_type="xfs", options=("rw",), dev="0:0")

    monkeypatch.setattr(database_support, "containing_mount", containing)
    yield table


def _mount(table: dict[str, str], path: Path) -> Volume:
    path.mkdir(parents=True, exist_ok=True)
    table[str(path)] = str(path)
    return Volume(HOST, str(path), "xfs", str(uuid.uuid4()))


def _cluster(data_volume: Path, wal: Path | None = None, space: Path | None = None) -> Path:
    """A directory laid out like a PostgreSQL data directory (no server)."""
    data = data_volume / "pg" / "data"
    (data / "pg_tblspc").mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    if wal is None:
        (data / "pg_wal").mkdir()
    else:
        wal.mkdir(parents=True)
        (data / "pg_wal").symlink_to(wal)
    if space is not None:
        space.mkdir(parents=True)
        (data / "pg_tblspc" / "16384").symlink_to(space)
    return data


def _session(volumes: tuple[Volume, ...], backup_type: BackupType = BackupType.FULL, **metadata: str) -> Session:
    return Session(uuid.uuid4(), Context.BACKUP, Attr.NONE, backup_type, volumes, backup_metadata=metadata)


# -- postgresql -----------------------------------------------------------------------------------------------


def test_postgresql_metadata_describes_the_cluster_relative_to_its_volumes(
    tmp_path: Path, mounts: dict[str, str]
) -> None:
    a, b = _mount(mounts, tmp_path / "a"), _mount(mounts, tmp_path / "b")
    data = _cluster(tmp_path / "a", wal=tmp_path / "b" / "wal", space=tmp_path / "b" / "space")
    writer = writer_from_spec(f"postgresql:{data},mode=atomic,host=/run/pg,port=5433", [a, b], HOST)
    assert isinstance(writer, PostgresqlWriter) and (writer.server, writer.port) == ("/run/pg", 5433)
    metadata = writer.identify(Deadline.after(1))
    [component] = metadata.components
    assert component.type is ComponentType.DATABASE and component.name == str(data)
    assert [(s.volume, s.path, s.recursive) for s in component.database_files] == [
        (a.mount_point, "pg/data", True),
        (b.mount_point, "space", True),
    ]
    assert [(s.volume, s.path) for s in component.log_files] == [(b.mount_point, "wal")]
    assert {(e.path, e.pattern) for e in metadata.excludes} == {
        ("pg/data", "postmaster.pid"),
        ("pg/data", "postmaster.opts"),
    }
    assert wmd_from_xml(wmd_to_xml(metadata)) == metadata
    assert writer.identify(Deadline.after(1)) == metadata  # stateless


def test_postgresql_atomic_mode_needs_every_volume_of_the_cluster(tmp_path: Path, mounts: dict[str, str]) -> None:
    a, b, c = (_mount(mounts, tmp_path / n) for n in "abc")
    data = _cluster(tmp_path / "a", wal=tmp_path / "b" / "wal", space=tmp_path / "c" / "space")
    with pytest.raises(UnsupportedContext, match=r"WAL \(pg_wal\) .* atomic mode needs every volume"):
        writer_from_spec(f"postgresql:{data},mode=atomic", [a, c], HOST)
    with pytest.raises(UnsupportedContext, match="tablespace 16384"):
        writer_from_spec(f"postgresql:{data},mode=atomic", [a, b], HOST)
    # backup-mode restores the WAL from the archive: its volume may stay out, a tablespace's may not
    writer = writer_from_spec(f"postgresql:{data}", [a, c], HOST)
    assert [s.volume for s in writer.identify(Deadline.after(1)).components[0].log_files] == []
    with pytest.raises(UsageError, match="tablespace 16384"):
        writer_from_spec(f"postgresql:{data}", [a, b], HOST)
    # ... and prepare-backup checks again, for a tablespace added since the writer was made
    with pytest.raises(UnsupportedContext):
        PostgresqlWriter(data, [a, b, c], host=HOST, mode="atomic").prepare_backup(
            _session((a, b)), (), Deadline.after(1)
        )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("postgresql:/srv/pg,mode=fast", "needs backup-mode | atomic"),
        ("postgresql:/srv/pg,checkpoint=off", "unknown key 'checkpoint' for a postgresql writer"),
        ("mariadb:/run/mysqld.sock,lock=none", "needs backup-stage | ftwrl"),
        ("mariadb:/run/mysqld.sock,purge_binlogs=maybe", "needs yes | no"),
    ],
)
def test_bad_database_specs_are_usage_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_spec(spec)


def test_postgresql_refuses_what_is_not_a_data_directory_or_a_port(tmp_path: Path, mounts: dict[str, str]) -> None:
    a = _mount(mounts, tmp_path / "a")
    with pytest.raises(UsageError, match="not a PostgreSQL data directory"):
        writer_from_spec(f"postgresql:{tmp_path / 'a'}", [a], HOST)
    data = _cluster(tmp_path / "a")
    with pytest.raises(UsageError, match="port must be a number"):
        writer_from_spec(f"postgresql:{data},port=postgres", [a], HOST)
    with pytest.raises(UsageError, match="purge_archive 'archive' is not absolute"):
        writer_from_spec(f"postgresql:{data},purge_archive=archive", [a], HOST)


@pytest.mark.parametrize(
    ("lsn", "previous", "name"),
    [
        ("0/3000028", False, "000000010000000000000003"),
        ("0/4000000", True, "000000010000000000000003"),
        ("0/4000000", False, "000000010000000000000004"),
        ("1/0", False, "000000010000000100000000"),
        ("1/0", True, "0000000100000000000000FF"),
    ],
)
def test_wal_file_names_follow_postgresql(lsn: str, previous: bool, name: str) -> None:
    assert wal_file_name(lsn, 1, 16 * 1024 * 1024, previous=previous) == name


def _archive(path: Path, *names: str) -> Path:
    path.mkdir()
    for name in names:
        (path / name).write_text(name)
    return path


ARCHIVED = (
    "000000010000000000000001",
    "000000010000000000000002",
    "000000020000000000000002.partial",
    "000000010000000000000002.00000028.backup",
    "00000002.history",
    "000000010000000000000003",
    "000000020000000000000004",
    "README",
)


def test_purge_removes_only_wal_segments_older_than_the_oldest_kept(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "archive", *ARCHIVED)
    removed = purge_archive(archive, "000000010000000000000003")
    assert removed == ["000000010000000000000001", "000000010000000000000002", "000000020000000000000002.partial"]
    assert sorted(p.name for p in archive.iterdir()) == sorted(set(ARCHIVED) - set(removed))


@pytest.mark.parametrize(
    ("backup_type", "succeeded", "with_metadata", "removed"),
    [
        (BackupType.FULL, True, True, 3),
        (BackupType.INCREMENTAL, True, True, 3),
        (BackupType.COPY, True, True, 0),
        (BackupType.FULL, False, True, 0),
    ],
)
def test_postgresql_backup_complete_purges_the_archive_except_on_a_copy(
    tmp_path: Path, mounts: dict[str, str], backup_type: BackupType, succeeded: bool, with_metadata: bool, removed: int
) -> None:
    a = _mount(mounts, tmp_path / "a")
    data = _cluster(tmp_path / "a")
    archive = _archive(tmp_path / "archive", *ARCHIVED)
    writer = PostgresqlWriter(data, [a], host=HOST, archive=archive)
    text = encode_metadata(METADATA_FORMAT, {"mode": "backup-mode", "oldest_wal_file": "000000010000000000000003"})
    session = _session((a,), backup_type, **{writer.component: text})
    writer.backup_complete(session, {writer.component: succeeded}, Deadline.after(1))
    assert len(ARCHIVED) - len(list(archive.iterdir())) == removed
    assert writer.backup_complete_count == 1


def test_postgresql_backup_complete_without_metadata_removes_nothing(tmp_path: Path, mounts: dict[str, str]) -> None:
    a = _mount(mounts, tmp_path / "a")
    archive = _archive(tmp_path / "archive", *ARCHIVED)
    writer = PostgresqlWriter(_cluster(tmp_path / "a"), [a], host=HOST, archive=archive)
    with pytest.raises(WriterError, match="no backup metadata"):
        writer.backup_complete(_session((a,)), {writer.component: True}, Deadline.after(1))
    assert len(list(archive.iterdir())) == len(ARCHIVED)


def test_backup_metadata_is_tagged_json() -> None:
    text = encode_metadata(METADATA_FORMAT, {"backup_label": "START WAL LOCATION: 0/2 (file ...)\nLABEL: x\n"})
    assert "\n" not in text and text.isascii()
    assert parse_backup_metadata(text)["backup_label"] == "START WAL LOCATION: 0/2 (file ...)\nLABEL: x\n"
    with pytest.raises(WriterError, match="not in format"):
        decode_metadata("snapport-mariadb/1", text)
    with pytest.raises(WriterError, match="not JSON"):
        parse_backup_metadata("journal-mode=wal")


# -- mariadb --------------------------------------------------------------------------------------------------


def test_mariadb_layout_resolves_the_servers_directories(tmp_path: Path) -> None:
    datadir = tmp_path / "mysql"
    row = (
        f"{datadir}/",
        1,
        f"{datadir}/binlog",
        "./",
        None,
        "./",
        str(tmp_path / "aria"),
        f"{datadir}/host.pid",
        "/run/mysqld/mysqld.sock",
        "10.11.6-MariaDB-0+deb12u1-log",
    )
    layout = ServerLayout.from_variables(row)
    assert layout.datadir == datadir and layout.version_tuple == (10, 11, 6)
    assert [(w, p, pattern, log) for w, p, pattern, log in layout.places] == [
        ("datadir", datadir, "*", False),
        ("InnoDB redo log", datadir, "ib_logfile*", True),
        ("Aria log", tmp_path / "aria", "aria_log*", True),
        ("binary log", datadir, "binlog.*", True),
    ]
    assert layout.runtime_files == (datadir / "host.pid", Path("/run/mysqld/mysqld.sock"))
    without_binlog = ServerLayout.from_variables((f"{datadir}/", 0, None, *row[3:]))
    assert all(what != "binary log" for what, *_ in without_binlog.places)


@pytest.mark.parametrize("backup_type", [BackupType.COPY, BackupType.FULL])
def test_mariadb_backup_complete_leaves_binlogs_alone_on_a_copy_or_when_not_asked(backup_type: BackupType) -> None:
    volume = Volume(HOST, "/srv", "xfs", "1")
    asked = backup_type is BackupType.COPY  # on a copy, purge_binlogs=yes is ignored; on a full, it is off here
    writer = MariadbWriter("/nonexistent/mysqld.sock", [volume], host=HOST, purge_binlogs=asked)
    metadata = encode_metadata("snapport-mariadb/1", {"binlog_file": "binlog.000004", "binlog_position": 4})
    session = _session((volume,), backup_type, **{"/srv/mysql": metadata})
    writer.backup_complete(session, {"/srv/mysql": True}, Deadline.after(1))  # no server: nothing was asked of it
    assert writer.backup_complete_count == 1
    assert writer.last_purge == ("not purged: a copy backup leaves the binary logs alone" if asked else None)


def test_mariadb_backup_complete_without_metadata_purges_nothing() -> None:
    volume = Volume(HOST, "/srv", "xfs", "1")
    writer = MariadbWriter("/nonexistent/mysqld.sock", [volume], host=HOST, purge_binlogs=True)
    with pytest.raises(WriterError, match="no backup metadata"):
        writer.backup_complete(_session((volume,)), {"/srv/mysql": True}, Deadline.after(1))


def test_mariadb_events_without_a_server_fail_cleanly() -> None:
    volume = Volume(HOST, "/srv", "xfs", "1")
    writer = MariadbWriter("/nonexistent/mysqld.sock", [volume], host=HOST)
    session = _session((volume,))
    with pytest.raises(WriterError, match=r"cannot connect to MariaDB at /nonexistent/mysqld\.sock"):
        writer.prepare_snapshot(session, Deadline.after(2))
    assert not writer.holding
    with pytest.raises(WriterError, match="prepare-snapshot did not run"):
        writer.freeze(session, Deadline.after(1))
    for _ in range(2):  # idempotent, and need no freeze
        writer.thaw(session, Deadline.after(1))
        writer.abort(session, Deadline.after(1))
    with pytest.raises(WriterError, match="aborted"):
        writer.freeze(session, Deadline.after(1))
