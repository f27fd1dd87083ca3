"""The writer registry and its SPEC parser, and what each writer says in `identify` (no root needed)."""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from pathlib import Path

import pytest

from snapport.errors import UsageError, WriterError
from snapport.model import Attr, BackupType, ComponentType, Context, Volume
from snapport.osal.mount import containing_mount
from snapport.osal.runner import RecordingRunner
from snapport.writers import filesystem, sqlite
from snapport.writers.base import Deadline, Session, Tier
from snapport.writers.filesystem import FilesystemWriter
from snapport.writers.registry import WRITERS, filesystem_writers, parse_spec, writer_from_spec, writers_from_specs
from snapport.writers.sqlite import SqliteWriter

HOST = "unit-host"


def _volume_of(path: Path) -> Volume:
    return Volume(HOST, containing_mount(path).mount_point, "ext4", "")


def _db(path: Path, *, wal: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute(f"PRAGMA journal_mode={'WAL' if wal else 'DELETE'}")
        conn.execute("CREATE TABLE t (x)")
    return path


def test_the_registry_lists_every_kind_by_its_own_name() -> None:
    assert set(WRITERS) == {"filesystem", "sqlite", "postgresql", "mariadb", "hook", "remote"}
    for name, kind in WRITERS.items():
        if name != "remote":  # a remote writer reports the kind of the writer process it reaches
            assert kind.cls.kind == name
    assert WRITERS["filesystem"].cls.tier is Tier.FILESYSTEM
    assert WRITERS["sqlite"].cls.tier is Tier.APPLICATION


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sqlite", "is not KIND:TARGET"),
        (":/srv/a.db", "is not KIND:TARGET"),
        (
            "oracle:/srv/a.db",
            "unknown writer kind 'oracle'.*known kinds: filesystem, hook, mariadb, postgresql, remote, sqlite",
        ),
        ("sqlite:", "names no target"),
        ("sqlite:,checkpoint=off", "names no target"),
        ("sqlite:srv/a.db", "absolute path"),
        ("sqlite:/srv/a.db,mode=fast", "unknown key 'mode' for a sqlite writer.*allowed keys: checkpoint"),
        ("sqlite:/srv/a.db,checkpoint=sometimes", "needs truncate | restart | full | passive | off"),
        ("sqlite:/srv/a.db,checkpoint", "needs truncate"),
        ("sqlite:/srv/a.db,checkpoint=off,checkpoint=full", "given twice"),
        ("filesystem:/srv,checkpoint=off", "unknown key 'checkpoint' for a filesystem writer.*allowed keys: none"),
    ],
)
def test_bad_specs_are_usage_errors(spec: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_spec(spec)


def test_a_good_spec_parses() -> None:
    assert parse_spec("sqlite:/srv/a.db,checkpoint=passive") == ("sqlite", "/srv/a.db", {"checkpoint": "passive"})
    assert parse_spec("filesystem:/srv") == ("filesystem", "/srv", {})


def test_writer_from_spec_builds_writers_on_the_sets_volumes(tmp_path: Path) -> None:
    db = _db(tmp_path / "app.db", wal=True)
    volume = _volume_of(db)
    writer = writer_from_spec(f"sqlite:{db},checkpoint=off", [volume], HOST)
    assert isinstance(writer, SqliteWriter) and writer.checkpoint == "off" and writer.databases == (db.resolve(),)
    fs_writer = writer_from_spec(f"filesystem:{volume.mount_point}", [volume], HOST)
    assert isinstance(fs_writer, FilesystemWriter) and fs_writer.volume == volume


def test_targets_off_the_sets_volumes_are_refused(tmp_path: Path) -> None:
    db = _db(tmp_path / "app.db", wal=True)
    elsewhere = Volume(HOST, "/nowhere/else", "ext4", "")
    with pytest.raises(UsageError, match=r"is on .*, which is not one of the snapshot set's volumes \(/nowhere/else\)"):
        writer_from_spec(f"sqlite:{db}", [elsewhere], HOST)
    with pytest.raises(UsageError, match="no database file"):
        writer_from_spec(f"sqlite:{tmp_path / 'missing.db'}", [_volume_of(tmp_path)], HOST)
    with pytest.raises(UsageError, match="is not one of the snapshot set's volumes"):
        writer_from_spec(f"filesystem:{tmp_path}", [elsewhere], HOST)


def test_the_same_writer_twice_is_refused(tmp_path: Path) -> None:
    a, b = _db(tmp_path / "a.db", wal=True), _db(tmp_path / "b.db", wal=False)
    volumes = [_volume_of(a)]
    writers = writers_from_specs([f"sqlite:{a}", f"sqlite:{b}"], volumes, HOST)
    assert len({w.writer_id for w in writers}) == 2
    with pytest.raises(UsageError, match="given twice"):
        writers_from_specs([f"sqlite:{a}", f"sqlite:{a},checkpoint=off"], volumes, HOST)


def test_filesystem_writer_ids_are_stable_per_host_and_volume() -> None:
    volumes = [Volume(HOST, "/srv/a", "xfs", "1"), Volume(HOST, "/srv/b", "xfs", "2")]
    runner = RecordingRunner()  # nothing is started: no freeze guard before prepare-snapshot
    first, second = filesystem_writers(volumes, HOST, runner), filesystem_writers(volumes, HOST, runner)
    assert [w.writer_id for w in first] == [w.writer_id for w in second]
    assert len({w.writer_id for w in first}) == 2
    assert filesystem_writers(volumes, "other-host", runner)[0].writer_id != first[0].writer_id
    assert runner.calls == []
    assert first[0].writer_id == uuid.uuid5(filesystem.CLASS_ID, f"{HOST}:/srv/a")
    assert uuid.uuid5(uuid.NAMESPACE_DNS, "snapport.writers.filesystem") == filesystem.CLASS_ID
    assert filesystem.CLASS_ID != sqlite.CLASS_ID


def test_filesystem_writer_metadata_is_one_file_group_for_the_whole_volume() -> None:
    writer = FilesystemWriter(Volume(HOST, "/srv/data", "xfs", "1"))
    metadata = writer.identify(Deadline.after(1))
    assert (metadata.writer_id, metadata.class_id, metadata.name) == (
        writer.writer_id,
        filesystem.CLASS_ID,
        "filesystem",
    )
    [component] = metadata.components
    assert component.type is ComponentType.FILE_GROUP and component.name == "/srv/data"
    [spec] = component.files
    assert (spec.volume, spec.path, spec.pattern, spec.recursive) == ("/srv/data", "", "*", True)


def test_filesystem_writer_refuses_a_set_without_its_volume() -> None:
    writer = FilesystemWriter(Volume(HOST, "/srv/data", "xfs", "1"))
    other = Session(uuid.uuid4(), Context.BACKUP, Attr.NONE, BackupType.FULL, (Volume(HOST, "/srv/x", "xfs", "2"),))
    with pytest.raises(WriterError, match="not in snapshot set"):
        writer.prepare_backup(other, (), Deadline.after(1))


@pytest.mark.parametrize(("wal", "logs"), [(True, ["app.db-wal", "app.db-shm"]), (False, ["app.db-journal"])])
def test_sqlite_metadata_lists_the_database_and_its_logs(tmp_path: Path, wal: bool, logs: list[str]) -> None:
    db = _db(tmp_path / "sub" / "app.db", wal=wal)
    volume = _volume_of(db)
    metadata = SqliteWriter([db], [volume], host=HOST).identify(Deadline.after(1))
    [component] = metadata.components
    assert component.type is ComponentType.DATABASE and component.name == str(db)
    [data] = component.database_files
    relative = str(db.parent.relative_to(volume.mount_point))
    assert (data.volume, data.path, data.pattern) == (volume.mount_point, relative, "app.db")
    assert [s.pattern for s in component.log_files] == logs
    assert {s.path for s in component.log_files} == {relative}


def test_sqlite_metadata_escapes_pattern_characters_and_sorts_databases(tmp_path: Path) -> None:
    odd, plain = _db(tmp_path / "b[1]*.db", wal=True), _db(tmp_path / "a.db", wal=False)
    writer = SqliteWriter([odd, plain], [_volume_of(odd)], host=HOST)
    metadata = writer.identify(Deadline.after(1))
    assert [c.name for c in metadata.components] == [str(plain), str(odd)]
    assert metadata.components[1].database_files[0].pattern == "b[[]1][*].db"
    assert writer.writer_id == SqliteWriter([plain, odd], [_volume_of(odd)], host=HOST).writer_id


def test_sqlite_writer_refuses_relative_paths_and_bad_modes(tmp_path: Path) -> None:
    volume = _volume_of(tmp_path)
    with pytest.raises(UsageError, match="not absolute"):
        SqliteWriter(["app.db"], [volume], host=HOST)
    with pytest.raises(UsageError, match="checkpoint must be one of"):
        SqliteWriter([tmp_path / "a.db"], [volume], host=HOST, checkpoint="sometimes")
    with pytest.raises(UsageError, match="at least one database"):
        SqliteWriter([], [volume], host=HOST)
