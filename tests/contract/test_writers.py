"""The writer conformance suite: the Writer contract, checked the same way on every kind in the registry.

Each kind gets a real scratch filesystem (and, for sqlite, a real WAL database on it), a `probe` (one write the
writer's freeze must hold back) and a `contention` (someone else holding what the writer needs to freeze).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from snapport.documents import wmd_from_xml, wmd_to_xml
from snapport.errors import SnapportError, WriterError
from snapport.model import Attr, BackupType, Context, EventKind, Volume
from snapport.osal import ioctl
from snapport.osal import mount as mnt
from snapport.writers.base import Deadline, LogEntry, RestoreContext, Session, Writer, WriterEvent, WriterPhase
from snapport.writers.guarded import GuardedWriter
from snapport.writers.registry import WRITERS, writer_from_spec
from tests.support.databases import DATABASE_KINDS, database_case, database_filesystem

if TYPE_CHECKING:  # a type only (tests/contract is no package, so the import sorter would misplace it)
    from tests.conftest import Scratch

pytestmark = [pytest.mark.root]

HOST = "contract-host"
EVENT_S = 10.0


@dataclass
class Case:
    kind: str
    spec: str
    writer: Writer
    volume: Volume
    probe: Callable[[], subprocess.Popen[bytes]]
    contention: Callable[[], contextlib.AbstractContextManager[None]]
    freeze_holds_writes: bool = True  # False: the writer leaves the I/O cut to the filesystem freeze (postgresql)

    def session(self, freeze_window_s: float = 30.0) -> Session:
        return Session(uuid.uuid4(), Context.BACKUP, Attr.NONE, BackupType.FULL, (self.volume,), freeze_window_s)


def _blocked(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return True
    return False


def _completes(proc: subprocess.Popen[bytes], seconds: float = 10.0) -> bool:
    return not _blocked(proc, seconds) and proc.returncode == 0


@contextlib.contextmanager
def _frozen_by_someone_else(mount_point: Path) -> Iterator[None]:
    ioctl.freeze(mount_point)
    try:
        yield
    finally:
        ioctl.thaw(mount_point)


@contextlib.contextmanager
def _write_transaction_held(db: Path) -> Iterator[None]:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@pytest.fixture(params=sorted(WRITERS))
def case(request: pytest.FixtureRequest, scratch: Scratch) -> Iterator[Case]:
    kind: str = request.param
    shared: Path | None = None
    if kind in DATABASE_KINDS:  # their servers run as other users, who cannot enter pytest's private tmp_path
        shared, fs = database_filesystem(scratch)
    else:
        fs = scratch.filesystem("ext4")
    fs_type, fs_uuid = mnt.fs_identity(scratch.runner, fs.device)
    volume = Volume(host=HOST, mount_point=str(fs.mount_point), fs_type=fs_type, fs_uuid=fs_uuid, device=fs.device)
    started: list[subprocess.Popen[bytes]] = []
    holds_writes = True
    stop_server: Callable[[], None] | None = None

    def spawn(code: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen([sys.executable, "-c", code])
        started.append(proc)
        return proc

    if kind == "filesystem":
        spec = f"filesystem:{fs.mount_point}"
        probe_file = fs.mount_point / "probe"
        probe_code = (
            f"import os; f=os.open({str(probe_file)!r}, os.O_WRONLY|os.O_CREAT); os.write(f, b'x'); os.fsync(f)"
        )

        def contention() -> contextlib.AbstractContextManager[None]:
            return _frozen_by_someone_else(fs.mount_point)

    elif kind == "sqlite":
        db = fs.mount_point / "data" / "app.db"
        db.parent.mkdir()
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        spec = f"sqlite:{db}"
        probe_code = (
            f"import sqlite3; c = sqlite3.connect({str(db)!r}, timeout=30, isolation_level=None)\n"
            "c.execute(\"INSERT INTO t (v) VALUES ('probe')\"); c.close()"
        )

        def contention() -> contextlib.AbstractContextManager[None]:
            return _write_transaction_held(db)

    elif kind == "hook":
        # A cooperative application: it pauses its writes while a flag file exists, and refuses to pause while
        # it is busy. The hook sets and clears the flag.
        app = fs.mount_point / "app"
        app.mkdir()
        flag, busy = scratch.root / "paused", scratch.root / "busy"
        hook = scratch.root / "hook.sh"
        hook.write_text(
            "#!/bin/sh\n"
            f'case "$1" in\n'
            f"  freeze) if [ -e {busy} ]; then echo 'application busy' >&2; exit 1; fi; touch {flag} ;;\n"
            f"  thaw|abort|backup-shutdown) rm -f {flag} ;;\n"
            "esac\n"
        )
        hook.chmod(0o700)
        spec = f"hook:{hook},paths={app}"
        probe_code = (
            f"import os, time\nwhile os.path.exists({str(flag)!r}): time.sleep(0.01)\n"
            f"f = os.open({str(app / 'probe')!r}, os.O_WRONLY | os.O_CREAT); os.write(f, b'x'); os.fsync(f)"
        )

        @contextlib.contextmanager
        def contention() -> Iterator[None]:
            busy.touch()
            try:
                yield
            finally:
                busy.unlink()

    elif kind == "remote":  # `snapport writer run sqlite`, reached over its socket: the same contract holds
        db = fs.mount_point / "data" / "app.db"
        db.parent.mkdir()
        with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        config = scratch.root / "writer.toml"
        config.write_text(f'target = "{db}"\n')
        env = {**os.environ, "SNAPPORT_HOME": str(scratch.root / "home"), "SNAPPORT_HOST": HOST}
        command = [sys.executable, "-m", "snapport", "writer", "run", "sqlite", "--config", str(config), "--json"]
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE)
        assert process.stdout is not None
        ready = process.stdout.readline()
        assert ready, "snapport writer run did not start"
        spec = f"remote:{json.loads(ready)['socket']}"
        kind = "sqlite"  # what the writer behind the socket is
        probe_code = (
            f"import sqlite3; c = sqlite3.connect({str(db)!r}, timeout=30, isolation_level=None)\n"
            "c.execute(\"INSERT INTO t (v) VALUES ('probe')\"); c.close()"
        )

        def contention() -> contextlib.AbstractContextManager[None]:
            return _write_transaction_held(db)

        def stop_server() -> None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            process.stdout.close()

    elif kind in DATABASE_KINDS:
        assert shared is not None
        database = database_case(kind, fs.mount_point, shared)
        spec, probe_code, contention = database.spec, database.probe_code, database.contention
        holds_writes, stop_server = database.freeze_holds_writes, database.stop

    else:
        pytest.fail(f"the writer suite does not know how to set up a {kind!r} writer; add it to the fixture")

    try:
        writer = writer_from_spec(spec, [volume], HOST)
        c = Case(kind, spec, writer, volume, lambda: spawn(probe_code), contention, holds_writes)
        try:
            yield c
        finally:
            writer.abort(c.session(), Deadline.after(EVENT_S))  # whatever a failed test left held
            for proc in started:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
    finally:
        if stop_server is not None:
            stop_server()


def _tree(root: Path) -> list[tuple[str, int, int]]:
    found = []
    for directory, _dirs, files in os.walk(root):
        for name in files:
            st = Path(directory, name).stat()
            found.append((str(Path(directory, name)), st.st_size, st.st_mtime_ns))
    return sorted(found)


def test_identify_is_stateless_and_describes_files_on_the_sets_volumes(case: Case) -> None:
    before = _tree(Path(case.volume.mount_point))
    first = case.writer.identify(Deadline.after(EVENT_S))
    second = case.writer.identify(Deadline.after(EVENT_S))
    assert first == second
    assert _tree(Path(case.volume.mount_point)) == before  # identify wrote nothing
    assert isinstance(case.writer, Writer)
    assert (first.writer_id, first.name, first.instance_name) == (
        case.writer.writer_id,
        case.kind,
        case.writer.instance_name,
    )
    # Every writer declares its class id, known before identify, and identify reports that one.
    assert isinstance(case.writer.class_id, uuid.UUID) and first.class_id == case.writer.class_id
    assert writer_from_spec(case.spec, [case.volume], HOST).writer_id == case.writer.writer_id  # stable id
    assert first.components
    specs = [spec for component in first.components for spec in component.all_files()]
    assert specs
    for spec in specs:
        assert spec.volume == case.volume.mount_point
        assert Path(spec.original_path).is_dir()
    assert wmd_from_xml(wmd_to_xml(first)) == first  # schema-valid, and nothing lost on the way


def test_the_full_sequence_succeeds_within_its_deadlines(case: Case) -> None:
    guarded = GuardedWriter(case.writer)
    session = case.session()
    metadata = guarded.identify(Deadline.after(EVENT_S))
    components = tuple(c.full_path for c in metadata.components)
    steps: list[tuple[WriterEvent, Callable[[Deadline], object], WriterPhase]] = [
        (WriterEvent.PREPARE_BACKUP, lambda d: guarded.prepare_backup(session, components, d), WriterPhase.STABLE),
        (WriterEvent.PREPARE_SNAPSHOT, lambda d: guarded.prepare_snapshot(session, d), WriterPhase.WAITING_FOR_FREEZE),
        (WriterEvent.FREEZE, lambda d: guarded.freeze(session, d), WriterPhase.FROZEN),
        (WriterEvent.THAW, lambda d: guarded.thaw(session, d), WriterPhase.WAITING_FOR_BACKUP_COMPLETE),
        (
            WriterEvent.POST_SNAPSHOT,
            lambda d: guarded.post_snapshot(session, d),
            WriterPhase.WAITING_FOR_BACKUP_COMPLETE,
        ),
        (
            WriterEvent.BACKUP_COMPLETE,
            lambda d: guarded.backup_complete(session, dict.fromkeys(components, True), d),
            WriterPhase.STABLE,
        ),
        (WriterEvent.BACKUP_SHUTDOWN, lambda d: guarded.backup_shutdown(session, d), WriterPhase.STABLE),
    ]
    private: object = None
    for event, step, state in steps:
        result = step(Deadline.after(EVENT_S))
        if event is WriterEvent.POST_SNAPSHOT:
            private = result
        assert guarded.status.phase is state, event
    assert isinstance(private, dict)
    assert set(private) <= set(components)
    assert [r.event for r in guarded.records] == [WriterEvent.IDENTIFY] + [e for e, _, _ in steps]
    assert all(r.ok and r.error is None and r.duration_ms < EVENT_S * 1000 for r in guarded.records)
    status = guarded.status
    assert status.failed_at is None and status.last_error is None
    assert status.last_freeze_ms is not None and 0 < status.last_freeze_ms < EVENT_S * 1000
    # What the writer asked to log: lines of the one event-kind enum, each handed over once (a hook: one per run).
    log = guarded.take_event_log()
    assert all(isinstance(e, LogEntry) and isinstance(e.kind, EventKind) and e.message for e in log)
    if case.kind == "hook":
        assert log and {e.kind for e in log} == {EventKind.HOOK_OUTPUT}
    assert guarded.take_event_log() == []
    assert _completes(case.probe())


def test_thaw_and_abort_are_idempotent_and_need_no_freeze(case: Case) -> None:
    session = case.session()
    for _ in range(2):
        case.writer.thaw(session, Deadline.after(EVENT_S))
        case.writer.abort(session, Deadline.after(EVENT_S))
    session = case.session()
    case.writer.prepare_backup(session, (), Deadline.after(EVENT_S))
    case.writer.prepare_snapshot(session, Deadline.after(EVENT_S))
    case.writer.thaw(session, Deadline.after(EVENT_S))
    case.writer.abort(session, Deadline.after(EVENT_S))
    case.writer.abort(session, Deadline.after(EVENT_S))
    # ... and none of that left the writer unable to freeze for the next set, nor holding anything after it.
    session = case.session()
    case.writer.prepare_snapshot(session, Deadline.after(EVENT_S))
    case.writer.freeze(session, Deadline.after(EVENT_S))
    for _ in range(2):
        case.writer.thaw(session, Deadline.after(EVENT_S))
    case.writer.abort(session, Deadline.after(EVENT_S))
    assert _completes(case.probe())


def test_abort_after_freeze_leaves_everything_writable(case: Case) -> None:
    session = case.session()
    case.writer.prepare_backup(session, (), Deadline.after(EVENT_S))
    case.writer.prepare_snapshot(session, Deadline.after(EVENT_S))
    case.writer.freeze(session, Deadline.after(EVENT_S))
    probe = case.probe()
    if case.freeze_holds_writes:
        assert _blocked(probe, 0.5), "the freeze did not hold back a write"
    case.writer.abort(session, Deadline.after(EVENT_S))
    assert _completes(probe)
    case.writer.abort(session, Deadline.after(EVENT_S))
    case.writer.thaw(session, Deadline.after(EVENT_S))
    assert _completes(case.probe())


def test_a_freeze_after_abort_of_the_same_set_is_refused(case: Case) -> None:
    """An overrunning freeze that lands after the coordinator aborted must not freeze anything."""
    session = case.session()
    case.writer.prepare_snapshot(session, Deadline.after(EVENT_S))
    case.writer.abort(session, Deadline.after(EVENT_S))
    with pytest.raises(WriterError, match="aborted"):
        case.writer.freeze(session, Deadline.after(EVENT_S))
    assert _completes(case.probe())


def test_guarded_writer_marks_a_failed_freeze(case: Case) -> None:
    guarded = GuardedWriter(case.writer)
    session = case.session()
    guarded.prepare_backup(session, (), Deadline.after(EVENT_S))
    guarded.prepare_snapshot(session, Deadline.after(EVENT_S))
    with case.contention(), pytest.raises(SnapportError) as caught:
        guarded.freeze(session, Deadline.after(2))
    assert f"writer {case.kind} ({case.writer.instance_name})" in caught.value.message
    status = guarded.status
    assert (status.phase, status.failed_at, status.last_error) == (
        WriterPhase.FAILED,
        WriterEvent.FREEZE,
        caught.value.message,
    )
    assert guarded.records[-1].event is WriterEvent.FREEZE and not guarded.records[-1].ok
    guarded.abort(session, Deadline.after(EVENT_S))
    assert guarded.status.phase is WriterPhase.FAILED  # kept for `snapport writers` until the next backup
    assert _completes(case.probe())
    guarded.prepare_backup(case.session(), (), Deadline.after(EVENT_S))
    assert guarded.status.phase is WriterPhase.STABLE and guarded.status.failed_at is None


def test_restore_events_take_a_restore_context_and_leave_the_live_files_alone(case: Case, tmp_path: Path) -> None:
    """pre_restore and post_restore with a context (a restore elsewhere, of no component of this writer) succeed,
    are recorded, leave the writer stable, write nothing to the target and leave the live application working."""
    guarded = GuardedWriter(case.writer)
    target = tmp_path / "restore-target"
    target.mkdir()
    restore = RestoreContext(uuid.uuid4(), BackupType.FULL, target, ())
    guarded.pre_restore(restore, Deadline.after(EVENT_S))
    guarded.post_restore(restore, Deadline.after(EVENT_S))
    assert [(r.event, r.ok) for r in guarded.records] == [
        (WriterEvent.PRE_RESTORE, True),
        (WriterEvent.POST_RESTORE, True),
    ]
    assert guarded.status.phase is WriterPhase.STABLE
    assert list(target.iterdir()) == []
    assert _completes(case.probe())
