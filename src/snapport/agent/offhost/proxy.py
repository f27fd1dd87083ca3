"""The proxy's job `proxy-backup`: fetch a production host's set documents, back the set up
(`coordinator.offhost.back_up_imported`, the engine in a child process), heartbeat the lease meanwhile, report.

When the lease is lost (systemOne refuses the heartbeat, or stays unreachable longer than the lease), the job is
cancelled, or the backup's progress stands still longer than `stall_s` (ENGINE_STALLED), the work gives up: its
engine process is stopped (killed if stuck, so its open files no longer pin the exposed copy) and the set released
here, whatever the work was doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

from pydantic import JsonValue

from snapport.agent.certs import PeerIdentity, Role, same_host
from snapport.agent.client import AgentClient
from snapport.agent.jobs import JobContext
from snapport.agent.log import log
from snapport.agent.offhost.models import (
    CompletionAck,
    CompletionReport,
    DocumentsBody,
    LeaseView,
    ProxyParams,
    ProxyResult,
)
from snapport.agent.service import Agent
from snapport.coordinator.offhost import ProxyOutcome, back_up_imported, release_imported
from snapport.documents import read_set_documents
from snapport.engines import Progress, SetDocuments
from snapport.engines.process import ProcessEngine
from snapport.errors import AccessDenied, AgentUnreachable, LeaseExpired, SnapportError
from snapport.faults import inject
from snapport.osal.runner import KILL_WAIT_S

KIND = "proxy-backup"
STUCK_WORK_GRACE_S = 5.0  # how long the engine process may take to stop before it is killed
STOP_WAIT_S = (
    STUCK_WORK_GRACE_S + KILL_WAIT_S + 5.0
)  # the engine stopped, killed and reaped; then the work is abandoned


class _ProxyWork:
    """The blocking part of the job, on a thread the job may abandon; `stop` makes it give up."""

    def __init__(self, context: JobContext, params: ProxyParams) -> None:
        self.context = context
        self.params = params
        self.host = context.agent.host()
        self.stop = threading.Event()  # the lease was lost or the job cancelled

    def check(self) -> None:
        if self.stop.is_set() or self.context.cancel_requested:
            raise LeaseExpired(f"set {self.params.set_id}: the lease was lost or the job cancelled; giving up")

    def run(self, documents: SetDocuments) -> ProxyOutcome:
        params = self.params
        engine = ProcessEngine(
            params.engine, Path(params.repo), stop=self.check, grace_s=STUCK_WORK_GRACE_S, stall_s=params.stall_s
        )
        return back_up_imported(
            self.host,
            documents,
            engine,
            check=self.check,
            on_phase=self.context.progress_threadsafe,
            on_progress=self._progress,
        )

    def _progress(self, p: Progress) -> None:
        fraction = p.bytes / p.total_bytes if p.total_bytes else None
        self.context.progress_threadsafe(p.phase.value, fraction=fraction, bytes_done=p.bytes, files_done=p.files)

    def release(self) -> bool:
        return release_imported(self.host, self.params.set_id)


def _documents(body: DocumentsBody, params: ProxyParams) -> SetDocuments:
    bcd, writers = read_set_documents(body.bcd.encode(), (w.encode() for w in body.writers), set_id=params.set_id)
    return SetDocuments(bcd, writers)


def _describe(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, SnapportError):
        return exc.code, exc.message
    if isinstance(exc, asyncio.CancelledError):
        return "JOB_INTERRUPTED", "the proxy's job was cancelled"
    return SnapportError.code, f"{type(exc).__name__}: {exc}"


async def _heartbeat(client: AgentClient, params: ProxyParams, lost: asyncio.Event, why: list[str]) -> None:
    """Renew the lease every quarter of it; set `lost` when systemOne refuses (410) or stays unreachable longer
    than the lease."""
    interval = max(0.5, min(params.lease_s / 4, 60.0))
    last_ok = time.monotonic()
    path = f"/v1/sets/{params.set_id}/lease"
    while True:
        inject("proxy.heartbeat")
        try:
            await asyncio.wait_for(client.call("POST", path, response=LeaseView), timeout=interval * 2)
            last_ok = time.monotonic()
        except LeaseExpired as exc:
            why.append(exc.message)
            lost.set()
            return
        except (AgentUnreachable, TimeoutError):
            if time.monotonic() - last_ok > params.lease_s:
                why.append(f"{params.source} unreachable for longer than the lease ({params.lease_s:g} s)")
                lost.set()
                return
        await asyncio.sleep(interval)


async def report(client: AgentClient, params: ProxyParams, completion: CompletionReport) -> bool:
    """Send the report, retrying for at most the lease's duration; False if systemOne no longer takes it."""
    deadline = time.monotonic() + params.lease_s
    while True:
        try:
            path = f"/v1/sets/{params.set_id}/completion"
            ack = await client.call("POST", path, body=completion, response=CompletionAck)
            return ack.accepted
        except LeaseExpired:
            return False
        except AgentUnreachable:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(1.0)


async def _settled(task: asyncio.Future[Any], timeout_s: float) -> None:
    """Wait up to `timeout_s` for `task` to end, even if this job is being cancelled meanwhile."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait({task}, timeout=timeout_s)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: the job's error is the one that made it stop


async def run_proxy(context: JobContext, params: ProxyParams) -> JsonValue:
    agent = context.agent
    inject("proxy.start")
    work = _ProxyWork(context, params)
    lost, why = asyncio.Event(), list[str]()
    async with AgentClient.for_peer(agent.config, agent.home, params.source, timeout_s=10.0) as client:
        await context.progress("fetch")
        body = await client.call("GET", f"/v1/sets/{params.set_id}/documents", response=DocumentsBody)
        documents = _documents(body, params)
        heartbeat = asyncio.create_task(_heartbeat(client, params, lost, why))
        completion: CompletionReport | None = None
        failure: BaseException | None = None
        task = context.start_blocking(work.run, documents)
        try:
            waiter = asyncio.ensure_future(lost.wait())
            racing: set[asyncio.Future[Any]] = {task, waiter}
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not task.done():  # the lease was lost first: stop the work, then clean up
                raise LeaseExpired(f"set {params.set_id}: {why[0] if why else 'the lease was lost'}")
            completion = CompletionReport.of(task.result())
        except BaseException as exc:
            failure = exc
            code, message = _describe(exc)
            completion = CompletionReport.failed(code, message)
            await context.progress("cleanup")
            if not task.done():  # stop the engine (killed if stuck: its open files keep the copy busy), then clean up
                work.stop.set()
                await _settled(task, STOP_WAIT_S)
            try:
                released = await asyncio.to_thread(work.release)
            except SnapportError as cleanup:  # left to the agent's next start (recovery) and `snapport doctor`
                log(
                    "proxy.cleanup-failed",
                    level=40,
                    set=str(params.set_id),
                    error=cleanup.code,
                    message=cleanup.message,
                )
                raise
            log("proxy.cleaned-up", level=30, set=str(params.set_id), released=released, error=code)
        finally:
            heartbeat.cancel()
        await context.progress("report")
        inject("proxy.report")
        if not lost.is_set():
            accepted = await report(client, params, completion)
            if not accepted and failure is None:
                raise LeaseExpired(f"{params.source} no longer waited for set {params.set_id}; the backup is kept")
        if failure is not None:
            raise failure
    return ProxyResult(
        set_id=params.set_id, files=completion.files, bytes=completion.bytes, location=completion.location
    ).model_dump(mode="json")


async def authorize(peer: PeerIdentity, params: ProxyParams, agent: Agent) -> None:
    """Only the production host a set comes from hands it over."""
    if not same_host(peer.host, params.source):
        raise AccessDenied(f"{peer} may not hand over a set of {params.source}")
    if agent.config.peer(params.source).role is not Role.PRODUCTION:
        raise AccessDenied(f"{params.source} is not a production peer of this agent")


async def report_lost(agent: Agent, params: ProxyParams) -> None:
    """After a restart: tell the source that this proxy's job for its set was lost (best effort)."""
    lost = CompletionReport.failed("JOB_INTERRUPTED", "the proxy's agent restarted")
    with contextlib.suppress(SnapportError):
        async with AgentClient.for_peer(agent.config, agent.home, params.source, timeout_s=10.0) as client:
            await report(client, params, lost)
