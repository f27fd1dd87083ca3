"""The agent as routes and jobs see it: its configuration, home, catalog and job runner."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from snapport.agent.config import AgentConfig
from snapport.agent.jobs import JobRegistry, JobRunner
from snapport.catalog import Catalog

T = TypeVar("T")


class Db:
    """The catalog from the event loop: each call runs on one worker thread, so the loop never waits on SQLite's
    locks or fsync, and calls reach the database in the order they were made."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="catalog")

    async def call(self, fn: Callable[[Catalog], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, self.catalog)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class Agent:
    """One host's agent: what every route handler (`Call.agent`) and job (`JobContext.agent`) is given."""

    def __init__(self, config: AgentConfig, home: Path, catalog: Catalog, registry: JobRegistry) -> None:
        self.config = config
        self.home = home
        self.db = Db(catalog)
        self.registry = registry
        self.jobs = JobRunner(self)
        self.started_at = datetime.now(UTC)

    @property
    def catalog(self) -> Catalog:
        """The catalog for blocking code (jobs' `run_blocking`); from the event loop use `db.call`."""
        return self.db.catalog

    def close(self) -> None:
        self.db.close()
