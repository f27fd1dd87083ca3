"""Two processes writing one SQLite catalog at once: no errors, no lost updates, exact counts."""

from __future__ import annotations

import json
from pathlib import Path

from snapport.catalog import Catalog
from snapport.model import EventKind, SetState
from tests.unit.catalog.catalog_worker import new_set, outputs, release, workers

ROUNDS = 100  # per process; each round is six write transactions and two reads


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    with Catalog.open(url) as catalog:
        shared = new_set(1)
        catalog.add_set(shared)
        catalog.transition(shared.id, SetState.SNAPSHOTTING)
        catalog.transition(shared.id, SetState.CREATED)

        with workers(
            ("writes", url, "a", str(ROUNDS), str(shared.id)), ("writes", url, "b", str(ROUNDS), str(shared.id))
        ) as procs:
            release(procs)
            results = [json.loads(out) for out in outputs(procs, timeout=90)]

        # Every set each process acknowledged is there, complete and created; nothing else is.
        acknowledged = {set_id for r in results for set_id in r["sets"]}
        assert len(acknowledged) == 2 * ROUNDS
        sets = catalog.list_sets()
        assert {str(s.id) for s in sets} == acknowledged | {str(shared.id)}
        assert all(len(s.snapshots) == 2 for s in sets if s.id != shared.id)
        assert {s.state for s in sets if s.id != shared.id} == {SetState.CREATED}

        # One writer event per round per process, and each process's writer row holds its own last value.
        assert sum(len(catalog.writer_events(s.id)) for s in sets) == 2 * ROUNDS
        assert {(w.writer_id, w.last_freeze_ms) for w in catalog.list_writers()} == {
            ("writer-a", ROUNDS - 1.0),
            ("writer-b", ROUNDS - 1.0),
        }

        # The shared set was toggled created <-> exposed by read-then-transition from both sides. No lost update:
        # every success is one recorded transition, every loss one recorded refusal, and the final state is what
        # the number of successful toggles says.
        toggled = sum(r["toggled"] for r in results)
        refused = sum(r["refused"] for r in results)
        assert toggled + refused == 2 * ROUNDS
        moves = catalog.events(shared.id, kind=EventKind.TRANSITION)
        assert len(moves) == 2 + toggled  # preparing -> snapshotting -> created, then the toggles
        assert len(catalog.events(shared.id, kind=EventKind.TRANSITION_REFUSED)) == refused
        expected = SetState.CREATED if toggled % 2 == 0 else SetState.EXPOSED
        assert catalog.get_set(shared.id).state is expected
        # The toggles alternate: each move starts where the previous one ended.
        toggles = [m.message.split(" (")[0] for m in moves[2:]]
        assert all(t == ("created -> exposed" if i % 2 == 0 else "exposed -> created") for i, t in enumerate(toggles))
