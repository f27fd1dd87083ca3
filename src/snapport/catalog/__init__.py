"""Durable state: snapshot sets, snapshots, writer events and status, imports, exposures, leases, agent jobs, and
an audit trail.

SQLite in WAL mode under `$SNAPPORT_HOME` by default, PostgreSQL by URL (a fleet); SQLAlchemy Core and numbered
alembic migrations, run on open. See docs/catalog.md for the tables and the concurrency and crash guarantees.
"""

from snapport.catalog.config import catalog_url, default_home
from snapport.catalog.engine import head_revision
from snapport.catalog.records import (
    JOB_TRANSITIONS,
    CatalogEvent,
    EventKind,
    Exposure,
    ImportRecord,
    JobProgress,
    JobRecord,
    JobState,
    Lease,
    SessionRecord,
    WriterEvent,
    WriterStatus,
)
from snapport.catalog.store import KEEP, Catalog, Keep

__all__ = [
    "JOB_TRANSITIONS",
    "KEEP",
    "Catalog",
    "CatalogEvent",
    "EventKind",
    "Exposure",
    "ImportRecord",
    "JobProgress",
    "JobRecord",
    "JobState",
    "Keep",
    "Lease",
    "SessionRecord",
    "WriterEvent",
    "WriterStatus",
    "catalog_url",
    "default_home",
    "head_revision",
]
