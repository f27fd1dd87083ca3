"""Leases and jobs whose process is gone: the sessions their leases held are ended (no BackupComplete), jobs with
no agent are failed; with an agent configuration and none running, through the agent's own start-up recovery.
`end_lease` is the one function that ends a lease's session."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from functools import partial

from snapport.catalog import Lease
from snapport.coordinator import lifecycle
from snapport.coordinator.host import Host
from snapport.coordinator.reconcile.report import Pass
from snapport.errors import BadState, JobInterrupted
from snapport.model import JobState


def end_lease(host: Host, lease: Lease, *, succeeded: bool = False) -> str:
    """End the session a lease was granted for (`lifecycle.end_session`: BackupComplete only if `succeeded`, the
    set deleted) and release the lease; say what was done. Idempotent. A delete that fails raises (its
    `SnapportError`) with the lease still unreleased, so the next reconciliation retries."""
    action = lifecycle.end_session(host, lease.set_id, succeeded=succeeded)
    host.catalog.release_lease(lease.id)
    return action + "; released the lease"


class AgentRecovery:
    """The agent's own start-up recovery of jobs and leases (failing the interrupted jobs, cleaning up after them,
    telling the other host), run at most once for a home whose agent is not running; given by the caller, since
    the domain never imports the agent."""

    def __init__(self, recover: Callable[[], None]) -> None:
        self._recover = recover
        self._ran = False

    def fix(self, resolved: Callable[[], bool], action: str) -> str:
        if not self._ran:
            self._ran = True
            self._recover()
        if not resolved():
            raise BadState("the agent's recovery did not resolve it")
        return action


def leases(run: Pass, agent_running: bool, recovery: AgentRecovery | None) -> None:
    """With no agent, every unreleased lease this host keeps has lost its waiter; with one, a lease past its
    expiry whose set no job is working on has."""
    catalog = run.host.catalog
    open_leases = [x for x in catalog.leases() if x.released_at is None and x.keeper_host == catalog.host]
    if not open_leases:
        return
    expired = {x.id for x in catalog.expired_leases()}
    busy: set[uuid.UUID] = set()
    if agent_running:
        busy = {j.set_id for j in catalog.list_jobs([JobState.QUEUED, JobState.RUNNING]) if j.set_id is not None}
    for lease in open_leases:
        if agent_running and (lease.id not in expired or lease.set_id in busy):
            continue
        why = "past its expiry" if lease.id in expired else "no agent runs to wait for it"
        detail = f"lease of set {lease.set_id} to {lease.holder}: {why}"
        fix: Callable[[], str] = partial(end_lease, run.host, lease)
        if recovery is not None and not agent_running:

            def released(lease_id: uuid.UUID = lease.id) -> bool:
                return catalog.get_lease(lease_id).released_at is not None

            fix = partial(recovery.fix, released, "the agent's recovery ended the session (no BackupComplete)")
            run.found("lease", str(lease.id), detail, fix)
            continue

        def still_open(lease_id: uuid.UUID = lease.id) -> bool:
            return catalog.get_lease(lease_id).released_at is None

        run.found("lease", str(lease.id), detail, fix, set_id=lease.set_id, still=still_open)


def jobs(run: Pass, agent_running: bool, recovery: AgentRecovery | None) -> None:
    if agent_running:
        return
    catalog = run.host.catalog
    for job in catalog.list_jobs([JobState.QUEUED, JobState.RUNNING]):

        def fail(job_id: uuid.UUID = job.id, was: str = job.state.value) -> str:
            error = JobInterrupted(f"the agent stopped while job {job_id} was {was}")
            catalog.update_job(job_id, state=JobState.FAILED, error=(error.code, error.message))
            return "marked failed (JOB_INTERRUPTED)"

        def ended(job_id: uuid.UUID = job.id) -> bool:
            return catalog.get_job(job_id).state.finished

        fix: Callable[[], str] = fail
        if recovery is not None:
            action = "the agent's recovery marked it failed (JOB_INTERRUPTED) and cleaned up after it"
            fix = partial(recovery.fix, ended, action)
        run.found("job", str(job.id), f"{job.kind} is {job.state.value} but no agent runs", fix)
