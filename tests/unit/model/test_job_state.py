"""The job life cycle: queued → running → succeeded | failed | cancelled, and nothing out of a final state."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snapport.errors import BadState
from snapport.model import JobState, allowed_job_transitions, check_job_transition


def test_the_paths_a_job_may_take() -> None:
    for path in (
        [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED],
        [JobState.QUEUED, JobState.RUNNING, JobState.FAILED],
        [JobState.QUEUED, JobState.RUNNING, JobState.CANCELLED],
        [JobState.QUEUED, JobState.CANCELLED],
        [JobState.QUEUED, JobState.FAILED],  # its agent stopped before it ran
    ):
        for current, new in itertools.pairwise(path):
            check_job_transition(current, new)


def test_finished_means_final() -> None:
    assert {s for s in JobState if s.finished} == {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    assert all(not allowed_job_transitions(s) for s in JobState if s.finished)


@given(st.sampled_from(JobState), st.sampled_from(JobState))
def test_the_transition_table_is_enforced(current: JobState, new: JobState) -> None:
    if new in allowed_job_transitions(current):
        check_job_transition(current, new)
    else:
        with pytest.raises(BadState, match=f"a {current.value} job cannot become {new.value}; from {current.value}"):
            check_job_transition(current, new)


def test_a_queued_job_cannot_skip_running_to_succeed() -> None:
    with pytest.raises(BadState, match=r"from queued: cancelled, failed, running$"):
        check_job_transition(JobState.QUEUED, JobState.SUCCEEDED)
    with pytest.raises(BadState, match="from succeeded: nothing"):
        check_job_transition(JobState.SUCCEEDED, JobState.RUNNING)
