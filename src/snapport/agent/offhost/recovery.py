"""At an agent's start, after a crash: clean up after the off-host jobs the dead agent lost.

The proxy unexposes and deletes the sets its lost `proxy-backup` jobs held and tells their source (and releases
what a failed job could not); the production host ends every session whose lease it still keeps, and of every set
an off-host job made but never handed over, without BackupComplete.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from snapport.agent.log import log
from snapport.agent.offhost import proxy
from snapport.agent.offhost.models import ProxyParams
from snapport.agent.service import Agent
from snapport.catalog import Catalog, JobRecord
from snapport.coordinator.lifecycle import end_session
from snapport.coordinator.offhost import held_imports, release_imported, unhanded_sets
from snapport.coordinator.reconcile.leases import end_lease
from snapport.errors import SnapportError


async def recover(agent: Agent, interrupted: Sequence[JobRecord]) -> None:
    """Clean up after `interrupted` (the jobs the dead agent left, now failed) and whatever else it left."""
    for job in interrupted:
        if job.kind != proxy.KIND:
            continue
        params = ProxyParams.model_validate_json(job.params_json)
        await _release(agent, params.set_id, job=str(job.id))
        agent.in_background(proxy.report_lost(agent, params))
    for set_id in await agent.db.call(_proxy_sets_still_held):
        await _release(agent, set_id)
    leases = await agent.db.call(lambda c: [x for x in c.leases() if x.released_at is None])
    for lease in leases:
        await _blocking(
            agent, "offhost.reconciled", functools.partial(end_lease, agent.host(), lease), set=lease.set_id
        )
    leased = {lease.set_id for lease in leases}
    for set_id in await agent.db.call(lambda c: unhanded_sets(c, leased)):
        end = functools.partial(end_session, agent.host(), set_id, succeeded=False)
        await _blocking(agent, "offhost.reconciled", end, set=set_id)


def _proxy_sets_still_held(catalog: Catalog) -> list[uuid.UUID]:
    jobs = {ProxyParams.model_validate_json(j.params_json).set_id for j in catalog.list_jobs(kind=proxy.KIND)}
    return held_imports(catalog, jobs)


async def _release(agent: Agent, set_id: uuid.UUID, job: str | None = None) -> None:
    await _blocking(
        agent, "proxy.reconciled", functools.partial(release_imported, agent.host(), set_id), set=set_id, job=job
    )


async def _blocking(agent: Agent, event: str, step: Callable[[], object], **about: Any) -> None:
    """Run one recovery step; a failure is logged, never keeps the agent from starting (what is left is
    `snapport doctor`'s)."""
    try:
        done = await asyncio.to_thread(step)
    except SnapportError as exc:
        log(event.replace("reconciled", "reconcile-failed"), level=40, error=exc.code, message=exc.message, **about)
        return
    log(event, outcome=done, **about)
