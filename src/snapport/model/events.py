"""The kinds of line in a catalog's audit trail: one vocabulary for the catalog, the coordinator and the writers."""

from __future__ import annotations

import enum


class EventKind(enum.StrEnum):
    """What an audit event records. The value is the text stored in the catalog's `events.kind` (stable: old rows
    read the same), so a member is renamed only with a migration of the rows."""

    # The catalog, as it records each change (snapport.catalog).
    SET_ADDED = "set-added"
    SNAPSHOT_ADDED = "snapshot-added"
    TRANSITION = "transition"
    TRANSITION_REFUSED = "transition-refused"
    IMPORTED = "imported"
    EXPOSED = "exposed"
    UNEXPOSED = "unexposed"
    LEASE_GRANTED = "lease-granted"
    LEASE_RELEASED = "lease-released"
    COMPLETED = "completed"
    COMPLETION_REFUSED = "completion-refused"

    # Making a set (coordinator.session, coordinator.discovery).
    WRITER_DISCOVERED = "writer-discovered"  # a registered writer process takes part
    WRITER_STALE = "writer-stale"  # a registered writer that no process serves is left out
    WRITER_EXCLUDED = "writer-excluded"  # a writer left out of the set, with the reason
    ABORT_STEP_FAILED = "abort-step-failed"  # one undo step of a failed create failed; the others went on
    ROLLBACK_INCOMPLETE = "rollback-incomplete"  # a failed create left something behind; the next create retries

    # Deleting and reverting (coordinator.lifecycle).
    CLEANUP_STEP_FAILED = "cleanup-step-failed"
    REVERT_STARTED = "revert-started"
    REVERT_FAILED = "revert-failed"
    REVERTED = "reverted"

    # Restoring (coordinator.restore); the message is a JSON object.
    RESTORE = "restore"
    RESTORE_FAILED = "restore-failed"

    # Crash reconciliation (coordinator.reconcile), about no set in particular.
    RECONCILED = "reconciled"
    RECONCILE_FAILED = "reconcile-failed"

    # Lines a writer asked to keep in the set's log (`Writer.take_event_log`).
    HOOK_OUTPUT = "hook-output"  # a hook script's exit status and output, as JSON
    WRITER_LOG = "writer-log"  # a writer process's line of a kind this snapport does not know: "KIND: message"
