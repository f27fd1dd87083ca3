"""The audit event kinds and set origins are stored as text: their values are pinned, so old rows read the same."""

from __future__ import annotations

from snapport.model import EventKind, SetOrigin

# Every kind a catalog may hold. Renaming one is a migration of the rows, not an edit of the enum.
STORED_KINDS = {
    "set-added", "snapshot-added", "transition", "transition-refused", "imported", "exposed", "unexposed",
    "lease-granted", "lease-released", "completed", "completion-refused",
    "writer-discovered", "writer-stale", "writer-excluded", "abort-step-failed", "rollback-incomplete",
    "cleanup-step-failed", "revert-started", "revert-failed", "reverted",
    "restore", "restore-failed",
    "reconciled", "reconcile-failed",
    "hook-output", "writer-log",
}  # fmt: skip


def test_event_kinds_are_the_stored_texts() -> None:
    assert {kind.value for kind in EventKind} == STORED_KINDS
    assert len(EventKind) == len(STORED_KINDS)  # no two members share a text
    assert f"{EventKind.HOOK_OUTPUT}" == "hook-output"  # a StrEnum: formats as its text


def test_set_origins_are_the_stored_texts() -> None:
    assert {origin.value for origin in SetOrigin} == {"offhost-backup", "offhost-data-mining"}
