"""Numbered migrations: a fresh catalog is at head and matches the code's tables; an older catalog with rows is
upgraded in place (SQLite and PostgreSQL); migrations are all-or-nothing; two processes opening a fresh catalog at
once both succeed; a newer schema is refused."""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, insert, inspect, select

import snapport.catalog.migrations
from snapport.catalog import Catalog, head_revision
from snapport.catalog import schema as t
from snapport.catalog.engine import WRITE, alembic_config, current_revision, make_engine, parse_url
from snapport.catalog.schema import metadata
from snapport.errors import CatalogError, ObjectNotFound
from snapport.model import SetOrigin, SetState
from tests.unit.catalog.catalog_worker import ask, ready, workers
from tests.unit.catalog.postgres_server import PostgresServer

VERSIONS = Path(snapport.catalog.migrations.__file__).parent / "versions"


def test_revisions_are_a_numbered_chain() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    revisions = list(reversed(list(script.walk_revisions())))
    assert [r.revision for r in revisions] == [f"{i:04d}" for i in range(1, len(revisions) + 1)]
    assert [r.down_revision for r in revisions] == [None, *(r.revision for r in revisions[:-1])]
    files = sorted(p.name for p in VERSIONS.glob("*.py"))
    assert [re.match(r"(\d{4})_\w+\.py$", f).group(1) for f in files] == [r.revision for r in revisions]  # type: ignore[union-attr]
    assert head_revision() == revisions[-1].revision


def test_a_fresh_catalog_is_at_head_and_matches_the_code(tmp_path: Path) -> None:
    with Catalog.open(f"sqlite:///{tmp_path / 'catalog.db'}") as catalog, catalog._engine.connect() as conn:
        assert current_revision(conn) == head_revision()
        # The migrations build exactly the tables the code queries (names, columns, types, indexes, keys).
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_migrations_go_down_and_up_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    with Catalog.open(url) as catalog, catalog._engine.connect() as conn:
        conn.execution_options(**{WRITE: True})
        with conn.begin():
            command.downgrade(alembic_config(conn), "base")
        assert set(inspect(conn).get_table_names()) == {"alembic_version"}
        assert current_revision(conn) is None
    with Catalog.open(url) as catalog, catalog._engine.connect() as conn:
        assert current_revision(conn) == head_revision()


def test_a_failed_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    raw = sqlite3.connect(db)
    raw.execute("CREATE TABLE leases (x INTEGER)")  # the last table 0001 creates: it fails at the very end
    raw.commit()
    raw.close()
    with pytest.raises(CatalogError, match="leases"):
        Catalog.open(f"sqlite:///{db}")
    raw = sqlite3.connect(db)
    tables = {name for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    raw.close()
    assert tables == {"leases"}  # no half-built schema, no version stamp


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "catalog.db"
    Catalog.open(f"sqlite:///{db}").close()
    raw = sqlite3.connect(db)
    raw.execute("UPDATE alembic_version SET version_num = '9999'")
    raw.commit()
    raw.close()
    with pytest.raises(CatalogError, match="revision 9999 is newer"):
        Catalog.open(f"sqlite:///{db}")


def test_two_processes_opening_a_fresh_catalog_at_once(tmp_path: Path) -> None:
    with workers(("open", "-"), ("open", "-")) as procs:
        ready(procs)
        for round_ in range(8):
            url = f"sqlite:///{tmp_path / str(round_) / 'catalog.db'}"
            assert ask(procs, url) == ["opened sqlite"] * 2
            with Catalog.open(url) as catalog, catalog._engine.connect() as conn:
                assert current_revision(conn) == head_revision()
                assert compare_metadata(MigrationContext.configure(conn), metadata) == []


# -- upgrading a catalog that holds rows ----------------------------------------------------------------------------

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with nothing in it yet: a new SQLite file, or a new database on the throwaway server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'catalog.db'}"
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    name = server.create_database()
    try:
        yield server.url(name)
    finally:
        server.drop_database(name)


def _migrate(url: str, revision: str, *, down: bool = False) -> None:
    engine = make_engine(parse_url(url))
    try:
        with engine.connect() as conn:
            conn.execution_options(**{WRITE: True})
            with conn.begin():
                (command.downgrade if down else command.upgrade)(alembic_config(conn), revision)
    finally:
        engine.dispose()


def _add_set_0002(conn: Connection, description: str, session: bool) -> uuid.UUID:
    """A created set (with a session, if asked) as revision 0002 stored it: the columns it had, nothing else."""
    set_id = uuid.uuid4()
    recorded = conn.scalar(select(func.count()).select_from(t.snapshot_sets))
    conn.execute(
        insert(t.snapshot_sets).values(
            id=str(set_id),
            context="backup",
            attrs="transportable",
            state="created",
            originating_host="systemone",
            service_host="systemone",
            created_at=T0,
            recorded_at=T0 + timedelta(seconds=recorded or 0),  # the listing order
            updated_at=T0,
            description=description,
        )
    )
    if session:
        conn.execute(
            insert(t.sessions).values(
                set_id=str(set_id),
                backup_type="full",
                writer_specs=json.dumps(["sqlite:/srv/app.db"]),
                documents_dir=f"/var/lib/snapport/sets/{set_id}",
                updated_at=T0,
            )
        )
    return set_id


def test_a_0002_catalog_with_rows_is_upgraded_and_its_offhost_sets_get_their_origin(empty_url: str) -> None:
    _migrate(empty_url, "0002")
    engine = make_engine(parse_url(empty_url))
    try:
        with engine.connect() as conn:
            conn.execution_options(**{WRITE: True})
            with conn.begin():
                assert current_revision(conn) == "0002"
                assert "origin" not in {c["name"] for c in inspect(conn).get_columns("sessions")}
                offhost = _add_set_0002(conn, "off-host backup", session=True)
                mining = _add_set_0002(conn, "off-host data mining", session=True)
                nightly = _add_set_0002(conn, "nightly", session=True)
                unsessioned = _add_set_0002(conn, "off-host backup", session=False)
                conn.execute(
                    insert(t.jobs).values(
                        id=str(uuid.uuid4()),
                        kind="proxy-backup",
                        state="queued",
                        params="{}",
                        cancel_requested=False,
                        created_at=T0,
                        updated_at=T0,
                    )
                )
    finally:
        engine.dispose()

    with Catalog.open(empty_url, host="systemone") as catalog:
        with catalog._engine.connect() as conn:
            assert current_revision(conn) == head_revision()
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        assert [s.id for s in catalog.list_sets()] == [offhost, mining, nightly, unsessioned]
        assert all(s.state is SetState.CREATED and s.created_at == T0 for s in catalog.list_sets())
        origins = {set_id: catalog.get_session(set_id).origin for set_id in (offhost, mining, nightly)}
        assert origins == {
            offhost: SetOrigin.OFFHOST_BACKUP,
            mining: SetOrigin.OFFHOST_DATA_MINING,
            nightly: None,
        }
        kept = catalog.get_session(offhost)
        assert (kept.backup_type, kept.writer_specs, kept.documents_dir, kept.updated_at, kept.completed) == (
            "full",
            ("sqlite:/srv/app.db",),
            f"/var/lib/snapport/sets/{offhost}",
            T0,
            False,
        )
        with pytest.raises(ObjectNotFound):
            catalog.get_session(unsessioned)  # no session row was made for it
        both = {SetOrigin.OFFHOST_BACKUP, SetOrigin.OFFHOST_DATA_MINING}
        assert [s.id for s in catalog.sets_with_origin(both)] == [offhost, mining]
        assert [j.kind for j in catalog.list_jobs()] == ["proxy-backup"]

    # Down to 0002 and up again: the rows stay, and the origins come back from the descriptions.
    _migrate(empty_url, "0002", down=True)
    with Catalog.open(empty_url, host="systemone") as catalog:
        assert catalog.get_session(mining).origin is SetOrigin.OFFHOST_DATA_MINING
        assert catalog.get_session(nightly).origin is None
        assert len(catalog.list_sets()) == 4
