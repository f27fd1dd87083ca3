"""The job runner: a bounded pool with a FIFO queue, every move recorded in the catalog, cancellation, failures,
retry-safe submission, and what a stop (or an earlier crash) leaves behind."""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid

import pytest
from pydantic import BaseModel, ConfigDict, JsonValue

from snapport.agent.certs import Role
from snapport.agent.jobs import JobContext, JobKind, JobRegistry
from snapport.agent.testing import TEST_KINDS, SleepParams
from snapport.catalog import JobProgress
from snapport.errors import BadState, ObjectNotFound, WriterError
from snapport.model import JobState
from tests.support.agents import run
from tests.unit.agent.conftest import MakeAgent


class Probe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int
    hold_s: float = 0.5
    outcome: str = "ok"  # ok | snapport-error | bug | not-json


class Recorder:
    """A job kind that records the order jobs start in and how many run at once."""

    def __init__(self) -> None:
        self.started: list[int] = []
        self.running = 0
        self.most = 0

    async def run(self, context: JobContext, params: Probe) -> JsonValue:
        self.started.append(params.n)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await context.progress("holding", fraction=0.5)
            await asyncio.sleep(params.hold_s)
        finally:
            self.running -= 1
        if params.outcome == "snapport-error":
            raise WriterError(f"probe {params.n} failed")
        if params.outcome == "bug":
            raise KeyError("oops")
        if params.outcome == "not-json":
            return {"a set": {1, 2}}  # type: ignore[dict-item]
        return {"n": params.n}

    def registry(self) -> JobRegistry:
        return JobRegistry((*TEST_KINDS, JobKind("probe", Probe, self.run, "records", roles=frozenset(Role))))


def test_jobs_run_at_most_max_jobs_at_once_in_the_order_they_came(make_agent: MakeAgent) -> None:
    recorder = Recorder()
    agent = make_agent(max_jobs=2, registry=recorder.registry())

    async def go() -> None:
        jobs = [await agent.jobs.submit("probe", Probe(n=n), requested_by="systemtwo") for n in range(6)]
        assert all(j.state is JobState.QUEUED for j in jobs)
        await asyncio.sleep(0.05)
        assert agent.jobs.running == 2 and agent.jobs.queued >= 2  # (a loaded machine may have finished one)
        listed = [j.state.value[0] for j in await agent.db.call(lambda c: c.list_jobs())]
        assert re.fullmatch("s*rrq+", "".join(listed)), listed  # succeeded, two running, the rest queued
        await _wait_idle(agent)
        done = await agent.db.call(lambda c: c.list_jobs())
        assert [j.state for j in done] == [JobState.SUCCEEDED] * 6
        assert [j.result_json for j in done] == [f'{{"n": {n}}}' for n in range(6)]
        starts = [j.started_at for j in done]
        assert starts == sorted(starts)  # FIFO, as recorded too
        assert done[0].progress == JobProgress(phase="holding", fraction=0.5)

    run(go())
    assert recorder.started == list(range(6))
    assert recorder.most == 2


def test_a_failing_job_records_its_error_by_name(make_agent: MakeAgent) -> None:
    recorder = Recorder()
    agent = make_agent(registry=recorder.registry())

    async def go() -> list[tuple[JobState, str | None]]:
        for n, outcome in enumerate(["snapport-error", "bug", "not-json"]):
            await agent.jobs.submit("probe", Probe(n=n, hold_s=0, outcome=outcome), requested_by=None)
        await _wait_idle(agent)
        return [(j.state, j.error_code) for j in await agent.db.call(lambda c: c.list_jobs())]

    assert run(go()) == [
        (JobState.FAILED, "WRITER_ERROR"),
        (JobState.FAILED, "INTERNAL"),
        (JobState.FAILED, "INTERNAL"),
    ]


def test_cancelling_queued_running_and_blocking_jobs(make_agent: MakeAgent) -> None:
    agent = make_agent(max_jobs=2)

    async def go() -> None:
        blocking = await agent.jobs.submit("test.sleep", SleepParams(seconds=20, blocking=True), requested_by="a")
        sleeping = await agent.jobs.submit("test.sleep", SleepParams(seconds=20), requested_by="a")
        queued = await agent.jobs.submit("test.sleep", SleepParams(seconds=20), requested_by="a")
        await asyncio.sleep(0.2)
        cancelled = await agent.jobs.cancel(queued.id)
        assert cancelled.state is JobState.CANCELLED and cancelled.started_at is None
        assert (await agent.jobs.cancel(queued.id)).state is JobState.CANCELLED  # again: the same answer
        for job in (sleeping, blocking):
            asked = await agent.jobs.cancel(job.id)
            assert asked.cancel_requested
        started = time.monotonic()
        await _wait_idle(agent)
        assert time.monotonic() - started < 2  # the blocking job saw `cancel_requested` and returned
        states = {j.id: j.state for j in await agent.db.call(lambda c: c.list_jobs())}
        assert states == {
            blocking.id: JobState.CANCELLED,
            sleeping.id: JobState.CANCELLED,
            queued.id: JobState.CANCELLED,
        }
        finished = await agent.jobs.submit("test.sleep", SleepParams(seconds=0), requested_by="a")
        await _wait_idle(agent)
        with pytest.raises(BadState, match="succeeded"):
            await agent.jobs.cancel(finished.id)
        with pytest.raises(ObjectNotFound):
            await agent.jobs.cancel(uuid.uuid4())

    run(go())


def test_blocking_code_reports_progress_from_its_thread(make_agent: MakeAgent) -> None:
    agent = make_agent()

    async def go() -> JobProgress:
        job = await agent.jobs.submit("test.sleep", SleepParams(seconds=0.3, blocking=True), requested_by=None)
        await _wait_idle(agent)
        return (await agent.db.call(lambda c: c.get_job(job.id))).progress

    assert run(go()) == JobProgress(phase="sleeping", fraction=1.0)


def test_a_submission_with_an_id_is_safe_to_retry(make_agent: MakeAgent) -> None:
    agent = make_agent()
    job_id = uuid.uuid4()

    async def go() -> None:
        first = await agent.jobs.submit("test.sleep", SleepParams(seconds=0), requested_by="a", job_id=job_id)
        again = await agent.jobs.submit("test.sleep", SleepParams(seconds=0), requested_by="a", job_id=job_id)
        assert again.id == first.id == job_id
        with pytest.raises(BadState, match="another job"):
            await agent.jobs.submit("test.sleep", SleepParams(seconds=1), requested_by="a", job_id=job_id)
        with pytest.raises(BadState, match="another job"):
            await agent.jobs.submit("test.sleep", SleepParams(seconds=0), requested_by="b", job_id=job_id)
        await _wait_idle(agent)
        assert len(await agent.db.call(lambda c: c.list_jobs())) == 1

    run(go())


def test_stopping_interrupts_queued_and_running_jobs_and_gives_up_on_stuck_ones(make_agent: MakeAgent) -> None:
    release = threading.Event()

    class Stuck(BaseModel):
        model_config = ConfigDict(extra="forbid")

    async def stuck(context: JobContext, params: Stuck) -> JsonValue:
        await context.run_blocking(release.wait, 30)  # ignores cancel_requested
        return None

    registry = JobRegistry((*TEST_KINDS, JobKind("stuck", Stuck, stuck, "never ends on its own")))
    agent = make_agent(max_jobs=2, registry=registry)

    async def go() -> None:
        stuck_job = await agent.jobs.submit("stuck", Stuck(), requested_by=None)
        sleeping = await agent.jobs.submit("test.sleep", SleepParams(seconds=20), requested_by=None)
        queued = await agent.jobs.submit("test.sleep", SleepParams(seconds=20), requested_by=None)
        await asyncio.sleep(0.2)
        started = time.monotonic()
        await agent.jobs.shutdown(grace_s=0.5)
        assert time.monotonic() - started < 2
        jobs = {j.id: j for j in await agent.db.call(lambda c: c.list_jobs())}
        for job in (stuck_job, sleeping, queued):
            assert (jobs[job.id].state, jobs[job.id].error_code) == (JobState.FAILED, "JOB_INTERRUPTED")
        assert "did not end within 0.5 s" in (jobs[stuck_job.id].error_message or "")
        assert jobs[queued.id].started_at is None
        with pytest.raises(BadState, match="stopping"):
            await agent.jobs.submit("test.sleep", SleepParams(seconds=0), requested_by=None)

    try:
        run(go())
    finally:
        release.set()


def test_a_new_agent_marks_what_a_dead_one_left_as_interrupted(make_agent: MakeAgent) -> None:
    agent = make_agent()
    catalog = agent.catalog
    left_running = catalog.add_job(uuid.uuid4(), "test.sleep").id
    catalog.update_job(left_running, state=JobState.RUNNING)
    left_queued = catalog.add_job(uuid.uuid4(), "test.sleep").id
    done = catalog.add_job(uuid.uuid4(), "test.sleep").id
    catalog.update_job(done, state=JobState.CANCELLED)

    ended = run(agent.jobs.recover())
    assert {j.id for j in ended} == {left_running, left_queued}
    for job_id in (left_running, left_queued):
        assert (catalog.get_job(job_id).state, catalog.get_job(job_id).error_code) == (
            JobState.FAILED,
            "JOB_INTERRUPTED",
        )
    assert catalog.get_job(done).state is JobState.CANCELLED


def test_job_kinds_must_refuse_unknown_parameters() -> None:
    class Loose(BaseModel):
        n: int

    async def nothing(context: JobContext, params: Loose) -> JsonValue:
        return None

    with pytest.raises(ValueError, match="refuse unknown fields"):
        JobKind("loose", Loose, nothing, "x")
    with pytest.raises(ValueError, match="twice"):
        JobRegistry((*TEST_KINDS, *TEST_KINDS))
    with pytest.raises(ObjectNotFound):
        JobRegistry().get("test.sleep")


async def _wait_idle(agent: object, timeout_s: float = 10) -> None:
    jobs = agent.jobs  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout_s
    while jobs.running or jobs.queued:
        assert time.monotonic() < deadline, "jobs did not finish"
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.05)  # let the last final state reach the catalog
