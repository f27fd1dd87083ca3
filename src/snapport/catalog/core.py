"""What every part of the catalog shares: opening it (schema at head), its host and boot, and transactions.

Each record family (`sets`, `writers`, `exposures`, `leases`, `sessions`, `jobs`, `events`) is a class over this
core; `store.Catalog` is all of them at once (docs/catalog.md says why mixins and not delegation).
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from types import TracebackType
from typing import Any, Self

from sqlalchemy import ColumnElement, Connection, CursorResult, Engine, RowMapping, Select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from snapport.catalog.clock import boot_id
from snapport.catalog.engine import WRITE, describe, make_engine, migrate, parse_url, sqlite_path
from snapport.errors import CatalogError, ObjectNotFound, SnapportError

# How often a conditional update that lost a race is retried before giving up (PostgreSQL only: SQLite's write
# transactions are serialised by BEGIN IMMEDIATE, so there the first attempt always decides).
RACE_RETRIES = 50


class Keep(enum.Enum):
    """The default of an optional update argument: leave the stored value as it is (None means "clear it")."""

    KEEP = "keep"


KEEP = Keep.KEEP


class CatalogCore:
    """The engine, this host's name and boot, and one-transaction-per-call reads and writes."""

    def __init__(self, engine: Engine, *, host: str) -> None:
        self._engine = engine
        self._host = host
        self._boot_id = boot_id()

    # -- life cycle ---------------------------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, *, host: str | None = None) -> Self:
        """Open the catalog at `url` (SQLite file or PostgreSQL), creating it or upgrading its schema to head.

        `host` names this host in the records it keeps (exposures, leases); default: the host name.
        """
        parsed = parse_url(url)
        shown = parsed.render_as_string(hide_password=True)
        path = sqlite_path(parsed)
        if path is not None:
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            except OSError as exc:
                raise CatalogError(f"cannot create the catalog directory {path.parent}: {exc.strerror}") from exc
        engine = make_engine(parsed)
        try:
            migrate(engine)
        except SQLAlchemyError as exc:
            engine.dispose()
            raise CatalogError(f"cannot open the catalog {shown}: {describe(exc)}") from exc
        except OSError as exc:
            engine.dispose()
            raise CatalogError(f"cannot open the catalog {shown}: {exc}") from exc
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, host=host or socket.gethostname())

    def close(self) -> None:
        """Close every pooled connection; the catalog must not be used afterwards."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The database URL, password hidden."""
        return self._engine.url.render_as_string(hide_password=True)

    @property
    def backend(self) -> str:
        """`sqlite` or `postgresql`."""
        return self._engine.dialect.name

    @property
    def host(self) -> str:
        return self._host

    # -- transactions -------------------------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises; database errors become
        `CatalogError`, our own errors pass through unchanged."""
        try:
            with self._engine.connect() as connection:
                if write:
                    connection.execution_options(**{WRITE: True})
                with connection.begin():
                    yield connection
        except SnapportError:
            raise
        except IntegrityError as exc:
            raise CatalogError(f"refused: conflicts with a record already in the catalog ({describe(exc)})") from exc
        except SQLAlchemyError as exc:
            raise CatalogError(f"catalog {'write' if write else 'read'} failed: {describe(exc)}") from exc

    def _write(self) -> AbstractContextManager[Connection]:
        return self._transaction(write=True)

    def _read(self) -> AbstractContextManager[Connection]:
        return self._transaction(write=False)


# -- small SQL helpers every family uses ---------------------------------------------------------------------------


def lost_insert_race(exc: CatalogError) -> bool:
    """Whether a failed write lost to a concurrent insert of the same key (PostgreSQL; retry as an update)."""
    return isinstance(exc.__cause__, IntegrityError)


def one_row(conn: Connection, query: Select[Any], missing: str) -> RowMapping:
    """The first row `query` finds; `ObjectNotFound(missing)` if none."""
    row = conn.execute(query).mappings().first()
    if row is None:
        raise ObjectNotFound(missing)
    return row


def new_id(result: CursorResult[Any]) -> int:
    """The integer key the database gave the row just inserted."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def same(column: Any, value: str | None) -> ColumnElement[bool]:
    """`column = value`, or `column IS NULL` for None (SQL's `= NULL` is never true)."""
    result: ColumnElement[bool] = column.is_(None) if value is None else column == value
    return result
