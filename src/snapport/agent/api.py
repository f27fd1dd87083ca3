"""The agent's API payloads (pydantic): what requests carry and responses return. Unknown fields are refused.

The OpenAPI document is generated from these models and the route table (`snapport.agent.openapi`).
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from snapport.agent.certs import PeerIdentity, Role
from snapport.catalog import JobRecord
from snapport.errors import SnapportError
from snapport.model import JobState

API_VERSION = "v1"
KIND_PATTERN = r"^[a-z][a-z0-9-]*(\.[a-z][a-z0-9-]*)*$"

JobKindName = Annotated[str, Field(pattern=KIND_PATTERN, max_length=64, description="a registered job kind")]


class ApiModel(BaseModel):
    """Every payload: unknown fields refused, values immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ErrorBody(ApiModel):
    """Every error response, and a failed job's error: a stable name (docs/exit-codes.md), one line, advice."""

    error: str = Field(description="stable error name, e.g. ACCESS_DENIED")
    message: str
    advice: str

    @classmethod
    def of(cls, error: SnapportError) -> ErrorBody:
        return cls(error=error.code, message=error.message, advice=error.advice)


class PeerView(ApiModel):
    host: str
    role: Role

    @classmethod
    def of(cls, peer: PeerIdentity) -> PeerView:
        return cls(host=peer.host, role=peer.role)


class JobsSummary(ApiModel):
    running: int
    queued: int
    max_jobs: int


class Health(ApiModel):
    """Who the agent is, and who it thinks the caller is."""

    host: str
    role: Role
    version: str
    api: str = API_VERSION
    peer: PeerView = Field(description="the caller, as its certificate identifies it")
    started_at: datetime
    jobs: JobsSummary
    kinds: list[str] = Field(description="job kinds this agent runs")


class Progress(ApiModel):
    phase: str | None = None
    fraction: float | None = Field(None, ge=0, le=1)
    bytes_done: int | None = Field(None, ge=0)
    files_done: int | None = Field(None, ge=0)


class JobView(ApiModel):
    """A job as the API shows it."""

    id: uuid.UUID
    kind: str
    state: JobState
    requested_by: str | None = Field(description="the host whose certificate submitted the job")
    set_id: uuid.UUID | None
    params: dict[str, JsonValue]
    progress: Progress
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
    result: JsonValue = Field(None, description="the job's result once it succeeded")
    error: ErrorBody | None = Field(None, description="why it failed")

    @classmethod
    def of(cls, job: JobRecord) -> JobView:
        error = None
        if job.error_code is not None:
            advice = SnapportError.advice_for(job.error_code)
            error = ErrorBody(error=job.error_code, message=job.error_message or "", advice=advice)
        return cls(
            id=job.id,
            kind=job.kind,
            state=job.state,
            requested_by=job.requested_by,
            set_id=job.set_id,
            params=json.loads(job.params_json),
            progress=Progress(
                phase=job.progress.phase,
                fraction=job.progress.fraction,
                bytes_done=job.progress.bytes_done,
                files_done=job.progress.files_done,
            ),
            cancel_requested=job.cancel_requested,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            updated_at=job.updated_at,
            result=None if job.result_json is None else json.loads(job.result_json),
            error=error,
        )


class JobList(ApiModel):
    jobs: list[JobView] = Field(description="oldest first")


class JobQuery(ApiModel):
    """The filters of GET /v1/jobs."""

    state: JobState | None = None
    kind: JobKindName | None = None
    limit: int = Field(100, ge=1, le=1000, description="at most this many, the newest")


class JobRequest(ApiModel):
    """Submit a job. Giving `id` makes the call safe to retry: the same request again returns the same job."""

    kind: JobKindName
    params: dict[str, JsonValue] = Field(default_factory=dict, description="validated by the kind's own model")
    id: uuid.UUID | None = None
