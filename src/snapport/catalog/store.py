"""The catalog: durable records of snapshot sets and of everything done to them, on SQLite or PostgreSQL.

Every write is one short transaction, committed before the method returns, so a caller that acts after the call
acts on a recorded state ("every state change is in the catalog before it is acted on").
"""

from __future__ import annotations

from snapport.catalog.events import EventStore
from snapport.catalog.exposures import ExposureStore
from snapport.catalog.jobs import JobStore
from snapport.catalog.leases import LeaseStore
from snapport.catalog.sessions import SessionStore
from snapport.catalog.sets import SetStore
from snapport.catalog.writers import WriterStore


class Catalog(SetStore, WriterStore, ExposureStore, LeaseStore, SessionStore, JobStore, EventStore):
    """One host's catalog. Open with `Catalog.open(url)`; safe to use from several threads and processes at once.

    Each base is one family of records over the shared `CatalogCore` (its module says what it keeps); this class
    adds nothing, so every method is written once, where its tables and row conversions are.
    """
