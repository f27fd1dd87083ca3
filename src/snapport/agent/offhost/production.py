"""systemOne's job `offhost-backup`: create the transportable set, hand it to the proxy under a lease, wait for the
proxy's report with the backup session open, and end the session (BackupComplete only after a successful report).

Data mining (`backup_session: false`) ends the session right after the handover, without BackupComplete, and a
watcher in the background keeps the handover open until the proxy reports or its lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import uuid
from pathlib import Path

from pydantic import JsonValue

from snapport.agent.certs import PeerIdentity, Role, same_host
from snapport.agent.client import AgentClient
from snapport.agent.config import AgentConfig, parse_address
from snapport.agent.jobs import JobContext
from snapport.agent.log import log
from snapport.agent.offhost.handover import Handover
from snapport.agent.offhost.models import (
    CompletionReport,
    DataMiningResult,
    OffhostParams,
    OffhostResult,
    ProxyParams,
)
from snapport.agent.service import Agent
from snapport.coordinator.lifecycle import end_session
from snapport.coordinator.offhost import create_offhost_set
from snapport.errors import AccessDenied, AgentUnreachable, LeaseExpired, SnapportError, UsageError
from snapport.faults import inject
from snapport.model import JobState

KIND = "offhost-backup"
PROXY_KIND = "proxy-backup"
_JOB_NAMESPACE = uuid.UUID("5b0c8f5e-52f4-4a57-9d0b-6e0f3c2b7a11")  # proxy job id = uuid5(this, set id): retry-safe
POLL_S = 0.5
# How long past the lease systemOne retries deleting a set a failed proxy still holds: the proxy lets go within its
# lease, once its engine is stopped (and killed after its grace of 5 s); plus a margin.
SETTLE_MARGIN_S = 35.0


def _proxy_name(config: AgentConfig, address: str) -> str:
    wanted = parse_address(address)
    for peer in config.peers:
        if peer.role is Role.PROXY and (str(peer.address) == str(wanted) or same_host(peer.name, wanted.host)):
            return peer.name
    raise UsageError(f"{address} is not a proxy peer in this agent's configuration (agent.toml [[peers]])")


async def end_session_logged(
    agent: Agent, set_id: uuid.UUID, *, succeeded: bool, keep_set: bool = False, settle_s: float = 0.0
) -> None:
    """`end_session` from the event loop, waited for even if the job is cancelled meanwhile; a failure is logged,
    never raised (what is left is `snapport doctor`'s)."""
    ending = asyncio.ensure_future(
        asyncio.to_thread(
            functools.partial(
                end_session, agent.host(), set_id, succeeded=succeeded, keep_set=keep_set, settle_s=settle_s
            )
        )
    )
    try:
        action = await asyncio.shield(ending)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await ending
        raise
    except SnapportError as exc:
        log("offhost.delete-failed", level=40, set=str(set_id), error=exc.code, message=exc.message)
        return
    log("offhost.session-ended", set=str(set_id), succeeded=succeeded, action=action)


async def run_offhost(context: JobContext, params: OffhostParams) -> JsonValue:
    agent = context.agent
    inject("offhost.start")
    proxy = _proxy_name(agent.config, params.proxy)
    lease_s = params.lease_s or agent.config.lease_default_s
    await context.progress("snapshot")
    created = await context.run_blocking(
        functools.partial(
            create_offhost_set,
            agent.host(),
            params.volumes,
            params.writers,
            data_mining=not params.backup_session,
            freeze_timeout_s=params.freeze_timeout_s,
            event_timeout_s=params.event_timeout_s,
        )
    )
    set_id = created.snapshot_set.id
    try:
        inject("lease.grant")
        lease = await agent.db.call(lambda c: c.grant_lease(set_id, proxy, lease_s))
    except Exception:  # nothing handed over yet: end the session here (a crash is left to recovery)
        await end_session_logged(agent, set_id, succeeded=False)
        raise
    handover = agent.handovers.open(set_id, proxy, lease.id)
    log("offhost.handover", set=str(set_id), proxy=proxy, lease_s=lease_s, backup_session=params.backup_session)
    succeeded = handed_off = False
    try:
        await context.progress("handover")
        inject("offhost.handover")
        proxy_params = ProxyParams(
            set_id=set_id,
            source=agent.config.host,
            repo=params.repo,
            lease_s=lease_s,
            engine=params.engine,
            stall_s=params.stall_s,
        )
        job_id = uuid.uuid5(_JOB_NAMESPACE, str(set_id))
        async with AgentClient.for_peer(agent.config, agent.home, proxy, timeout_s=5.0) as client:
            await client.submit_job(PROXY_KIND, proxy_params.model_dump(mode="json"), job_id=job_id)
            if not params.backup_session:
                # Data mining: end this host's session now, without BackupComplete (not a backup: writers must not
                # truncate their logs); the persistent set stays for the proxy, and a watcher keeps the handover
                # (route authorisation, heartbeats, the report) until the proxy reports or the lease ends.
                await context.progress("session-end")
                await end_session_logged(agent, set_id, succeeded=False, keep_set=True)
                agent.in_background(_watch_handover(agent, handover, job_id, lease_s))
                succeeded = handed_off = True
                log("offhost.handed-off", set=str(set_id), proxy=proxy)
                return DataMiningResult(
                    set_id=set_id,
                    proxy=proxy,
                    proxy_job_id=job_id,
                    freeze_window_ms=created.snapshot_set.freeze_window_ms,
                    commit_ms=created.snapshot_set.commit_ms,
                    location=str(Path(params.repo)),
                ).model_dump(mode="json")
            report = await _await_report(context, agent, handover, client, job_id)
        if not report.succeeded:
            raise SnapportError.from_code(report.error, f"the proxy {proxy} failed: {report.message}")
        await context.progress("backup-complete")
        await end_session_logged(agent, set_id, succeeded=True)
        succeeded = True
        log("offhost.complete", set=str(set_id), proxy=proxy)
        return OffhostResult.of(created, proxy, report).model_dump(mode="json")
    finally:
        if not succeeded:
            agent.handovers.close(set_id)
            await end_session_logged(agent, set_id, succeeded=False, settle_s=lease_s + SETTLE_MARGIN_S)
            log("offhost.failed", level=30, set=str(set_id), proxy=proxy)
        if not handed_off:  # else the watcher owns the handover and the lease
            agent.handovers.close(set_id)
            await agent.db.call(lambda c: c.release_lease(lease.id))


async def _watch_handover(agent: Agent, handover: Handover, job_id: uuid.UUID, lease_s: float) -> None:
    """Data mining, after systemOne's job ended: keep the handover until the proxy reports (accepted, never a
    BackupComplete: the session ended already) or its lease runs out, then delete the persistent set here
    explicitly and release the lease. An agent stopped meanwhile leaves the lease to recovery."""
    outcome = "reported"
    try:
        async with AgentClient.for_peer(agent.config, agent.home, handover.proxy, timeout_s=5.0) as client:
            report = await _await_report(None, agent, handover, client, job_id)
        if not report.succeeded:
            outcome = report.error or "failed"
    except asyncio.CancelledError:
        raise
    except SnapportError as exc:
        outcome = exc.code
    except Exception as exc:
        outcome = f"INTERNAL: {type(exc).__name__}"
    agent.handovers.close(handover.set_id)  # later heartbeats and reports: 410 / not accepted
    settle = 0.0 if outcome == "reported" else lease_s + SETTLE_MARGIN_S
    try:
        await end_session_logged(agent, handover.set_id, succeeded=False, settle_s=settle)
    finally:
        await agent.db.call(lambda c: c.release_lease(handover.lease_id))
        level = 20 if outcome == "reported" else 30
        log("offhost.data-mining-done", level=level, set=str(handover.set_id), outcome=outcome)


async def _await_report(
    context: JobContext | None, agent: Agent, handover: Handover, client: AgentClient, job_id: uuid.UUID
) -> CompletionReport:
    """Wait for the proxy's report, relaying its progress into `context` (if any); `LeaseExpired` when the lease
    runs out (this host's clock only); the proxy job's own error if it ended without reporting."""
    while True:
        if handover.report.done():
            return handover.report.result()
        expired = await agent.db.call(lambda c: {lease.id for lease in c.expired_leases()})
        if handover.lease_id in expired:
            raise LeaseExpired(f"the proxy {handover.proxy} did not renew its lease in time; BackupComplete not fired")
        try:
            job = await client.get_job(job_id)
        except AgentUnreachable:
            job = None
        if job is not None:
            if job.state is JobState.QUEUED:
                # The proxy answered and holds the job in its queue: waiting for a slot is not a lost proxy, so a
                # queued job's lease does not run out while it waits.
                await agent.db.call(lambda c: c.renew_lease(handover.lease_id))
            if job.progress.phase and context is not None:
                await context.progress(
                    f"proxy:{job.progress.phase}", fraction=job.progress.fraction, bytes_done=job.progress.bytes_done
                )
            if job.state.finished:
                with contextlib.suppress(TimeoutError):  # a report is sent before the job ends
                    return await asyncio.wait_for(asyncio.shield(handover.report), 2.0)
                error = job.error
                raise SnapportError.from_code(
                    error.error if error else None, error.message if error else "the proxy job ended without a report"
                )
        await asyncio.wait({handover.report}, timeout=POLL_S)


async def authorize(peer: PeerIdentity, params: OffhostParams, agent: Agent) -> None:
    """Only this host's own operator (its certificate) starts an off-host backup of its volumes."""
    if not same_host(peer.host, agent.config.host):
        raise AccessDenied(f"an off-host backup of {agent.config.host} is started with its own certificate, not {peer}")
