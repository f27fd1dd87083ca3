"""The agent's core API: health, the OpenAPI document, and jobs (list, show, submit, cancel).

The two-host protocol adds its routes beside these (`snapport.agent.registry`).
"""

from __future__ import annotations

from collections.abc import Collection

from aiohttp import web
from pydantic import ValidationError

from snapport import __version__
from snapport.agent.api import Health, JobList, JobQuery, JobRequest, JobsSummary, JobView, PeerView
from snapport.agent.config import describe_validation
from snapport.agent.dispatch import ANY_ROLE, Call, Route
from snapport.agent.openapi import OPENAPI
from snapport.errors import AccessDenied, UsageError


async def health(call: Call) -> Health:
    agent = call.agent
    return Health(
        host=agent.config.host,
        role=agent.config.role,
        version=__version__,
        peer=PeerView.of(call.peer),
        started_at=agent.started_at,
        jobs=JobsSummary(running=agent.jobs.running, queued=agent.jobs.queued, max_jobs=agent.jobs.max_jobs),
        kinds=agent.registry.names(),
    )


async def openapi(call: Call) -> web.StreamResponse:
    return web.json_response(call.request.app[OPENAPI])


async def list_jobs(call: Call) -> JobList:
    query = call.query_as(JobQuery)
    states = None if query.state is None else [query.state]
    jobs = await call.agent.db.call(lambda c: c.list_jobs(states, kind=query.kind, limit=query.limit))
    return JobList(jobs=[JobView.of(job) for job in jobs])


async def get_job(call: Call) -> JobView:
    job_id = call.ids["job_id"]
    return JobView.of(await call.agent.db.call(lambda c: c.get_job(job_id)))


async def submit_job(call: Call) -> JobView:
    request = call.body_as(JobRequest)
    agent = call.agent
    kind = agent.registry.get(request.kind)
    if call.peer.role not in kind.roles:
        who = " or ".join(sorted(r.value for r in kind.roles)) + " hosts" if kind.roles else "the agent itself"
        raise AccessDenied(f"jobs of kind {kind.name} are submitted by {who}; {call.peer} may not")
    try:
        params = kind.params.model_validate(request.params)
    except ValidationError as exc:
        raise UsageError(f"invalid params for {kind.name}: {describe_validation(exc)}") from None
    if kind.authorize is not None:
        await kind.authorize(call.peer, params, agent)
    record = await agent.jobs.submit(kind.name, params, requested_by=call.peer.host, job_id=request.id)
    return JobView.of(record)


async def cancel_job(call: Call) -> JobView:
    return JobView.of(await call.agent.jobs.cancel(call.ids["job_id"]))


async def job_owners(call: Call) -> Collection[str]:
    """Who may cancel a job: the host that submitted it, and this host itself (its operator, with its own
    certificate)."""
    job_id = call.ids["job_id"]
    job = await call.agent.db.call(lambda c: c.get_job(job_id))
    return {call.agent.config.host, *([job.requested_by] if job.requested_by else [])}


CORE_ROUTES: tuple[Route, ...] = (
    Route("GET", "/v1/health", health, "Who this agent is, and who the caller is", response=Health),
    Route("GET", "/v1/openapi.json", openapi, "This API's OpenAPI 3.1 document", tag="meta"),
    Route(
        "GET",
        "/v1/jobs",
        list_jobs,
        "This agent's jobs, oldest first",
        query=JobQuery,
        response=JobList,
        tag="jobs",
    ),
    Route("GET", "/v1/jobs/{job_id}", get_job, "One job", response=JobView, tag="jobs"),
    Route(
        "POST",
        "/v1/jobs",
        submit_job,
        "Submit a job of a registered kind; each kind says which roles may",
        roles=ANY_ROLE,
        body=JobRequest,
        response=JobView,
        status=202,
        tag="jobs",
    ),
    Route(
        "POST",
        "/v1/jobs/{job_id}/cancel",
        cancel_job,
        "Cancel a queued or running job (the host that submitted it, or this host)",
        owners=job_owners,
        response=JobView,
        status=202,
        tag="jobs",
    ),
)
