"""The catalog tests' throwaway PostgreSQL server: started once per module that asks for it, removed after."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest

from tests.unit.catalog.postgres_server import PostgresServer, PostgresUnavailable


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
    except (PostgresUnavailable, OSError, subprocess.TimeoutExpired) as exc:
        server.stop()
        pytest.skip(f"PostgreSQL could not start: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def pg_database(pg_server: PostgresServer) -> Iterator[str]:
    """One database for the module's PostgreSQL runs, emptied before each test (its schema stays)."""
    name = pg_server.create_database()
    try:
        yield name
    finally:
        pg_server.drop_database(name)
