"""The life cycle of a snapshot set: its states and the transitions allowed between them."""

from __future__ import annotations

import enum

from snapport.errors import BadState


class SetState(enum.Enum):
    """Where a snapshot set is in its life (VSS_SNAPSHOT_STATE, folded to what a user can act on)."""

    PREPARING = "preparing"  # started; volumes added, writers gathered and prepared
    SNAPSHOTTING = "snapshotting"  # writers frozen, provider committing: the critical section
    IMPORTING = "importing"  # on an importing host: LUNs being presented
    CREATED = "created"  # the snapshots exist (made here, or imported: see Attr.IMPORTED)
    EXPOSED = "exposed"  # mounted read-only somewhere on this host
    DELETING = "deleting"  # being removed; a crash here is finished by reconciliation
    DELETED = "deleted"  # gone; the record stays for history
    BROKEN = "broken"  # handed over as standalone volumes, no longer a snapshot set
    ABORTED = "aborted"  # creation or import failed; everything it made was rolled back


_ALLOWED: dict[SetState, frozenset[SetState]] = {
    SetState.PREPARING: frozenset({SetState.SNAPSHOTTING, SetState.ABORTED}),
    SetState.SNAPSHOTTING: frozenset({SetState.CREATED, SetState.ABORTED}),
    SetState.IMPORTING: frozenset({SetState.CREATED, SetState.ABORTED}),
    SetState.CREATED: frozenset({SetState.EXPOSED, SetState.DELETING, SetState.BROKEN}),
    SetState.EXPOSED: frozenset({SetState.CREATED, SetState.DELETING}),
    SetState.DELETING: frozenset({SetState.DELETED}),
    SetState.DELETED: frozenset(),
    SetState.BROKEN: frozenset(),
    SetState.ABORTED: frozenset(),
}

INITIAL_STATES = frozenset({SetState.PREPARING, SetState.IMPORTING})
FINAL_STATES = frozenset(state for state, nexts in _ALLOWED.items() if not nexts)


def allowed_transitions(state: SetState) -> frozenset[SetState]:
    return _ALLOWED[state]


def check_transition(current: SetState, new: SetState) -> None:
    """Raise `BadState` unless a set may move from `current` to `new`."""
    if new not in _ALLOWED[current]:
        allowed = ", ".join(sorted(s.value for s in _ALLOWED[current])) or "nothing (final state)"
        raise BadState(f"a set cannot go from {current.value} to {new.value}; from {current.value}: {allowed}")
