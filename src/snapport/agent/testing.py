"""TEST ONLY: job kinds for the agent's own tests, registered only when the agent starts with
`SNAPPORT_TEST_JOBS=1` (`snapport.agent.registry.job_kinds`). Never part of a production agent's API.

`test.sleep` sleeps, reporting progress, then succeeds (or fails, if asked); with `blocking` it sleeps in a thread
through `run_blocking`, to exercise cooperative cancellation. Production hosts may submit it, proxies may not (so
the tests can check a kind's role table).
"""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from snapport.agent.certs import Role
from snapport.agent.jobs import JobContext, JobKind
from snapport.errors import WriterError

STEP_S = 0.05


class SleepParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seconds: float = Field(ge=0, le=60)
    fail: bool = False
    blocking: bool = False
    label: str = Field("", max_length=64)


async def sleep(context: JobContext, params: SleepParams) -> JsonValue:
    await context.progress("sleeping", fraction=0.0)
    if params.blocking:
        await context.run_blocking(_sleep_blocking, context, params.seconds)
    else:
        steps = max(1, round(params.seconds / STEP_S))
        for step in range(steps):
            await asyncio.sleep(params.seconds / steps)
            await context.progress(fraction=(step + 1) / steps, files_done=step + 1)
    if params.fail:
        raise WriterError(f"test job {params.label or context.id} failed as asked")
    return {"slept_s": params.seconds, "label": params.label}


def _sleep_blocking(context: JobContext, seconds: float) -> None:
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        context.raise_if_cancelled()
        context.progress_threadsafe(fraction=elapsed / seconds)
        time.sleep(STEP_S)
    context.progress_threadsafe(fraction=1.0)


TEST_KINDS: tuple[JobKind[SleepParams], ...] = (
    JobKind(
        "test.sleep",
        SleepParams,
        sleep,
        "TEST ONLY: sleep, reporting progress",
        roles=frozenset({Role.PRODUCTION}),
    ),
)
