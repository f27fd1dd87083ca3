"""The agent as routes and jobs see it: its configuration, home, catalog, job runner, handovers and the background
work it owns."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from snapport.agent.config import AgentConfig
from snapport.agent.jobs import JobRegistry, JobRunner
from snapport.agent.offhost.handover import Handovers
from snapport.catalog import Catalog
from snapport.coordinator.host import Host, run_dir
from snapport.osal.host import this_host_name

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
        self.handovers = Handovers()
        self.started_at = datetime.now(UTC)
        self._background: set[asyncio.Task[None]] = set()

    @property
    def catalog(self) -> Catalog:
        """The catalog for blocking code (jobs' `run_blocking`); from the event loop use `db.call`."""
        return self.db.catalog

    def host(self) -> Host:
        """This host as the coordinator sees it, for blocking code."""
        return Host(name=this_host_name(), home=self.home, catalog=self.catalog, run_dir=run_dir())

    def in_background(self, work: Coroutine[object, object, None]) -> None:
        """Run `work` beside the jobs (a watcher, a report to another host), held until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def background_settled(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the background work to end."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)

    def close(self) -> None:
        self.db.close()
