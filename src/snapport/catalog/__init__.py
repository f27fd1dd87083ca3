"""Durable state: snapshot sets, snapshots, writer events and status, imports, exposures, leases, sessions, agent
jobs, and an audit trail.

SQLite in WAL mode under `$SNAPPORT_HOME` by default, PostgreSQL by URL (a fleet); SQLAlchemy Core and numbered
alembic migrations, run on open. See docs/catalog.md for the tables, the module layout and the concurrency and
crash guarantees.
"""

from snapport.catalog.config import catalog_url, default_home
from snapport.catalog.core import KEEP, Keep
from snapport.catalog.engine import head_revision
from snapport.catalog.records import (
    CatalogEvent,
    Exposure,
    ImportRecord,
    JobProgress,
    JobRecord,
    Lease,
    SessionRecord,
    WriterEventRecord,
    WriterRecord,
)
from snapport.catalog.store import Catalog

__all__ = [
    "KEEP",
    "Catalog",
    "CatalogEvent",
    "Exposure",
    "ImportRecord",
    "JobProgress",
    "JobRecord",
    "Keep",
    "Lease",
    "SessionRecord",
    "WriterEventRecord",
    "WriterRecord",
    "catalog_url",
    "default_home",
    "head_revision",
]
