"""GuardedWriter: deadlines, failure marking, state transitions and the event log, around a fake writer."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import ClassVar

import pytest

from snapport.errors import FreezeTimeout, WriterError
from snapport.model import Attr, BackupType, Context, EventKind, Volume, WriterMetadata
from snapport.writers.base import Deadline, LogEntry, Session, Tier, Writer, WriterEvent, WriterPhase
from snapport.writers.guarded import EventRecord, GuardedWriter

SESSION = Session(
    uuid.uuid4(), Context.BACKUP, Attr.NONE, BackupType.FULL, (Volume("h", "/srv", "ext4", "u"),), freeze_window_s=5
)
CLASS_ID = uuid.uuid4()


class FakeWriter(Writer):
    """Does nothing, unless told to hang in or raise from one event."""

    kind: ClassVar[str] = "fake"
    tier: ClassVar[Tier] = Tier.APPLICATION
    class_id: uuid.UUID | None = CLASS_ID  # a test may clear it: a writer process that did not say

    def __init__(self) -> None:
        self.writer_id = uuid.uuid4()
        self.instance_name = "inst"
        self.hang_in: WriterEvent | None = None
        self.raise_in: dict[WriterEvent, BaseException] = {}
        self.release = threading.Event()
        self.calls: list[WriterEvent] = []

    def _do(self, event: WriterEvent) -> None:
        self.calls.append(event)
        if event is self.hang_in:
            self.release.wait(30)
        if event in self.raise_in:
            raise self.raise_in[event]

    def identify(self, deadline: Deadline) -> WriterMetadata:
        self._do(WriterEvent.IDENTIFY)
        return WriterMetadata(self.writer_id, CLASS_ID, self.kind, self.instance_name)

    def prepare_backup(self, session: Session, components: tuple[str, ...], deadline: Deadline) -> None:
        self._do(WriterEvent.PREPARE_BACKUP)

    def prepare_snapshot(self, session: Session, deadline: Deadline) -> None:
        self._do(WriterEvent.PREPARE_SNAPSHOT)

    def freeze(self, session: Session, deadline: Deadline) -> None:
        self._do(WriterEvent.FREEZE)

    def thaw(self, session: Session, deadline: Deadline) -> None:
        self._do(WriterEvent.THAW)

    def post_snapshot(self, session: Session, deadline: Deadline) -> Mapping[str, str]:
        self._do(WriterEvent.POST_SNAPSHOT)
        return {"c": "private"}

    def abort(self, session: Session, deadline: Deadline) -> None:
        self._do(WriterEvent.ABORT)

    def backup_complete(self, session: Session, succeeded: Mapping[str, bool], deadline: Deadline) -> None:
        self._do(WriterEvent.BACKUP_COMPLETE)

    def backup_shutdown(self, session: Session, deadline: Deadline) -> None:
        self._do(WriterEvent.BACKUP_SHUTDOWN)

    def pre_restore(self, components: tuple[str, ...], deadline: Deadline) -> None:
        self._do(WriterEvent.PRE_RESTORE)

    def post_restore(self, components: tuple[str, ...], deadline: Deadline) -> None:
        self._do(WriterEvent.POST_RESTORE)


@pytest.fixture
def fake() -> Iterator[FakeWriter]:
    writer = FakeWriter()
    yield writer
    writer.release.set()  # lets a hung worker thread finish


def _d(seconds: float = 5.0) -> Deadline:
    return Deadline.after(seconds)


def test_it_is_a_writer_and_delegates_its_identity(fake: FakeWriter) -> None:
    guarded = GuardedWriter(fake)
    assert isinstance(guarded, Writer)
    assert (guarded.kind, guarded.tier, guarded.writer_id, guarded.instance_name) == (
        "fake",
        Tier.APPLICATION,
        fake.writer_id,
        "inst",
    )
    assert guarded.inner is fake
    assert guarded.class_id == CLASS_ID  # declared: known before identify
    assert guarded.take_event_log() == []  # the protocol's default: nothing to log


def test_a_class_id_the_writer_did_not_declare_comes_from_identify(fake: FakeWriter) -> None:
    fake.class_id = None
    guarded = GuardedWriter(fake)
    assert guarded.class_id is None
    guarded.identify(_d())
    assert guarded.class_id == CLASS_ID


def test_the_event_log_is_the_writers_own_handed_over_once(fake: FakeWriter) -> None:
    lines = [LogEntry(EventKind.HOOK_OUTPUT, "one"), LogEntry(EventKind.HOOK_OUTPUT, "two")]

    def take() -> list[LogEntry]:
        taken = list(lines)
        lines.clear()
        return taken

    fake.take_event_log = take  # type: ignore[method-assign]
    guarded = GuardedWriter(fake)
    assert [e.message for e in guarded.take_event_log()] == ["one", "two"]
    assert guarded.take_event_log() == []


def test_states_follow_the_backup_sequence(fake: FakeWriter) -> None:
    guarded = GuardedWriter(fake)
    assert guarded.status.phase is WriterPhase.STABLE
    guarded.identify(_d())
    guarded.prepare_backup(SESSION, (), _d())
    assert guarded.status.phase is WriterPhase.STABLE
    guarded.prepare_snapshot(SESSION, _d())
    assert guarded.status.phase is WriterPhase.WAITING_FOR_FREEZE
    guarded.freeze(SESSION, _d())
    assert guarded.status.phase is WriterPhase.FROZEN
    time.sleep(0.05)
    guarded.thaw(SESSION, _d())
    assert guarded.status.phase is WriterPhase.WAITING_FOR_BACKUP_COMPLETE
    assert guarded.post_snapshot(SESSION, _d()) == {"c": "private"}
    assert guarded.status.phase is WriterPhase.WAITING_FOR_BACKUP_COMPLETE
    guarded.backup_complete(SESSION, {"c": True}, _d())
    assert guarded.status.phase is WriterPhase.STABLE
    guarded.backup_shutdown(SESSION, _d())
    status = guarded.status
    assert status.phase is WriterPhase.STABLE and status.failed_at is None
    assert status.last_freeze_ms is not None and 50 <= status.last_freeze_ms < 5000
    assert fake.calls == [r.event for r in guarded.records]


def test_thaw_without_a_freeze_changes_nothing(fake: FakeWriter) -> None:
    guarded = GuardedWriter(fake)
    guarded.prepare_snapshot(SESSION, _d())
    guarded.thaw(SESSION, _d())
    assert guarded.status.phase is WriterPhase.WAITING_FOR_FREEZE
    assert guarded.status.last_freeze_ms is None
    guarded.abort(SESSION, _d())
    assert guarded.status.phase is WriterPhase.STABLE


def test_a_writer_that_hangs_in_freeze_times_out_at_its_deadline(fake: FakeWriter) -> None:
    fake.hang_in = WriterEvent.FREEZE
    guarded = GuardedWriter(fake)
    guarded.prepare_snapshot(SESSION, _d())
    started = time.monotonic()
    with pytest.raises(FreezeTimeout, match=r"writer fake \(inst\) did not finish freeze within 0\.5 s"):
        guarded.freeze(SESSION, Deadline.after(0.5))
    assert 0.45 <= time.monotonic() - started < 0.8
    status = guarded.status
    assert (status.phase, status.failed_at) == (WriterPhase.FAILED, WriterEvent.FREEZE)
    assert status.last_error is not None and "did not finish freeze" in status.last_error
    last = guarded.records[-1]
    assert (last.event, last.ok) == (WriterEvent.FREEZE, False) and 450 <= last.duration_ms < 800
    # The hung call goes on in the background; the abort that follows is not held up by it.
    guarded.abort(SESSION, _d())
    assert fake.calls[-1] is WriterEvent.ABORT


def test_a_writer_that_raises_fails_with_its_reason(fake: FakeWriter) -> None:
    fake.raise_in[WriterEvent.PREPARE_SNAPSHOT] = ValueError("disk on fire")
    guarded = GuardedWriter(fake)
    with pytest.raises(
        WriterError, match=r"^writer fake \(inst\) failed at prepare-snapshot: ValueError: disk on fire$"
    ):
        guarded.prepare_snapshot(SESSION, _d())
    status = guarded.status
    assert (status.phase, status.failed_at) == (WriterPhase.FAILED, WriterEvent.PREPARE_SNAPSHOT)
    assert status.last_error == "writer fake (inst) failed at prepare-snapshot: ValueError: disk on fire"
    assert guarded.records[-1].error == status.last_error


def test_a_writers_own_freeze_timeout_keeps_its_kind(fake: FakeWriter) -> None:
    fake.raise_in[WriterEvent.FREEZE] = FreezeTimeout("lock not had within 1 s")
    guarded = GuardedWriter(fake)
    with pytest.raises(FreezeTimeout, match=r"failed at freeze: lock not had within 1 s") as caught:
        guarded.freeze(SESSION, _d())
    assert caught.value.__cause__ is fake.raise_in[WriterEvent.FREEZE]


def test_a_failure_sticks_until_the_next_backup(fake: FakeWriter) -> None:
    fake.raise_in[WriterEvent.THAW] = WriterError("thawed early")
    guarded = GuardedWriter(fake)
    guarded.prepare_snapshot(SESSION, _d())
    guarded.freeze(SESSION, _d())
    with pytest.raises(WriterError):
        guarded.thaw(SESSION, _d())
    assert guarded.status.last_freeze_ms is not None  # measured even though thaw failed
    guarded.abort(SESSION, _d())
    guarded.backup_shutdown(SESSION, _d())
    assert (guarded.status.phase, guarded.status.failed_at) == (WriterPhase.FAILED, WriterEvent.THAW)
    guarded.prepare_backup(SESSION, (), _d())
    assert guarded.status.phase is WriterPhase.STABLE
    assert guarded.status.failed_at is None and guarded.status.last_error is None


def test_every_call_is_recorded_once(fake: FakeWriter) -> None:
    seen: list[EventRecord] = []
    fake.raise_in[WriterEvent.ABORT] = RuntimeError("boom")
    guarded = GuardedWriter(fake, on_record=seen.append)
    before = datetime.now(UTC)
    guarded.identify(_d())
    guarded.prepare_snapshot(SESSION, _d())
    assert [r.event for r in guarded.take_records()] == [WriterEvent.IDENTIFY, WriterEvent.PREPARE_SNAPSHOT]
    with pytest.raises(WriterError):
        guarded.abort(SESSION, _d())
    assert [(r.event, r.ok) for r in guarded.take_records()] == [(WriterEvent.ABORT, False)]
    assert guarded.take_records() == []
    assert seen == list(guarded.records)
    assert all(r.writer_id == fake.writer_id and before <= r.started_at <= datetime.now(UTC) for r in seen)
    assert seen[-1].error == "writer fake (inst) failed at abort: RuntimeError: boom"
