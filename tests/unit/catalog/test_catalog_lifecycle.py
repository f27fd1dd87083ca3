"""The set life cycle against the catalog, as a hypothesis state machine: random transitions, legal or not; the
catalog always agrees with a model of it, refuses exactly the illegal ones, and records every refusal."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from snapport.catalog import Catalog
from snapport.errors import BadState
from snapport.model import INITIAL_STATES, EventKind, SetState, allowed_transitions
from tests.unit.catalog.catalog_worker import new_set


class SetLifeCycle(RuleBasedStateMachine):
    """Each run gets a fresh catalog file in the test's directory."""

    directory: Path
    sets = Bundle("sets")

    def __init__(self) -> None:
        super().__init__()
        self.catalog = Catalog.open(f"sqlite:///{self.directory / uuid.uuid4().hex / 'catalog.db'}")
        self.states: dict[uuid.UUID, SetState] = {}
        self.refusals: dict[uuid.UUID, int] = {}
        self.moves: dict[uuid.UUID, int] = {}

    @initialize(target=sets, state=st.sampled_from(sorted(INITIAL_STATES, key=lambda s: s.value)))
    def first_set(self, state: SetState) -> uuid.UUID:
        return self._add(state)

    @rule(target=sets, state=st.sampled_from(sorted(INITIAL_STATES, key=lambda s: s.value)))
    def add_set(self, state: SetState) -> uuid.UUID:
        return self._add(state)

    def _add(self, state: SetState) -> uuid.UUID:
        s = replace(new_set(1), state=state)
        self.catalog.add_set(s)
        self.states[s.id] = state
        self.refusals[s.id] = 0
        self.moves[s.id] = 0
        return s.id

    @rule(set_id=sets, new_state=st.sampled_from(SetState))
    def transition(self, set_id: uuid.UUID, new_state: SetState) -> None:
        legal = new_state in allowed_transitions(self.states[set_id])
        if legal:
            moved = self.catalog.transition(set_id, new_state, reason="hypothesis")
            assert moved.state is new_state
            self.states[set_id] = new_state
            self.moves[set_id] += 1
        else:
            with pytest.raises(BadState):
                self.catalog.transition(set_id, new_state, reason="hypothesis")
            self.refusals[set_id] += 1

    @rule(set_id=sets)
    def follow_a_legal_path(self, set_id: uuid.UUID) -> None:
        """Take the first allowed step, if any (random targets alone rarely get deep into the life cycle)."""
        nexts = sorted(allowed_transitions(self.states[set_id]), key=lambda s: s.value)
        if nexts:
            self.transition(set_id, nexts[0])

    def teardown(self) -> None:
        self.catalog.close()

    @invariant()
    def catalog_matches_the_model_and_records_every_refusal(self) -> None:
        stored = {s.id: s.state for s in self.catalog.list_sets() if s.id in self.states}
        assert stored == self.states
        refusals = dict.fromkeys(self.states, 0)
        moves = dict.fromkeys(self.states, 0)
        for event in self.catalog.events():
            if event.set_id in self.states and event.kind == EventKind.TRANSITION_REFUSED:
                refusals[event.set_id] += 1
            elif event.set_id in self.states and event.kind == EventKind.TRANSITION:
                moves[event.set_id] += 1
        assert refusals == self.refusals
        assert moves == self.moves


def test_set_life_cycle_state_machine(tmp_path: Path) -> None:
    SetLifeCycle.directory = tmp_path
    run_state_machine_as_test(
        SetLifeCycle,
        settings=settings(
            max_examples=30,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
