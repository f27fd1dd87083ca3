"""An agent's jobs (`jobs`): long operations with a state, progress, and a result or an error."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

from sqlalchemy import Connection, RowMapping, insert, select, update

from snapport.catalog import schema as t
from snapport.catalog.clock import utc_now
from snapport.catalog.core import KEEP, RACE_RETRIES, CatalogCore, Keep, one_row
from snapport.catalog.records import JobProgress, JobRecord
from snapport.errors import BadState, CatalogError
from snapport.model import JobState, check_job_transition


class JobStore(CatalogCore):
    """Jobs: added queued, moved along `model.job_state`'s life cycle by conditional updates."""

    def add_job(
        self,
        job_id: uuid.UUID,
        kind: str,
        *,
        params_json: str = "{}",
        requested_by: str | None = None,
        set_id: uuid.UUID | None = None,
    ) -> JobRecord:
        """Record a new job, queued; `CatalogError` if the id is taken."""
        now = utc_now()
        with self._write() as conn:
            if conn.scalar(select(t.jobs.c.id).where(t.jobs.c.id == str(job_id))):
                raise CatalogError(f"job {job_id} is already in the catalog")
            conn.execute(
                insert(t.jobs).values(
                    id=str(job_id),
                    kind=kind,
                    state=JobState.QUEUED.value,
                    params=params_json,
                    requested_by=requested_by,
                    set_id=None if set_id is None else str(set_id),
                    cancel_requested=False,
                    created_at=now,
                    updated_at=now,
                )
            )
            return _load_job(conn, job_id)

    def update_job(
        self,
        job_id: uuid.UUID,
        *,
        state: JobState | Keep = KEEP,
        progress: JobProgress | Keep = KEEP,
        cancel_requested: bool | Keep = KEEP,
        result_json: str | Keep | None = KEEP,
        error: tuple[str, str] | Keep | None = KEEP,
    ) -> JobRecord:
        """Change a job: move it to `state` (if `check_job_transition` allows it; `BadState` if not), record its
        progress (only while it runs), a cancel request, its result or its error (`(code, message)`); KEEP keeps.

        Moving to running stamps `started_at`, to a final state `finished_at`. The move is a conditional update on
        the state read, so of two processes moving one job only one succeeds.
        """
        values: dict[str, Any] = {}
        if not isinstance(progress, Keep):
            values.update(
                phase=progress.phase,
                fraction=progress.fraction,
                bytes_done=progress.bytes_done,
                files_done=progress.files_done,
            )
        if not isinstance(cancel_requested, Keep):
            values["cancel_requested"] = cancel_requested
        if not isinstance(result_json, Keep):
            values["result"] = result_json
        if not isinstance(error, Keep):
            values["error_code"], values["error_message"] = (None, None) if error is None else error
        for _attempt in range(RACE_RETRIES):
            with self._write() as conn:
                current = _load_job(conn, job_id).state
                changes = dict(values, updated_at=utc_now())
                if not isinstance(state, Keep):
                    try:
                        check_job_transition(current, state)
                    except BadState as exc:
                        raise BadState(f"job {job_id}: {exc.message}") from None
                    changes["state"] = state.value
                    if state is JobState.RUNNING:
                        changes["started_at"] = changes["updated_at"]
                    if state.finished:
                        changes["finished_at"] = changes["updated_at"]
                elif not isinstance(progress, Keep) and current is not JobState.RUNNING:
                    raise BadState(f"job {job_id} is {current.value}; only a running job reports progress")
                moved = conn.execute(
                    update(t.jobs).where(t.jobs.c.id == str(job_id), t.jobs.c.state == current.value).values(changes)
                )
                if moved.rowcount == 1:
                    return _load_job(conn, job_id)
            # Lost a race (PostgreSQL, READ COMMITTED): the state changed between read and update. Read it again.
        raise CatalogError(f"job {job_id} kept changing while updating it; retry")

    def get_job(self, job_id: uuid.UUID) -> JobRecord:
        """The job; `ObjectNotFound` if the catalog has no such job."""
        with self._read() as conn:
            return _load_job(conn, job_id)

    def list_jobs(
        self,
        states: Collection[JobState] | None = None,
        *,
        kind: str | None = None,
        set_id: uuid.UUID | None = None,
        limit: int | None = None,
    ) -> list[JobRecord]:
        """Jobs in the order they were created (the newest `limit` of them, if given), optionally filtered."""
        query = select(t.jobs)
        if states is not None:
            query = query.where(t.jobs.c.state.in_([JobState(s).value for s in states]))
        if kind is not None:
            query = query.where(t.jobs.c.kind == kind)
        if set_id is not None:
            query = query.where(t.jobs.c.set_id == str(set_id))
        query = query.order_by(t.jobs.c.created_at.desc(), t.jobs.c.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._read() as conn:
            return [_job_record(row) for row in reversed(conn.execute(query).mappings().all())]


def _load_job(conn: Connection, job_id: uuid.UUID) -> JobRecord:
    query = select(t.jobs).where(t.jobs.c.id == str(job_id))
    return _job_record(one_row(conn, query, f"no job {job_id} in the catalog"))


def _job_record(row: RowMapping) -> JobRecord:
    return JobRecord(
        id=uuid.UUID(row["id"]),
        kind=row["kind"],
        state=JobState(row["state"]),
        params_json=row["params"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        requested_by=row["requested_by"],
        set_id=None if row["set_id"] is None else uuid.UUID(row["set_id"]),
        progress=JobProgress(
            phase=row["phase"], fraction=row["fraction"], bytes_done=row["bytes_done"], files_done=row["files_done"]
        ),
        cancel_requested=bool(row["cancel_requested"]),
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        result_json=row["result"],
        error_code=row["error_code"],
        error_message=row["error_message"],
    )
