"""Numbered migrations: a fresh catalog is at head and matches the code's tables; migrations are all-or-nothing;
two processes opening a fresh catalog at once both succeed; a newer schema is refused."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect

import snapport.catalog.migrations
from snapport.catalog import Catalog, head_revision
from snapport.catalog.engine import WRITE, alembic_config, current_revision
from snapport.catalog.schema import metadata
from snapport.errors import CatalogError
from tests.unit.catalog.catalog_worker import ask, ready, workers

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
