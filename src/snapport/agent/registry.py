"""What an agent serves: its routes and job kinds, in one place (the two-host protocol registers its own here)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from snapport.agent.certs import Role
from snapport.agent.dispatch import Route
from snapport.agent.jobs import JobKind, JobRegistry
from snapport.agent.offhost import production, proxy, recovery
from snapport.agent.offhost.models import OffhostParams, ProxyParams
from snapport.agent.offhost.routes import OFFHOST_ROUTES
from snapport.agent.routes import CORE_ROUTES

if TYPE_CHECKING:
    from snapport.agent.service import Agent
    from snapport.catalog import JobRecord

TEST_JOBS_ENV = "SNAPPORT_TEST_JOBS"

OFFHOST_KINDS: tuple[JobKind[Any], ...] = (
    JobKind(
        production.KIND,
        OffhostParams,
        production.run_offhost,
        "Snapshot volumes transportably and have a proxy back them up; BackupComplete after its success",
        roles=frozenset({Role.PRODUCTION}),
        authorize=production.authorize,
    ),
    JobKind(
        proxy.KIND,
        ProxyParams,
        proxy.run_proxy,
        "Import, expose, back up, verify and delete a production host's set, then report to it",
        roles=frozenset({Role.PRODUCTION}),
        authorize=proxy.authorize,
    ),
)


def routes() -> tuple[Route, ...]:
    """Every route the agent serves."""
    return CORE_ROUTES + OFFHOST_ROUTES


async def reconcile(agent: Agent, interrupted: Sequence[JobRecord]) -> None:
    """At start, after the jobs a dead agent left were marked interrupted: let each protocol clean up after them."""
    await recovery.recover(agent, interrupted)


def job_kinds(*, test_jobs: bool | None = None) -> JobRegistry:
    """Every job kind the agent runs; the test-only kinds of `snapport.agent.testing` too when `test_jobs`
    (default: `$SNAPPORT_TEST_JOBS` is `1`)."""
    registry = JobRegistry(OFFHOST_KINDS)
    if test_jobs if test_jobs is not None else os.environ.get(TEST_JOBS_ENV) == "1":
        from snapport.agent.testing import TEST_KINDS  # noqa: PLC0415  (never imported in production)

        for kind in TEST_KINDS:
            registry.register(kind)
    return registry
