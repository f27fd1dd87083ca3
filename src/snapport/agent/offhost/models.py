"""The two-host protocol's payloads: the jobs' parameters and results, and what the routes take and return."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from snapport.coordinator.offhost import ProxyOutcome
from snapport.coordinator.session import CreatedSet
from snapport.engines import DEFAULT_ENGINE, ENGINES


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


STALL_DEFAULT_S = 300.0
_STALL = Field(
    STALL_DEFAULT_S,
    gt=0,
    le=86400,
    description="the proxy stops a backup whose progress stands still this long (ENGINE_STALLED)",
)


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
    stall_s: float = _STALL
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
    stall_s: float = _STALL

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

    @classmethod
    def of(cls, outcome: ProxyOutcome) -> CompletionReport:
        result = outcome.result
        return cls(
            succeeded=True,
            components=[
                ComponentReport(
                    writer_id=c.writer_id, component=c.component, files=c.files, bytes=c.bytes, digest=c.digest
                )
                for c in result.components
            ],
            import_ms=outcome.import_ms,
            backup_s=result.duration_s,
            bytes=result.bytes,
            files=result.files,
            location=result.location,
        )

    @classmethod
    def failed(cls, code: str, message: str) -> CompletionReport:
        return cls(succeeded=False, error=code, message=message[:4096])


class CompletionAck(_Model):
    accepted: bool = Field(description="false: the set's outcome was already decided (e.g. its lease ran out)")


class OffhostResult(_Model):
    """A finished `offhost-backup` job's result: the set, backed up by the proxy, BackupComplete fired."""

    set_id: uuid.UUID
    proxy: str
    backup_session: Literal[True] = True
    freeze_window_ms: float | None
    commit_ms: float | None
    import_ms: float | None
    backup_s: float | None
    bytes: int
    files: int
    location: str
    components: list[ComponentReport]

    @classmethod
    def of(cls, created: CreatedSet, proxy: str, report: CompletionReport) -> OffhostResult:
        return cls(
            set_id=created.snapshot_set.id,
            proxy=proxy,
            freeze_window_ms=created.snapshot_set.freeze_window_ms,
            commit_ms=created.snapshot_set.commit_ms,
            import_ms=report.import_ms,
            backup_s=report.backup_s,
            bytes=report.bytes,
            files=report.files,
            location=report.location,
            components=report.components,
        )


class DataMiningResult(_Model):
    """A finished data-mining `offhost-backup` job's result: the set handed over, the session ended."""

    set_id: uuid.UUID
    proxy: str
    backup_session: Literal[False] = False
    proxy_job_id: uuid.UUID
    freeze_window_ms: float | None
    commit_ms: float | None
    location: str


class ProxyResult(_Model):
    """A finished `proxy-backup` job's result."""

    set_id: uuid.UUID
    files: int
    bytes: int
    location: str
