"""Long operations as jobs: registered kinds, a bounded pool, a FIFO queue, progress, cancellation, durable state.

A job's state lives in the catalog (`jobs` table) and every move is recorded before it is acted on: queued when
accepted, running before its code starts, then succeeded, failed or cancelled. At most `max_jobs` run at once; the
rest wait in the order they came. When the agent stops, queued and running jobs end failed with
`JOB_INTERRUPTED`; jobs an earlier agent process left queued or running (it died) are marked so at start.

Cancellation: a queued job is cancelled at once. A running job's coroutine gets `CancelledError` at its next
`await`; blocking code run by `JobContext.run_blocking` is not interrupted: it sees `cancel_requested` and should
return early; the job ends when it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel, JsonValue

from snapport.agent.certs import PeerIdentity, Role
from snapport.agent.log import log
from snapport.catalog import KEEP, Catalog, JobProgress, JobRecord
from snapport.errors import BadState, JobInterrupted, ObjectNotFound, SnapportError
from snapport.model import JobState

if TYPE_CHECKING:
    from snapport.agent.service import Agent

P = TypeVar("P", bound=BaseModel)
T = TypeVar("T")

PROGRESS_INTERVAL_S = 0.5  # at most two progress writes a second per job (a phase change is written at once)


@dataclass(frozen=True)
class JobKind(Generic[P]):
    """A kind of job: its parameters (a pydantic model that refuses unknown fields) and the coroutine that runs it.

    `roles` may submit it through `POST /v1/jobs` (empty: only the agent's own routes submit it, with
    `JobRunner.submit`); `authorize` is the per-object check for such submissions (raise `AccessDenied`).
    The coroutine returns a JSON value (the job's result) or raises: a `SnapportError` fails the job with its
    name, anything else with `INTERNAL`.
    """

    name: str
    params: type[P]
    run: Callable[[JobContext, P], Awaitable[JsonValue]]
    summary: str
    roles: frozenset[Role] = frozenset()
    authorize: Callable[[PeerIdentity, P, Agent], Awaitable[None]] | None = None

    def __post_init__(self) -> None:
        if self.params.model_config.get("extra") != "forbid":
            raise ValueError(f"job kind {self.name}: its parameters model must refuse unknown fields")


class JobRegistry:
    """The job kinds an agent runs, by name (`snapport.agent.registry` builds the agent's)."""

    def __init__(self, kinds: tuple[JobKind[Any], ...] = ()) -> None:
        self._kinds: dict[str, JobKind[Any]] = {}
        for kind in kinds:
            self.register(kind)

    def register(self, kind: JobKind[Any]) -> None:
        if kind.name in self._kinds:
            raise ValueError(f"job kind {kind.name} is registered twice")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> JobKind[Any]:
        try:
            return self._kinds[name]
        except KeyError:
            raise ObjectNotFound(f"this agent runs no job of kind {name!r}") from None

    def __iter__(self) -> Iterator[JobKind[Any]]:
        return iter(self._kinds.values())

    def names(self) -> list[str]:
        return sorted(self._kinds)


class JobContext:
    """What a running job is handed: who asked, progress reporting, cancellation, and the agent."""

    def __init__(self, runner: JobRunner, record: JobRecord) -> None:
        self.id = record.id
        self.kind = record.kind
        self.requested_by = record.requested_by
        self.set_id = record.set_id
        self.agent = runner.agent
        self._loop: asyncio.AbstractEventLoop | None = None  # the agent's, once the job runs
        self._cancel = threading.Event()
        self._started = False
        self._progress = JobProgress()
        self._dirty = False
        self._written_at = 0.0

    @property
    def cancel_requested(self) -> bool:
        """Set when the job is cancelled or the agent stops; blocking code should poll it and return early."""
        return self._cancel.is_set()

    def raise_if_cancelled(self) -> None:
        """For code in `run_blocking`: end the job here if it was cancelled."""
        if self._cancel.is_set():
            raise asyncio.CancelledError

    @property
    def current_progress(self) -> JobProgress:
        return self._progress

    async def progress(
        self,
        phase: str | None = None,
        *,
        fraction: float | None = None,
        bytes_done: int | None = None,
        files_done: int | None = None,
    ) -> None:
        """Report progress; fields not given keep their values, except that a new phase clears the others."""
        old = self._progress
        new_phase = phase is not None and phase != old.phase
        keep = JobProgress(phase=old.phase) if new_phase else old
        self._progress = JobProgress(
            phase=phase if phase is not None else keep.phase,
            fraction=fraction if fraction is not None else keep.fraction,
            bytes_done=bytes_done if bytes_done is not None else keep.bytes_done,
            files_done=files_done if files_done is not None else keep.files_done,
        )
        self._dirty = True
        if new_phase or time.monotonic() - self._written_at >= PROGRESS_INTERVAL_S:
            await self._write_progress()

    async def _write_progress(self) -> None:
        snapshot = self._progress
        self._dirty, self._written_at = False, time.monotonic()
        # BadState: the job was ended meanwhile (the agent is stopping); its progress no longer matters.
        with contextlib.suppress(BadState):
            await self.agent.db.call(lambda c: c.update_job(self.id, progress=snapshot))

    def progress_threadsafe(self, phase: str | None = None, **counts: Any) -> None:
        """`progress` from blocking code in `run_blocking` (does not wait for the write)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            asyncio.run_coroutine_threadsafe(self.progress(phase, **counts), loop)

    def start_blocking(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Start blocking code on a daemon thread of its own; the future settles when it returns or raises. The
        job may stop waiting for it (a stuck engine must not keep a proxy from cleaning up when its lease is lost):
        use `run_blocking` unless the job must be able to abandon the work."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def settle(outcome: Callable[[], None]) -> None:
            if not done.done():
                outcome()

        def target() -> None:
            try:
                value = fn(*args)
            except BaseException as exc:  # handed to the awaiting coroutine, whatever it is
                error = exc
                report = lambda: settle(lambda: done.set_exception(error))  # noqa: E731
            else:
                report = lambda: settle(lambda: done.set_result(value))  # noqa: E731
            # RuntimeError: the loop is gone; the agent stopped and the job was marked interrupted.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(report)

        threading.Thread(target=target, name=f"job-{self.id}", daemon=True).start()
        return done

    async def run_blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking code (the coordinator, file I/O) on its own thread and wait for it.

        If the job is cancelled meanwhile, the code is not interrupted: `cancel_requested` becomes true, the job
        waits for the code to return, then ends cancelled. The thread is a daemon: an agent that must stop does
        not wait for it past its grace period (the job is then marked interrupted).
        """
        done = self.start_blocking(fn, *args)
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            self._cancel.set()
            with contextlib.suppress(BaseException):  # the cancellation is what the job reports
                await done
            raise


@dataclass
class _Entry:
    kind: JobKind[Any]
    params: BaseModel
    context: JobContext
    task: asyncio.Task[None] | None = field(default=None)


class JobRunner:
    """Runs an agent's jobs: at most `max_jobs` at once, the rest queued first come, first served."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.max_jobs = agent.config.max_jobs
        self._queue: deque[uuid.UUID] = deque()
        self._entries: dict[uuid.UUID, _Entry] = {}  # queued and running jobs
        self._running: set[uuid.UUID] = set()
        self._stopping = False
        self._submitting = asyncio.Lock()

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def recover(self) -> list[JobRecord]:
        """Mark failed (`JOB_INTERRUPTED`) every job an earlier agent process left queued or running."""
        left = await self.agent.db.call(lambda c: c.list_jobs([JobState.QUEUED, JobState.RUNNING]))
        ended = []
        for job in left:
            error = JobInterrupted(f"the agent stopped while job {job.id} was {job.state.value}")
            ended.append(await self._end(job.id, JobState.FAILED, error=error))
            log("job.interrupted", job=str(job.id), kind=job.kind, was=job.state.value)
        return ended

    async def submit(
        self,
        kind_name: str,
        params: BaseModel,
        *,
        requested_by: str | None,
        job_id: uuid.UUID | None = None,
        set_id: uuid.UUID | None = None,
    ) -> JobRecord:
        """Record a job queued and start it when a slot is free. With `job_id`, a repeat of the same submission
        returns the recorded job (a client may retry safely); a different job under that id is `BadState`."""
        kind = self.agent.registry.get(kind_name)
        if not isinstance(params, kind.params):
            raise TypeError(f"job kind {kind.name} takes {kind.params.__name__}, not {type(params).__name__}")
        params_json = params.model_dump_json()
        async with self._submitting:
            if job_id is not None:
                known = await self._find(job_id)
                if known is not None:
                    if (known.kind, known.requested_by, known.params_json) != (kind.name, requested_by, params_json):
                        raise BadState(f"job {job_id} exists and is another job; choose a new id")
                    return known
            if self._stopping:
                raise BadState("the agent is stopping; submit the job again once it is back")
            record = await self.agent.db.call(
                lambda c: c.add_job(
                    job_id or uuid.uuid4(), kind.name, params_json=params_json, requested_by=requested_by, set_id=set_id
                )
            )
            self._entries[record.id] = _Entry(kind, params, JobContext(self, record))
            self._queue.append(record.id)
        log("job.queued", job=str(record.id), kind=kind.name, by=requested_by, position=len(self._queue))
        self._pump()
        return record

    async def cancel(self, job_id: uuid.UUID) -> JobRecord:
        """Cancel a job: a queued one ends cancelled now; a running one is asked to stop (`cancel_requested`) and
        ends cancelled when it does. Cancelling a cancelled job returns it; a finished one is `BadState`."""
        entry = self._entries.get(job_id)
        if entry is not None and job_id in self._queue:
            self._queue.remove(job_id)
            del self._entries[job_id]
            log("job.cancelled", job=str(job_id), kind=entry.kind.name, was="queued")
            return await self._end(job_id, JobState.CANCELLED)
        if entry is not None:
            record = await self.agent.db.call(lambda c: c.update_job(job_id, cancel_requested=True))
            self._stop(entry)
            return record
        record = await self.agent.db.call(lambda c: c.get_job(job_id))
        if record.state is JobState.CANCELLED:
            return record
        raise BadState(f"job {job_id} is {record.state.value}; only a queued or running job can be cancelled")

    async def shutdown(self, grace_s: float) -> None:
        """Stop: queued jobs end interrupted at once; running ones are cancelled and given `grace_s` to end, then
        marked interrupted whatever they are doing."""
        self._stopping = True
        while self._queue:
            job_id = self._queue.popleft()
            entry = self._entries.pop(job_id)
            await self._end(job_id, JobState.FAILED, error=JobInterrupted("the agent stopped before the job ran"))
            log("job.failed", job=str(job_id), kind=entry.kind.name, error=JobInterrupted.code, was="queued")
        tasks = [e.task for e in self._entries.values() if e.task is not None]
        for entry in list(self._entries.values()):
            self._stop(entry)
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for job_id in list(self._entries):
            error = JobInterrupted(f"the agent stopped; the job did not end within {grace_s:g} s")
            await self._end(job_id, JobState.FAILED, error=error)
            log("job.abandoned", level=30, job=str(job_id), grace_s=grace_s)

    # -- inside ----------------------------------------------------------------------------------------------------

    def _pump(self) -> None:
        while self._queue and len(self._running) < self.max_jobs and not self._stopping:
            job_id = self._queue.popleft()
            entry = self._entries[job_id]
            self._running.add(job_id)
            entry.task = asyncio.create_task(self._run(entry), name=f"job-{job_id}")

    def _stop(self, entry: _Entry) -> None:
        entry.context._cancel.set()
        # A task that has not taken its first step would die without running its `finally`: such a job sees the
        # flag when it starts instead.
        if entry.task is not None and entry.context._started:
            entry.task.cancel()

    async def _run(self, entry: _Entry) -> None:
        context = entry.context
        context._started = True
        context._loop = asyncio.get_running_loop()
        job = str(context.id)
        state, result = JobState.FAILED, None
        error: SnapportError | None = None
        try:
            try:
                await self.agent.db.call(lambda c: c.update_job(context.id, state=JobState.RUNNING))
                log("job.started", job=job, kind=entry.kind.name)
                if context.cancel_requested:
                    raise asyncio.CancelledError
                value = await entry.kind.run(context, entry.params)
                result = json.dumps(value)
                state = JobState.SUCCEEDED
            except asyncio.CancelledError:
                if self._stopping:
                    error = JobInterrupted("the agent stopped while the job ran")
                else:
                    state = JobState.CANCELLED
            except SnapportError as exc:
                error = exc
            except Exception as exc:
                log("job.crashed", level=40, job=job, kind=entry.kind.name, exc_info=exc)
                error = SnapportError(f"internal error in job {entry.kind.name}: {type(exc).__name__}: {exc}")
            progress = context.current_progress if context._dirty else None
            try:
                record = await self._end(context.id, state, result_json=result, error=error, progress=progress)
            except SnapportError as exc:  # the catalog failed: the next start marks the job interrupted
                log("job.unrecorded", level=40, job=job, kind=entry.kind.name, exc_info=exc)
            else:
                log(f"job.{record.state.value}", job=job, kind=entry.kind.name, error=record.error_code)
        finally:
            self._running.discard(context.id)
            self._entries.pop(context.id, None)
            self._pump()

    async def _end(
        self,
        job_id: uuid.UUID,
        state: JobState,
        *,
        result_json: str | None = None,
        error: SnapportError | None = None,
        progress: JobProgress | None = None,
    ) -> JobRecord:
        """Record a job's final state; if it was ended already (the agent gave up on it), return it as it is."""

        def end(catalog: Catalog) -> JobRecord:
            try:
                return catalog.update_job(
                    job_id,
                    state=state,
                    result_json=result_json,
                    error=None if error is None else (error.code, error.message),
                    progress=KEEP if progress is None else progress,
                )
            except BadState:
                return catalog.get_job(job_id)

        return await self.agent.db.call(end)

    async def _find(self, job_id: uuid.UUID) -> JobRecord | None:
        try:
            return await self.agent.db.call(lambda c: c.get_job(job_id))
        except ObjectNotFound:
            return None
