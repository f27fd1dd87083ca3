"""The two-host protocol (DESIGN §5, §6): an off-host backup of a transportable set.

systemOne (production) runs the job `offhost-backup`: it creates the transportable set, grants the proxy a lease,
submits `proxy-backup` on the proxy and waits, its backup session open, for the proxy's report. The proxy fetches
the documents (`GET /v1/sets/{set_id}/documents`), imports (cluster rule on), exposes, backs up through path
mapping, verifies, unexposes, deletes, heartbeating `POST /v1/sets/{set_id}/lease` meanwhile, and reports
(`POST /v1/sets/{set_id}/completion`). Only the proxy named for a set (its lease holder) may call these three.
systemOne fires BackupComplete once, only for a successful report; on a failure report or when the lease runs out
by its own clock, it ends the session failed. The proxy cleans up what it holds when its heartbeat is refused
(`LEASE_EXPIRED`) or systemOne stays unreachable longer than the lease; an agent that restarts reconciles the
jobs it lost (`reconcile`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from snapport.agent import engine_process
from snapport.agent.certs import PeerIdentity, Role, same_host
from snapport.agent.client import AgentClient
from snapport.agent.config import AgentConfig, parse_address
from snapport.agent.dispatch import PROXY_ONLY, Call, Route
from snapport.agent.jobs import JobContext, JobKind
from snapport.agent.log import log
from snapport.agent.service import Agent
from snapport.catalog import Catalog, JobRecord
from snapport.coordinator import lifecycle
from snapport.coordinator.host import Host, run_dir
from snapport.coordinator.reconcile import reconcile_quick
from snapport.coordinator.session import BackupSession, CreatedSet, SessionOptions
from snapport.documents import bcd_to_xml, load_documents, read_document, wmd_to_xml
from snapport.engines import DEFAULT_ENGINE, ENGINES, Progress, SetDocuments
from snapport.errors import (
    AccessDenied,
    AgentUnreachable,
    BadState,
    DocumentError,
    LeaseExpired,
    ObjectNotFound,
    SnapportError,
    UsageError,
    all_error_classes,
)
from snapport.faults import inject
from snapport.model import Attr, BackupComponents, Context, JobState, SetState, WriterMetadata
from snapport.osal.host import this_host_name

T = TypeVar("T")
OFFHOST_KIND = "offhost-backup"
PROXY_KIND = "proxy-backup"
_JOB_NAMESPACE = uuid.UUID("5b0c8f5e-52f4-4a57-9d0b-6e0f3c2b7a11")  # proxy job id = uuid5(this, set id): retry-safe
MAX_DOCUMENT_BYTES = 4 << 20
POLL_S = 0.5
DATA_MINING_CONTEXT = Context.APP_ROLLBACK  # persistent: an auto-release set would go with the session that made it
assert not DATA_MINING_CONTEXT.auto_release and DATA_MINING_CONTEXT.writers_involved
STUCK_WORK_GRACE_S = 5.0  # how long a proxy's engine process may take to stop before it is killed
STOP_WAIT_S = STUCK_WORK_GRACE_S + engine_process.KILL_WAIT_S + 5.0  # the engine stopped, killed and reaped
OFFHOST_DESCRIPTIONS = ("off-host backup", "off-host data mining")  # how a set made by `offhost-backup` is described


# -- API models --------------------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _absolute(path: str) -> str:
    if not path.startswith("/") or "\0" in path or ".." in Path(path).parts:
        raise ValueError(f"{path!r} must be an absolute path without '..'")
    return path


def _known_engine(name: str) -> str:
    if name not in ENGINES:
        raise ValueError(f"unknown backup engine {name!r} (known: {', '.join(sorted(ENGINES))})")
    return name


class OffhostParams(_Model):
    """`offhost-backup` (on the production host): what to snapshot, which proxy backs it up, and where."""

    volumes: list[str] = Field(min_length=1, max_length=64)
    writers: list[str] = Field(default_factory=list, max_length=64)
    proxy: str = Field(description="the proxy's HOST:PORT, one of this agent's peers")
    repo: str = Field(max_length=4096, description="the repository directory on the proxy")
    engine: str = Field(DEFAULT_ENGINE, description="the backup engine on the proxy: archive or restic")
    lease_s: float | None = Field(None, gt=0, le=7 * 86400, description="default: lease_default_s")
    freeze_timeout_s: float = Field(60.0, gt=0, le=600)
    event_timeout_s: float = Field(60.0, gt=0, le=3600, description="the bound of every other writer event")
    backup_session: bool = Field(
        True,
        description="false: data mining: the set is made in the persistent context app-rollback, handed over, and "
        "this host's session ends at once, without BackupComplete; the proxy still backs it up and deletes it",
    )

    _repo = field_validator("repo")(classmethod(lambda cls, v: _absolute(v)))
    _volumes = field_validator("volumes")(classmethod(lambda cls, v: [_absolute(p) for p in v]))
    _engine = field_validator("engine")(classmethod(lambda cls, v: _known_engine(v)))


class ProxyParams(_Model):
    """`proxy-backup` (on the proxy): the set to fetch from `source` (a production peer) and back up into `repo`."""

    set_id: uuid.UUID
    source: str = Field(max_length=253)
    repo: str = Field(max_length=4096)
    lease_s: float = Field(gt=0, le=7 * 86400)
    engine: str = Field(DEFAULT_ENGINE, description="the backup engine: archive or restic")

    _repo = field_validator("repo")(classmethod(lambda cls, v: _absolute(v)))
    _engine = field_validator("engine")(classmethod(lambda cls, v: _known_engine(v)))


class DocumentsBody(_Model):
    bcd: str = Field(description="the Backup Components Document (XML)")
    writers: list[str] = Field(description="the writers' metadata documents (XML)")


class LeaseView(_Model):
    lease_id: uuid.UUID
    holder: str
    duration_s: float


class ComponentReport(_Model):
    writer_id: uuid.UUID
    component: str
    files: int
    bytes: int
    digest: str


class CompletionReport(_Model):
    """What the proxy reports: success with per-component results, or failure with the error's name."""

    succeeded: bool
    error: str | None = Field(None, max_length=64)
    message: str = Field("", max_length=4096)
    components: list[ComponentReport] = Field(default_factory=list, max_length=4096)
    import_ms: float | None = None
    backup_s: float | None = None
    bytes: int = 0
    files: int = 0
    location: str = Field("", max_length=4096)


class CompletionAck(_Model):
    accepted: bool = Field(description="false: the set's outcome was already decided (e.g. its lease ran out)")


# -- shared helpers ----------------------------------------------------------------------------------------------


def _host(agent: Agent) -> Host:
    return Host(name=this_host_name(), home=agent.home, catalog=agent.catalog, run_dir=run_dir())


def _error(name: str | None, message: str) -> SnapportError:
    for cls in all_error_classes():
        if cls.code == name:
            return cls(message)
    return SnapportError(f"{name}: {message}" if name else message)


def _describe(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, SnapportError):
        return exc.code, exc.message
    if isinstance(exc, asyncio.CancelledError):
        return "JOB_INTERRUPTED", "the proxy's job was cancelled"
    return "INTERNAL", f"{type(exc).__name__}: {exc}"


@dataclass
class _Handover:
    """A set handed to a proxy, as systemOne's running job waits for it."""

    proxy: str
    lease_id: uuid.UUID
    report: asyncio.Future[CompletionReport]


_HANDOVERS: weakref.WeakKeyDictionary[Agent, dict[uuid.UUID, _Handover]] = weakref.WeakKeyDictionary()


def _handovers(agent: Agent) -> dict[uuid.UUID, _Handover]:
    return _HANDOVERS.setdefault(agent, {})


# -- systemOne: routes -------------------------------------------------------------------------------------------


async def set_owners(call: Call) -> Collection[str]:
    """The proxy named for the set: the holder of its lease (404 if the set was handed to none)."""
    set_id = call.ids["set_id"]
    leases = await call.agent.db.call(lambda c: c.leases(set_id))
    if not leases:
        raise ObjectNotFound(f"set {set_id} was not handed to a proxy by this host")
    return {lease.holder for lease in leases}


async def get_documents(call: Call) -> DocumentsBody:
    set_id = call.ids["set_id"]
    session = await call.agent.db.call(lambda c: c.get_session(set_id))
    if not session.documents_dir:
        raise ObjectNotFound(f"set {set_id} has no documents")
    bcd, wmds = await asyncio.to_thread(load_documents, Path(session.documents_dir))
    return DocumentsBody(bcd=bcd_to_xml(bcd).decode(), writers=[wmd_to_xml(w).decode() for w in wmds])


async def renew(call: Call) -> LeaseView:
    set_id = call.ids["set_id"]
    inject("lease.renew")
    handover = _handovers(call.agent).get(set_id)
    if handover is None:
        raise LeaseExpired(f"no backup session of this host waits for set {set_id} any more")
    if handover.report.done():
        raise LeaseExpired(f"set {set_id} has its outcome already")
    try:
        lease = await call.agent.db.call(lambda c: c.renew_lease(handover.lease_id))
    except BadState as exc:  # released: the session ended
        raise LeaseExpired(exc.message) from None
    return LeaseView(lease_id=lease.id, holder=lease.holder, duration_s=lease.duration_s)


async def report_completion(call: Call) -> CompletionAck:
    set_id = call.ids["set_id"]
    report = call.body_as(CompletionReport)
    inject("offhost.report-received")
    handover = _handovers(call.agent).get(set_id)
    if handover is None or handover.report.done():
        return CompletionAck(accepted=False)
    handover.report.set_result(report)
    return CompletionAck(accepted=True)


OFFHOST_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/v1/sets/{set_id}/documents",
        get_documents,
        "A set's BCD and WMDs (XML), for the proxy named for it",
        roles=PROXY_ONLY,
        owners=set_owners,
        response=DocumentsBody,
        tag="offhost",
    ),
    Route(
        "POST",
        "/v1/sets/{set_id}/lease",
        renew,
        "Renew the proxy's lease on a set (its heartbeat); 410 LEASE_EXPIRED once systemOne gave up",
        roles=PROXY_ONLY,
        owners=set_owners,
        response=LeaseView,
        tag="offhost",
    ),
    Route(
        "POST",
        "/v1/sets/{set_id}/completion",
        report_completion,
        "The proxy's per-component results; BackupComplete follows a successful one",
        roles=PROXY_ONLY,
        owners=set_owners,
        body=CompletionReport,
        response=CompletionAck,
        tag="offhost",
    ),
)


# -- systemOne: the job ------------------------------------------------------------------------------------------


def _proxy_name(config: AgentConfig, address: str) -> str:
    wanted = parse_address(address)
    for peer in config.peers:
        if peer.role is Role.PROXY and (str(peer.address) == str(wanted) or same_host(peer.name, wanted.host)):
            return peer.name
    raise UsageError(f"{address} is not a proxy peer in this agent's configuration (agent.toml [[peers]])")


def _create_set(agent: Agent, params: OffhostParams) -> CreatedSet:
    from snapport.writers.registry import writer_from_spec  # noqa: PLC0415

    host = _host(agent)
    resolved = tuple(host.volume(v) for v in params.volumes)
    writers = [writer_from_spec(spec, resolved, host.name) for spec in params.writers]
    if params.backup_session:
        context, modifiers, description = Context.BACKUP, Attr.TRANSPORTABLE, OFFHOST_DESCRIPTIONS[0]
    else:  # the set must outlive the session that made it: an auto-release context would delete it at its end
        context, modifiers = DATA_MINING_CONTEXT, Attr.TRANSPORTABLE | Attr.ROLLBACK_RECOVERY
        description = OFFHOST_DESCRIPTIONS[1]
    options = SessionOptions(
        context=context,
        modifiers=modifiers,
        freeze_timeout_s=params.freeze_timeout_s,
        event_timeout_s=params.event_timeout_s,
        writer_specs=tuple(params.writers),
        description=description,
    )
    session = BackupSession(host, options, writers)
    for volume in resolved:
        session.add_volume(volume.mount_point)
    return session.create()


def _end_session(
    agent: Agent, set_id: uuid.UUID, *, succeeded: bool, settle_s: float = 0.0, keep_set: bool = False
) -> None:
    """BackupComplete (only if `succeeded`) and the end of the session; a second call changes nothing. Then the
    set is deleted here, whatever its context (an off-host set is never kept once its proxy is done with it),
    unless `keep_set` (data mining: the session ends while the proxy still needs the persistent set). The
    snapshot's deletion is retried for up to `settle_s` seconds: the array refuses to delete a LUN the proxy
    still holds, and a proxy that lost its lease lets go of it within about a lease."""
    host = _host(agent)
    deadline = time.monotonic() + settle_s
    try:
        lifecycle.complete(host, set_id, succeeded=succeeded)  # auto-release contexts: deletes the set too
    except BadState:  # the outcome was claimed already
        pass
    except SnapportError as exc:
        log("offhost.delete-deferred", level=30, set=str(set_id), error=exc.code)
    if keep_set:
        return
    while True:
        state = host.catalog.get_set(set_id).state
        if state in (SetState.DELETED, SetState.ABORTED):
            return
        try:
            lifecycle.delete(host, set_id)
            return
        except SnapportError as exc:
            if time.monotonic() > deadline:
                log("offhost.delete-failed", level=40, set=str(set_id), error=exc.code, message=exc.message)
                return
        time.sleep(1.0)


async def run_offhost(context: JobContext, params: OffhostParams) -> JsonValue:
    agent = context.agent
    inject("offhost.start")
    proxy = _proxy_name(agent.config, params.proxy)
    lease_s = params.lease_s or agent.config.lease_default_s
    await context.progress("snapshot")
    created = await context.run_blocking(_create_set, agent, params)
    snapshot_set = created.snapshot_set
    set_id = snapshot_set.id
    try:
        inject("lease.grant")
        lease = await agent.db.call(lambda c: c.grant_lease(set_id, proxy, lease_s))
    except Exception:  # nothing handed over yet: end the session here (a crash is left to `reconcile`)
        await context.run_blocking(functools.partial(_end_session, agent, set_id, succeeded=False))
        raise
    handover = _Handover(proxy, lease.id, asyncio.get_running_loop().create_future())
    _handovers(agent)[set_id] = handover
    log("offhost.handover", set=str(set_id), proxy=proxy, lease_s=lease_s, backup_session=params.backup_session)
    succeeded = handed_off = False
    try:
        await context.progress("handover")
        inject("offhost.handover")
        proxy_params = ProxyParams(
            set_id=set_id, source=agent.config.host, repo=params.repo, lease_s=lease_s, engine=params.engine
        )
        job_id = uuid.uuid5(_JOB_NAMESPACE, str(set_id))
        async with AgentClient.for_peer(agent.config, agent.home, proxy, timeout_s=5.0) as client:
            await client.submit_job(PROXY_KIND, proxy_params.model_dump(mode="json"), job_id=job_id)
            if not params.backup_session:
                # data mining: end this host's session now, without BackupComplete (not a backup: writers must
                # not truncate their logs); the persistent set stays for the proxy, and a watcher keeps the
                # handover (route authorisation, heartbeats, the report) until the proxy reports or the lease ends
                await context.progress("session-end")
                await context.run_blocking(
                    functools.partial(_end_session, agent, set_id, succeeded=False, keep_set=True)
                )
                _watch(agent, _watch_handover(agent, set_id, handover, job_id, lease_s))
                succeeded = handed_off = True
                log("offhost.handed-off", set=str(set_id), proxy=proxy)
                return {
                    "set_id": str(set_id),
                    "proxy": proxy,
                    "backup_session": False,
                    "proxy_job_id": str(job_id),
                    "freeze_window_ms": snapshot_set.freeze_window_ms,
                    "commit_ms": snapshot_set.commit_ms,
                    "location": str(Path(params.repo)),
                }
            report = await _await_report(context, agent, handover, client, job_id)
        if not report.succeeded:
            raise _error(report.error, f"the proxy {proxy} failed: {report.message}")
        await context.progress("backup-complete")
        await context.run_blocking(functools.partial(_end_session, agent, set_id, succeeded=True))
        succeeded = True
        log("offhost.complete", set=str(set_id), proxy=proxy)
        return {
            "set_id": str(set_id),
            "proxy": proxy,
            "freeze_window_ms": snapshot_set.freeze_window_ms,
            "commit_ms": snapshot_set.commit_ms,
            "import_ms": report.import_ms,
            "backup_s": report.backup_s,
            "bytes": report.bytes,
            "files": report.files,
            "location": report.location,
            "components": [c.model_dump(mode="json") for c in report.components],
            "backup_session": True,
        }
    finally:
        if not succeeded:
            handover.report.cancel()
            settle = lease_s + STUCK_WORK_GRACE_S + 30.0
            await context.run_blocking(functools.partial(_end_session, agent, set_id, succeeded=False, settle_s=settle))
            log("offhost.failed", level=30, set=str(set_id), proxy=proxy)
        if not handed_off:  # else the watcher owns the handover and the lease
            del _handovers(agent)[set_id]
            await agent.db.call(lambda c: c.release_lease(lease.id))


_WATCHERS: weakref.WeakKeyDictionary[Agent, set[asyncio.Task[None]]] = weakref.WeakKeyDictionary()


def _watch(agent: Agent, work: Coroutine[Any, Any, None]) -> None:
    tasks = _WATCHERS.setdefault(agent, set())
    task = asyncio.get_running_loop().create_task(work)
    tasks.add(task)  # a strong reference until it ends
    task.add_done_callback(tasks.discard)


async def _watch_handover(
    agent: Agent, set_id: uuid.UUID, handover: _Handover, job_id: uuid.UUID, lease_s: float
) -> None:
    """Data mining, after systemOne's job ended: keep the handover until the proxy reports (accepted, never a
    BackupComplete: the session ended already) or its lease runs out, then delete the persistent set here
    explicitly and release the lease. An agent stopped meanwhile leaves the lease to `reconcile`."""
    outcome = "reported"
    try:
        async with AgentClient.for_peer(agent.config, agent.home, handover.proxy, timeout_s=5.0) as client:
            report = await _await_report(None, agent, handover, client, job_id)
        if not report.succeeded:
            outcome = report.error or "failed"
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        outcome = _describe(exc)[0]
    handover.report.cancel()  # later heartbeats and reports: 410 / not accepted
    settle = 0.0 if outcome == "reported" else lease_s + STUCK_WORK_GRACE_S + 30.0
    try:
        await asyncio.to_thread(functools.partial(_end_session, agent, set_id, succeeded=False, settle_s=settle))
    finally:
        _handovers(agent).pop(set_id, None)
        await agent.db.call(lambda c: c.release_lease(handover.lease_id))
        log("offhost.data-mining-done", level=20 if outcome == "reported" else 30, set=str(set_id), outcome=outcome)


async def _await_report(
    context: JobContext | None, agent: Agent, handover: _Handover, client: AgentClient, job_id: uuid.UUID
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
                raise _error(
                    error.error if error else None, error.message if error else "the proxy job ended without a report"
                )
        await asyncio.wait({handover.report}, timeout=POLL_S)


async def authorize_offhost(peer: PeerIdentity, params: OffhostParams, agent: Agent) -> None:
    """Only this host's own operator (its certificate) starts an off-host backup of its volumes."""
    if not same_host(peer.host, agent.config.host):
        raise AccessDenied(f"an off-host backup of {agent.config.host} is started with its own certificate, not {peer}")


# -- the proxy: the job ------------------------------------------------------------------------------------------


async def authorize_proxy(peer: PeerIdentity, params: ProxyParams, agent: Agent) -> None:
    """Only the production host a set comes from hands it over."""
    if not same_host(peer.host, params.source):
        raise AccessDenied(f"{peer} may not hand over a set of {params.source}")
    if agent.config.peer(params.source).role is not Role.PRODUCTION:
        raise AccessDenied(f"{params.source} is not a production peer of this agent")


def _parse_documents(body: DocumentsBody, set_id: uuid.UUID) -> SetDocuments:
    bcd = read_document(body.bcd.encode(), max_bytes=MAX_DOCUMENT_BYTES)
    if not isinstance(bcd, BackupComponents) or bcd.snapshot_set.set_id != set_id:
        raise DocumentError(f"the documents served for set {set_id} do not describe it")
    writers: list[WriterMetadata] = []
    for text in body.writers:
        wmd = read_document(text.encode(), max_bytes=MAX_DOCUMENT_BYTES)
        if not isinstance(wmd, WriterMetadata):
            raise DocumentError(f"a writer document of set {set_id} is not a writer metadata document")
        writers.append(wmd)
    return SetDocuments(bcd, tuple(writers))


class _ProxyWork:
    """The blocking part of `proxy-backup`: import, expose, back up, verify, unexpose, delete. The engine runs in a
    child process (`engine_process`): stopped, and killed if it is stuck, when the lease is lost or the job is
    cancelled, so that it cannot keep the exposed copy busy (open files) once the proxy must let go of it."""

    def __init__(self, context: JobContext, params: ProxyParams) -> None:
        self.context = context
        self.params = params
        self.host = _host(context.agent)
        self.stop = threading.Event()  # the lease was lost or the job cancelled: the backup gives up

    def run(self, documents: SetDocuments, body: DocumentsBody) -> CompletionReport:
        context, set_id = self.context, self.params.set_id
        context.progress_threadsafe("import")
        started = time.monotonic()
        lifecycle.import_snapshot_set(self.host, documents.bcd, cluster_check=True)
        import_ms = (time.monotonic() - started) * 1000
        self._check()
        context.progress_threadsafe("expose")
        lifecycle.expose(self.host, set_id)
        context.progress_threadsafe("backup")
        request = engine_process.EngineRequest(
            "backup", self.params.engine, self.params.repo, set_id, body.bcd, tuple(body.writers)
        )
        result = engine_process.backup(
            request,
            mapper=lambda original: Path(lifecycle.map_path(self.host, set_id, original)),
            progress=self._progress,
            check=self._check,
            grace_s=STUCK_WORK_GRACE_S,
        )
        self._check()
        context.progress_threadsafe("verify")
        inject("proxy.verify")
        verify = engine_process.EngineRequest("verify", self.params.engine, self.params.repo, set_id)
        verified = engine_process.verify(verify, check=self._check, grace_s=STUCK_WORK_GRACE_S)
        if not verified.intact:
            raise BadState(f"the backup of set {set_id} does not verify: {verified.problems[:3]}")
        context.progress_threadsafe("cleanup")
        self.release()
        return CompletionReport(
            succeeded=True,
            components=[
                ComponentReport(
                    writer_id=c.writer_id, component=c.component, files=c.files, bytes=c.bytes, digest=c.digest
                )
                for c in result.components
            ],
            import_ms=import_ms,
            backup_s=result.duration_s,
            bytes=result.bytes,
            files=result.files,
            location=result.location,
        )

    def _check(self) -> None:
        if self.stop.is_set() or self.context.cancel_requested:
            raise LeaseExpired(f"set {self.params.set_id}: the lease was lost or the job cancelled; giving up")

    def _progress(self, p: Progress) -> None:
        self._check()
        fraction = p.bytes / p.total_bytes if p.total_bytes else None
        self.context.progress_threadsafe(p.phase.value, fraction=fraction, bytes_done=p.bytes, files_done=p.files)

    def release(self) -> bool:
        return release_imported(self.host, self.params.set_id)


def release_imported(host: Host, set_id: uuid.UUID) -> bool:
    """Unexpose and delete an imported set if this host still holds it; True if there was something to do."""
    try:
        known = host.catalog.get_set(set_id)
    except ObjectNotFound:
        return False
    if Attr.IMPORTED not in known.attrs or known.state in (SetState.DELETED, SetState.ABORTED):
        return False
    if known.state is SetState.IMPORTING:  # its import died half-way: rolled back (if the import lock is free)
        return set_id in reconcile_quick(host)
    lifecycle.unexpose(host, set_id)
    lifecycle.delete(host, set_id)
    return True


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


async def _report(client: AgentClient, params: ProxyParams, report: CompletionReport) -> bool:
    """Send the report, retrying for at most the lease's duration; False if systemOne no longer takes it."""
    deadline = time.monotonic() + params.lease_s
    while True:
        try:
            ack = await client.call("POST", f"/v1/sets/{params.set_id}/completion", body=report, response=CompletionAck)
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


def _in_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """Run blocking work on a daemon thread; unlike `run_blocking`, the job may abandon it (a stuck engine must
    not keep the proxy from cleaning up when its lease is lost)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def target() -> None:
        try:
            value = fn(*args)
        except BaseException as exc:
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop is gone
                loop.call_soon_threadsafe(settle, lambda: future.set_exception(error))
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, lambda: future.set_result(value))

    threading.Thread(target=target, name="proxy-backup", daemon=True).start()
    return future


async def run_proxy(context: JobContext, params: ProxyParams) -> JsonValue:
    agent = context.agent
    inject("proxy.start")
    work = _ProxyWork(context, params)
    lost, why = asyncio.Event(), list[str]()
    async with AgentClient.for_peer(agent.config, agent.home, params.source, timeout_s=10.0) as client:
        await context.progress("fetch")
        body = await client.call("GET", f"/v1/sets/{params.set_id}/documents", response=DocumentsBody)
        documents = _parse_documents(body, params.set_id)
        heartbeat = asyncio.create_task(_heartbeat(client, params, lost, why))
        report: CompletionReport | None = None
        failure: BaseException | None = None
        task = _in_thread(work.run, documents, body)
        try:
            waiter = asyncio.ensure_future(lost.wait())
            racing: set[asyncio.Future[Any]] = {task, waiter}
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not task.done():  # the lease was lost first: stop the work, then clean up
                raise LeaseExpired(f"set {params.set_id}: {why[0] if why else 'the lease was lost'}")
            report = task.result()
        except BaseException as exc:
            failure = exc
            code, message = _describe(exc)
            report = CompletionReport(succeeded=False, error=code, message=message)
            await context.progress("cleanup")
            if not task.done():  # stop the engine (killed if stuck: its open files keep the copy busy), then clean up
                work.stop.set()
                await _settled(task, STOP_WAIT_S)
            try:
                released = await asyncio.to_thread(work.release)
            except SnapportError as cleanup:  # left to the agent's next start (`reconcile`) and `snapport doctor`
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
        if not lost.is_set() and report is not None:
            accepted = await _report(client, params, report)
            if not accepted and failure is None:
                raise LeaseExpired(f"{params.source} no longer waited for set {params.set_id}; the backup is kept")
        if failure is not None:
            raise failure
    assert report is not None
    return {"set_id": str(params.set_id), "files": report.files, "bytes": report.bytes, "location": report.location}


# -- reconciliation at start -------------------------------------------------------------------------------------


async def reconcile(agent: Agent, interrupted: Sequence[JobRecord]) -> None:
    """After a crash: the proxy unexposes and deletes the sets its lost `proxy-backup` jobs held and reports their
    failure (and releases what a failed job could not); the production host ends every session whose lease it
    still keeps, and of every set an off-host job made but never handed over (no BackupComplete)."""
    import json  # noqa: PLC0415

    for job in interrupted:
        if job.kind != PROXY_KIND:
            continue
        params = ProxyParams.model_validate(json.loads(job.params_json))
        await _release_at_start(agent, params.set_id, job=str(job.id))
        asyncio.get_running_loop().create_task(_report_lost(agent, params))
    for set_id in await agent.db.call(_still_held):
        await _release_at_start(agent, set_id)
    leases = await agent.db.call(lambda c: [x for x in c.leases() if x.released_at is None])
    for lease in leases:
        await asyncio.to_thread(functools.partial(_end_session, agent, lease.set_id, succeeded=False))
        await agent.db.call(functools.partial(_release_lease, lease_id=lease.id))
        log("offhost.reconciled", set=str(lease.set_id), proxy=lease.holder)
    for set_id in await agent.db.call(_unhanded_sets):
        await asyncio.to_thread(functools.partial(_end_session, agent, set_id, succeeded=False))
        log("offhost.reconciled", set=str(set_id), proxy=None)


async def _release_at_start(agent: Agent, set_id: uuid.UUID, job: str | None = None) -> None:
    """`release_imported` at the agent's start; a failure is logged, never keeps the agent from starting (what
    is left is `snapport doctor`'s)."""
    try:
        released = await asyncio.to_thread(release_imported, _host(agent), set_id)
    except SnapportError as exc:
        log("proxy.reconcile-failed", level=40, set=str(set_id), job=job, error=exc.code, message=exc.message)
        return
    log("proxy.reconciled", set=str(set_id), job=job, released=released)


def _still_held(catalog: Catalog) -> list[uuid.UUID]:
    """The sets this proxy imported for a `proxy-backup` job and still holds, although no job runs (at the start of
    the agent): their job failed without releasing them (its clean-up failed too)."""
    import json  # noqa: PLC0415

    jobs = {uuid.UUID(json.loads(j.params_json)["set_id"]) for j in catalog.list_jobs(kind=PROXY_KIND)}
    return [
        s.id
        for s in catalog.list_sets({SetState.IMPORTING, SetState.CREATED, SetState.EXPOSED, SetState.DELETING})
        if s.id in jobs and Attr.IMPORTED in s.attrs
    ]


def _unhanded_sets(catalog: Catalog) -> list[uuid.UUID]:
    """The sets an `offhost-backup` job made here and that no live lease hands to a proxy: their job died before
    the handover (or after its end) and, with no agent job running yet, nobody else will end their session."""
    leased = {lease.set_id for lease in catalog.leases() if lease.released_at is None}
    return [
        s.id
        for s in catalog.list_sets({SetState.CREATED, SetState.EXPOSED})
        if s.description in OFFHOST_DESCRIPTIONS and Attr.IMPORTED not in s.attrs and s.id not in leased
    ]


def _release_lease(catalog: Catalog, *, lease_id: uuid.UUID) -> None:
    catalog.release_lease(lease_id)


async def _report_lost(agent: Agent, params: ProxyParams) -> None:
    report = CompletionReport(succeeded=False, error="JOB_INTERRUPTED", message="the proxy's agent restarted")
    with contextlib.suppress(SnapportError):
        async with AgentClient.for_peer(agent.config, agent.home, params.source, timeout_s=10.0) as client:
            await _report(client, params, report)


# -- registration ------------------------------------------------------------------------------------------------

OFFHOST_KINDS: tuple[JobKind[Any], ...] = (
    JobKind(
        OFFHOST_KIND,
        OffhostParams,
        run_offhost,
        "Snapshot volumes transportably and have a proxy back them up; BackupComplete after its success",
        roles=frozenset({Role.PRODUCTION}),
        authorize=authorize_offhost,
    ),
    JobKind(
        PROXY_KIND,
        ProxyParams,
        run_proxy,
        "Import, expose, back up, verify and delete a production host's set, then report to it",
        roles=frozenset({Role.PRODUCTION}),
        authorize=authorize_proxy,
    ),
)
