"""The life cycle of an agent's job: its states and the moves allowed between them (as `state` does for sets)."""

from __future__ import annotations

import enum

from snapport.errors import BadState


class JobState(enum.StrEnum):
    """Where an agent's job is in its life: queued → running → succeeded | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return not _ALLOWED[self]


# A queued job fails without running when its agent stops.
_ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def allowed_job_transitions(state: JobState) -> frozenset[JobState]:
    return _ALLOWED[state]


def check_job_transition(current: JobState, new: JobState) -> None:
    """Raise `BadState` unless a job may move from `current` to `new`."""
    if new not in _ALLOWED[current]:
        allowed = ", ".join(sorted(s.value for s in _ALLOWED[current])) or "nothing (final state)"
        raise BadState(f"a {current.value} job cannot become {new.value}; from {current.value}: {allowed}")
