"""The state a writer reports (VSS_WRITER_STATE), as `snapport writers` lists it."""

from __future__ import annotations

import enum


class WriterState(enum.StrEnum):
    """Where a writer is in the backup sequence; the `failed-at-*` states say which step failed (as VSS does).

    A `StrEnum` so that a table prints `stable`, not `WriterState.STABLE`.
    """

    UNKNOWN = "unknown"
    STABLE = "stable"  # idle, or a backup ended cleanly
    WAITING_FOR_FREEZE = "waiting-for-freeze"  # prepared, the freeze has not come yet
    FROZEN = "frozen"  # VSS: waiting-for-thaw; writes are held
    WAITING_FOR_POST_SNAPSHOT = "waiting-for-post-snapshot"
    WAITING_FOR_BACKUP_COMPLETE = "waiting-for-backup-complete"
    FAILED_AT_IDENTIFY = "failed-at-identify"
    FAILED_AT_PREPARE_BACKUP = "failed-at-prepare-backup"
    FAILED_AT_PREPARE_SNAPSHOT = "failed-at-prepare-snapshot"
    FAILED_AT_FREEZE = "failed-at-freeze"
    FAILED_AT_THAW = "failed-at-thaw"
    FAILED_AT_POST_SNAPSHOT = "failed-at-post-snapshot"
    FAILED_AT_BACKUP_COMPLETE = "failed-at-backup-complete"
    FAILED_AT_ABORT = "failed-at-abort"
    FAILED_AT_BACKUP_SHUTDOWN = "failed-at-backup-shutdown"
    FAILED_AT_PRE_RESTORE = "failed-at-pre-restore"
    FAILED_AT_POST_RESTORE = "failed-at-post-restore"

    @property
    def failed(self) -> bool:
        return self.value.startswith("failed-")
