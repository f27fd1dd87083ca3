"""`GuardedWriter`: deadlines, timing, state and the event log, wrapped around any writer.

Each event runs in a worker thread and is waited for until its `Deadline`; an overrun raises `FreezeTimeout` and
an error raises `WriterError` (a writer's own `FreezeTimeout` stays one), both naming the writer and the event.
Either marks the writer failed at that event, as VSS does (`FAILED_AT_FREEZE`, ...), until the next
`prepare_backup`. Every call leaves an `EventRecord` for the catalog.

An in-process writer cannot be killed: an overrunning call goes on in its (daemon) thread, and the coordinator's
`abort` is what undoes it; a writer must therefore keep its own waits inside the deadline and serialise its
events. An out-of-process writer (`writers/remote.py`) answers at its deadline and, if the event still runs 5 s
later, its process exits and releases whatever it held.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

from snapport.errors import FreezeTimeout, SnapportError, WriterError
from snapport.faults import inject
from snapport.model import WriterMetadata
from snapport.writers.base import (
    Deadline,
    LogEntry,
    RestoreContext,
    Session,
    Tier,
    Writer,
    WriterEvent,
    WriterPhase,
    WriterStatus,
)

T = TypeVar("T")

# The phase a successful event leads to (VSS_WRITER_STATE, folded as `WriterPhase` says); absent: unchanged.
_NEXT_PHASE: dict[WriterEvent, WriterPhase] = {
    WriterEvent.PREPARE_BACKUP: WriterPhase.STABLE,
    WriterEvent.PREPARE_SNAPSHOT: WriterPhase.WAITING_FOR_FREEZE,
    WriterEvent.FREEZE: WriterPhase.FROZEN,
    WriterEvent.POST_SNAPSHOT: WriterPhase.WAITING_FOR_BACKUP_COMPLETE,
    WriterEvent.ABORT: WriterPhase.STABLE,
    WriterEvent.BACKUP_COMPLETE: WriterPhase.STABLE,
    WriterEvent.BACKUP_SHUTDOWN: WriterPhase.STABLE,
}


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event delivered to one writer: when, how long, and how it ended (a row of the catalog's writer events)."""

    writer_id: uuid.UUID
    event: WriterEvent
    started_at: datetime  # UTC
    duration_ms: float
    ok: bool
    error: str | None = None


class GuardedWriter(Writer):
    """Wraps a `Writer`, and is one: same kind, tier, class id, id, instance name and event log."""

    def __init__(self, writer: Writer, *, on_record: Callable[[EventRecord], None] | None = None) -> None:
        self._writer = writer
        self.writer_id = writer.writer_id
        self.instance_name = writer.instance_name
        self._on_record = on_record
        self._lock = threading.Lock()
        self._records: list[EventRecord] = []
        self._taken = 0
        self._identified_class_id: uuid.UUID | None = None
        self._phase = WriterPhase.STABLE
        self._last_error: str | None = None
        self._failed_at: WriterEvent | None = None
        self._last_freeze_ms: float | None = None
        self._freeze_started: float | None = None

    @property
    def kind(self) -> str:
        return self._writer.kind

    @property
    def tier(self) -> Tier:
        return self._writer.tier

    @property
    def inner(self) -> Writer:
        return self._writer

    @property
    def name(self) -> str:
        return f"writer {self.kind} ({self.instance_name})"

    @property
    def status(self) -> WriterStatus:
        with self._lock:
            return WriterStatus(
                writer_id=self.writer_id,
                name=self.kind,
                instance_name=self.instance_name,
                phase=self._phase,
                last_error=self._last_error,
                failed_at=self._failed_at,
                last_freeze_ms=self._last_freeze_ms,
            )

    @property
    def class_id(self) -> uuid.UUID | None:
        """The writer's class id: the one it declares, else (a writer process that did not say) what `identify`
        said."""
        declared = self._writer.class_id
        return declared if declared is not None else self._identified_class_id

    def take_event_log(self) -> list[LogEntry]:
        return self._writer.take_event_log()

    @property
    def records(self) -> tuple[EventRecord, ...]:
        """Every event so far, oldest first."""
        with self._lock:
            return tuple(self._records)

    def take_records(self) -> list[EventRecord]:
        """The events recorded since the last call (for the coordinator to write to the catalog)."""
        with self._lock:
            taken, self._taken = self._records[self._taken :], len(self._records)
            return taken

    # The Writer protocol, each event through `_call`.

    def identify(self, deadline: Deadline) -> WriterMetadata:
        metadata = self._call(WriterEvent.IDENTIFY, deadline, lambda: self._writer.identify(deadline))
        self._identified_class_id = metadata.class_id
        return metadata

    def prepare_backup(self, session: Session, components: tuple[str, ...], deadline: Deadline) -> None:
        self._call(
            WriterEvent.PREPARE_BACKUP, deadline, lambda: self._writer.prepare_backup(session, components, deadline)
        )

    def prepare_snapshot(self, session: Session, deadline: Deadline) -> None:
        self._call(WriterEvent.PREPARE_SNAPSHOT, deadline, lambda: self._writer.prepare_snapshot(session, deadline))

    def freeze(self, session: Session, deadline: Deadline) -> None:
        self._call(WriterEvent.FREEZE, deadline, lambda: self._writer.freeze(session, deadline))

    def thaw(self, session: Session, deadline: Deadline) -> None:
        self._call(WriterEvent.THAW, deadline, lambda: self._writer.thaw(session, deadline))

    def post_snapshot(self, session: Session, deadline: Deadline) -> Mapping[str, str]:
        return self._call(WriterEvent.POST_SNAPSHOT, deadline, lambda: self._writer.post_snapshot(session, deadline))

    def abort(self, session: Session, deadline: Deadline) -> None:
        self._call(WriterEvent.ABORT, deadline, lambda: self._writer.abort(session, deadline))

    def backup_complete(self, session: Session, succeeded: Mapping[str, bool], deadline: Deadline) -> None:
        self._call(
            WriterEvent.BACKUP_COMPLETE, deadline, lambda: self._writer.backup_complete(session, succeeded, deadline)
        )

    def backup_shutdown(self, session: Session, deadline: Deadline) -> None:
        self._call(WriterEvent.BACKUP_SHUTDOWN, deadline, lambda: self._writer.backup_shutdown(session, deadline))

    def pre_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        self._call(WriterEvent.PRE_RESTORE, deadline, lambda: self._writer.pre_restore(restore, deadline))

    def post_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        self._call(WriterEvent.POST_RESTORE, deadline, lambda: self._writer.post_restore(restore, deadline))

    def _call(self, event: WriterEvent, deadline: Deadline, call: Callable[[], T]) -> T:
        budget_s = deadline.remaining()
        started_at = datetime.now(UTC)
        started = time.monotonic()
        result: list[T] = []
        failure: list[BaseException] = []

        def run() -> None:
            try:
                inject(f"writer.{event.value}")  # test-only: as if the writer itself failed, hung or crashed
                result.append(call())
            except BaseException as exc:  # reported to the caller, whatever it is
                failure.append(exc)

        worker = threading.Thread(target=run, name=f"writer-{self.kind}-{event.value}", daemon=True)
        worker.start()
        worker.join(budget_s)
        ended = time.monotonic()
        duration_ms = (ended - started) * 1000

        error: SnapportError | None = None
        cause = failure[0] if failure else None
        if cause is None and not result:  # still running: it goes on in the background (see the module docstring)
            error = FreezeTimeout(f"{self.name} did not finish {event.value} within {budget_s:.3g} s")
        elif cause is not None:
            reason = cause.message if isinstance(cause, SnapportError) else f"{type(cause).__name__}: {cause}"
            wrapper = FreezeTimeout if isinstance(cause, FreezeTimeout) else WriterError
            error = wrapper(f"{self.name} failed at {event.value}: {reason}")

        record = EventRecord(
            self.writer_id, event, started_at, duration_ms, ok=error is None, error=error.message if error else None
        )
        with self._lock:
            self._records.append(record)
            self._update_phase(event, started, ended, error)
        if self._on_record is not None:
            self._on_record(record)
        if error is not None:
            raise error from cause
        return result[0]

    def _update_phase(self, event: WriterEvent, started: float, ended: float, error: SnapportError | None) -> None:
        """Move the status after `event` (call with the lock held)."""
        if event is WriterEvent.FREEZE:
            self._freeze_started = started
        elif event in (WriterEvent.THAW, WriterEvent.ABORT) and self._freeze_started is not None:
            self._last_freeze_ms = (ended - self._freeze_started) * 1000  # from freeze asked to thaw done
            self._freeze_started = None
        if error is not None:
            self._phase, self._failed_at, self._last_error = WriterPhase.FAILED, event, error.message
            return
        if event is WriterEvent.PREPARE_BACKUP:  # a new backup clears an earlier failure
            self._failed_at = self._last_error = None
        elif self._phase is WriterPhase.FAILED:
            return  # sticks until then, so `snapport writers` shows it
        if event is WriterEvent.THAW:
            if self._phase is WriterPhase.FROZEN:
                self._phase = WriterPhase.WAITING_FOR_BACKUP_COMPLETE
        elif event in _NEXT_PHASE:
            self._phase = _NEXT_PHASE[event]

    def __repr__(self) -> str:
        return f"GuardedWriter({self._writer!r})"
