"""The out-of-process writer protocol: framing, the JSON forms, and both halves misbehaving (no root needed,
except where a test changes a file's owner or runs a client as another user)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from snapport.errors import FreezeTimeout, UsageError, WriterError
from snapport.model import (
    Attr,
    BackupType,
    Context,
    EventKind,
    Volume,
)
from snapport.writers.base import Deadline, LogEntry, RestoreContext, Session, Tier
from snapport.writers.protocol import (
    MAX_LINE_BYTES,
    LineReader,
    check_reply,
    decode,
    encode,
    metadata_from_json,
    metadata_to_json,
    session_from_json,
    session_to_json,
    unix_address,
)
from snapport.writers.remote import RemoteWriter, check_registry_dir, discover, registry_dir, socket_path
from snapport.writers.service import WriterConfig, WriterService, load_config
from tests.unit.writers.recording_writer import RecordingWriter, bind, metadata

IS_ROOT = os.geteuid() == 0
VOLUME = Volume("unit-host", "/srv/data", "xfs", "1234", "/dev/loop9")
# Two lines a writer process adds to every reply: one of a kind this snapport knows, one of a kind it does not.
LOG_LINES = [{"kind": "hook-output", "message": "m"}, {"kind": "k", "message": "m"}]
pytestmark = pytest.mark.timeout(60)


def session(window_s: float = 30.0) -> Session:
    return Session(uuid.uuid4(), Context.APP_BACKUP, Attr.TRANSPORTABLE, BackupType.COPY, (VOLUME,), window_s)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    registry_dir(h).mkdir(mode=0o700)
    return h


# -- framing and the JSON forms ---------------------------------------------------------------------------------


def test_a_message_is_one_line_and_comes_back_the_same() -> None:
    message = {"v": 1, "id": 3, "event": "freeze", "text": "line\nbreak é"}
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line[:-1]) == message


def test_a_message_over_the_size_limit_is_refused_before_it_is_sent() -> None:
    with pytest.raises(WriterError, match="over the limit"):
        encode({"event": "identify", "blob": "x" * MAX_LINE_BYTES})


@pytest.mark.parametrize(
    ("line", "message"),
    [(b"not json", "not JSON"), (b"\xff\xfe", "not JSON"), (b"[1, 2]", "JSON list where an object"), (b"", "not JSON")],
)
def test_garbage_lines_are_protocol_errors(line: bytes, message: str) -> None:
    with pytest.raises(WriterError, match=f"protocol error: .*{message}"):
        decode(line)


def test_the_line_reader_joins_chunks_and_refuses_overlong_and_cut_lines() -> None:
    a, b = socket.socketpair()
    with a, b:
        reader = LineReader(b, limit=64)
        a.sendall(b'{"x":')
        a.sendall(b"1}\n{")
        assert reader.read_line(1.0) == b'{"x":1}'
        with pytest.raises(TimeoutError):
            reader.read_line(0.1)  # the rest of the second line never came
        a.sendall(b"y" * 100)
        with pytest.raises(WriterError, match="longer than 64 bytes"):
            reader.read_line(1.0)
    c, d = socket.socketpair()
    with c, d:
        c.sendall(b'{"cut": tr')
        c.close()
        with pytest.raises(WriterError, match="ended in the middle of a line"):
            LineReader(d).read_line(1.0)
    e, f = socket.socketpair()
    with e, f:
        e.close()
        assert LineReader(f).read_line(1.0) is None  # a clean end of stream


def test_session_and_metadata_survive_the_wire() -> None:
    s = session()
    assert session_from_json(json.loads(json.dumps(session_to_json(s)))) == s
    m = metadata(uuid.uuid4())
    assert metadata_from_json(json.loads(json.dumps(metadata_to_json(m)))) == m


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(writer_id="not-a-uuid"), "metadata"),
        (lambda m: m.pop("name"), "no text field 'name'"),
        (lambda m: m["components"][0].update(type="table"), "component"),
        (lambda m: m["components"][0]["database_files"][0].update(path="../../etc"), "climbs out of its volume"),
        (lambda m: m["components"][0]["database_files"][0].update(volume="relative"), "not absolute"),
        (lambda m: m["components"][0].update(log_files="wal"), "'log_files'"),
        (lambda m: m.update(components=[{"type": "filegroup", "name": "x", "recursive": "yes"}]), None),
    ],
)
def test_metadata_that_breaks_a_rule_is_a_protocol_error(
    change: Callable[[dict[str, Any]], object], message: str | None
) -> None:
    value = metadata_to_json(metadata(uuid.uuid4()))
    change(value)
    if message is None:  # unknown fields are ignored: later versions may add some
        metadata_from_json(value)
        return
    with pytest.raises(WriterError, match=f"protocol error: .*{message}"):
        metadata_from_json(value)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        ({"ok": True}, "without an id"),
        ({"id": 8, "ok": True}, "reply to request 8 while waiting for request 7"),
        ({"id": 7}, "no true/false field 'ok'"),
        ({"id": 7, "ok": "yes"}, "no true/false field 'ok'"),
        ({"id": 7, "ok": False}, "no text field 'error'"),
        ({"id": None, "ok": False, "error": "uid 1000 may not use this writer"}, "refused the request: uid 1000"),
    ],
)
def test_a_reply_must_answer_the_request_sent(reply: dict[str, Any], message: str) -> None:
    with pytest.raises(WriterError, match=message):
        check_reply(reply, 7)


def test_load_config_builds_the_spec_and_refuses_what_a_spec_cannot_say(tmp_path: Path) -> None:
    config = tmp_path / "w.toml"
    config.write_text('target = "/srv/app.db"\ncheckpoint = "passive"\nuser = "app"\n')
    loaded = load_config(config)
    assert loaded == WriterConfig("/srv/app.db", {"checkpoint": "passive"}, "app")
    assert loaded.spec("sqlite") == "sqlite:/srv/app.db,checkpoint=passive"
    # A kind's own `user` (a database account) goes in [options]: the top-level one is who the writer runs as.
    config.write_text(
        'target = "/run/mysqld/mysqld.sock"\nuser = "mysql"\n[options]\nuser = "backup"\nlock = "ftwrl"\n'
    )
    assert load_config(config) == WriterConfig("/run/mysqld/mysqld.sock", {"user": "backup", "lock": "ftwrl"}, "mysql")
    for text, message in [
        ("target = '/a'\noptions = 'user=x'\n", "must be a table"),
        ("target = '/a'\nlock = 'ftwrl'\n[options]\nlock = 'ftwrl'\n", "lock given both at the top and in"),
        ("checkpoint = 'off'\n", "names no `target`"),
        ("target = '/a'\nkey = 'a,b'\n", "cannot contain a comma"),
        ("target = '/a'\nkey = [1]\n", "must be text or a number"),
        ("target = '/a'\nuser = 3\n", "must be a user name"),
        ("target = ", "not valid TOML"),
    ]:
        config.write_text(text)
        with pytest.raises(UsageError, match=message):
            load_config(config)
    with pytest.raises(UsageError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


# -- the coordinator's half against scripted writer processes ----------------------------------------------------

Handler = Callable[[dict[str, Any], socket.socket], None]


def hello_reply(writer_id: uuid.UUID, request: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "id": request["id"],
        "ok": True,
        "protocol": 1,
        "versions": [1],
        "kind": "fake",
        "tier": "application",
        "writer_id": str(writer_id),
        "class_id": None,
        "instance_name": "scripted",
        "pid": os.getpid(),
        "uid": os.geteuid(),
        **extra,
    }


def send(conn: socket.socket, value: Mapping[str, Any] | bytes) -> None:
    conn.sendall(value if isinstance(value, bytes) else json.dumps(value).encode() + b"\n")


@contextlib.contextmanager
def scripted_writer(home: Path, on_request: Handler, writer_id: uuid.UUID | None = None) -> Iterator[Path]:
    """A registered writer socket served by a thread that answers hello and hands every other request to
    `on_request` (which replies, or does not)."""
    writer_id = writer_id or uuid.uuid4()
    path = socket_path(registry_dir(home), writer_id)
    listener = bind(path)
    listener.settimeout(0.1)
    stop = threading.Event()
    connections: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            connections.append(conn)
            with conn:
                conn.settimeout(10)
                reader = LineReader(conn)
                with contextlib.suppress(OSError, TimeoutError, WriterError):
                    while (line := reader.read_line()) is not None:
                        request = json.loads(line)
                        if request["event"] == "hello":
                            send(conn, hello_reply(writer_id, request))
                        else:
                            on_request(request, conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        thread.join(5)
        listener.close()
        path.unlink(missing_ok=True)


def ok(request: dict[str, Any], conn: socket.socket) -> None:
    reply: dict[str, Any] = {"id": request["id"], "ok": True}
    if request["event"] == "post-snapshot":
        reply["metadata"] = {"db": "label"}
    send(conn, reply)


def test_a_writer_that_speaks_the_protocol_takes_every_event(home: Path) -> None:
    seen: list[dict[str, Any]] = []

    def record(request: dict[str, Any], conn: socket.socket) -> None:
        seen.append(request)
        if request["event"] == "identify":
            send(conn, {"id": request["id"], "ok": True, "metadata": metadata_to_json(metadata(writer_id))})
        else:
            send(
                conn,
                {"id": request["id"], "ok": True, "metadata": {"db": "label"}, "log": LOG_LINES},
            )

    writer_id = uuid.uuid4()
    with scripted_writer(home, record, writer_id) as path:
        writer = RemoteWriter(path)
        assert writer.unavailable is None and writer.identity is not None
        assert (writer.kind, writer.tier, writer.instance_name) == ("fake", Tier.APPLICATION, "scripted")
        s = session()
        assert writer.identify(Deadline.after(5)) == metadata(writer_id)
        writer.prepare_backup(s, ("cluster\\db",), Deadline.after(5))
        writer.prepare_snapshot(s, Deadline.after(5))
        writer.freeze(s, Deadline.after(3))
        writer.thaw(s, Deadline.after(5))
        assert writer.post_snapshot(s, Deadline.after(5)) == {"db": "label"}
        writer.backup_complete(s, {"cluster\\db": True}, Deadline.after(5))
        writer.backup_shutdown(s, Deadline.after(5))
        # a kind this snapport knows is kept as it is; another is kept under writer-log, prefixed with its name
        assert (
            writer.take_event_log()
            == [LogEntry(EventKind.HOOK_OUTPUT, "m"), LogEntry(EventKind.WRITER_LOG, "k: m")] * 7
        )
        # a version-1 writer cannot be told where a restore lands: refused here, nothing is sent
        restore = RestoreContext(s.set_id, BackupType.FULL, Path("/restored"), ("cluster\\db",))
        with pytest.raises(WriterError, match="speaks protocol version 1, whose pre-restore cannot say where"):
            writer.pre_restore(restore, Deadline.after(5))
        writer.close()
    assert [r["event"] for r in seen] == [
        "identify", "prepare-backup", "prepare-snapshot", "freeze", "thaw", "post-snapshot", "backup-complete",
        "backup-shutdown",
    ]  # fmt: skip
    assert [r["id"] for r in seen] == list(range(1, 9))  # hello was 0
    assert all(r["v"] == 1 for r in seen)
    freeze = seen[3]
    assert 2.5 < freeze["deadline_s"] < 3  # the writer is told a little less than the coordinator waits
    assert session_from_json(freeze["session"]) == s
    assert seen[1]["components"] == ["cluster\\db"] and seen[6]["succeeded"] == {"cluster\\db": True}


def test_a_writer_that_speaks_another_version_is_refused(home: Path) -> None:
    def never(request: dict[str, Any], conn: socket.socket) -> None:
        raise AssertionError("no event after a failed hello")

    writer_id = uuid.uuid4()
    path = socket_path(registry_dir(home), writer_id)
    with scripted_writer(home, never, writer_id):
        pass
    # A writer that answers hello with version 2 only:
    listener = bind(path)

    def answer(reply: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        conn, _ = listener.accept()
        with conn:
            request = json.loads(LineReader(conn).read_line(5) or b"{}")
            send(conn, reply(request))

    try:
        for reply, message in [
            (lambda r: hello_reply(writer_id, r, protocol=3, versions=[3]), "protocol version mismatch"),
            (
                lambda r: {
                    "id": r["id"],
                    "ok": False,
                    "error": "protocol version 1 is not spoken here",
                    "versions": [3],
                },
                "hello failed: protocol version 1 is not spoken here",
            ),
            (lambda r: hello_reply(uuid.uuid4(), r), "says it is writer"),
        ]:
            thread = threading.Thread(target=answer, args=(reply,))
            thread.start()
            writer = RemoteWriter(path)
            thread.join(5)
            assert writer.identity is None and not writer.stale
            assert writer.unavailable is not None and message in writer.unavailable.message
            with pytest.raises(WriterError, match=message):
                writer.identify(Deadline.after(1))
    finally:
        listener.close()
        path.unlink()


@pytest.mark.parametrize(
    ("misbehave", "error", "message"),
    [
        (lambda r, c: send(c, b"this is not json\n"), WriterError, "protocol error: a line that is not JSON"),
        (lambda r, c: send(c, {"id": r["id"] + 1, "ok": True}), WriterError, "protocol error: a reply to request"),
        (lambda r, c: send(c, {"id": r["id"]}), WriterError, "no true/false field 'ok'"),
        (lambda r, c: send(c, b"x" * (MAX_LINE_BYTES + 10) + b"\n"), WriterError, "longer than"),
        (lambda r, c: c.shutdown(socket.SHUT_RDWR), WriterError, "writer process died during freeze"),
        (lambda r, c: None, FreezeTimeout, "did not answer freeze within"),
    ],
    ids=["garbage", "wrong-id", "missing-ok", "too-long", "died", "silent"],
)
def test_a_writer_misbehaving_at_freeze_fails_it_clearly_and_is_cut_off(
    home: Path, misbehave: Handler, error: type[WriterError], message: str
) -> None:
    def handler(request: dict[str, Any], conn: socket.socket) -> None:
        (misbehave if request["event"] == "freeze" else ok)(request, conn)

    with scripted_writer(home, handler) as path:
        writer = RemoteWriter(path)
        s = session()
        writer.prepare_snapshot(s, Deadline.after(5))
        started = time.monotonic()
        with pytest.raises(error, match=message) as caught:
            writer.freeze(s, Deadline.after(1))
        assert time.monotonic() - started < 1.25  # not past its deadline (give or take a loaded machine)
        assert type(caught.value) is error
        writer.thaw(s, Deadline.after(1))  # it never froze: nothing to report
        writer.abort(s, Deadline.after(1))  # the hang-up is the abort
        writer.backup_shutdown(s, Deadline.after(1))
        with pytest.raises(WriterError):
            writer.prepare_snapshot(s, Deadline.after(1))  # nothing reaches it any more


def test_a_writer_that_dies_after_freezing_fails_the_thaw(home: Path) -> None:
    def handler(request: dict[str, Any], conn: socket.socket) -> None:
        if request["event"] == "thaw":
            conn.shutdown(socket.SHUT_RDWR)
        else:
            ok(request, conn)

    with scripted_writer(home, handler) as path:
        writer = RemoteWriter(path)
        s = session()
        writer.freeze(s, Deadline.after(2))
        with pytest.raises(WriterError, match="writer process died during thaw"):
            writer.thaw(s, Deadline.after(2))


def test_an_error_reply_keeps_the_connection_and_a_freeze_timeout_keeps_its_name(home: Path) -> None:
    def handler(request: dict[str, Any], conn: socket.socket) -> None:
        if request["event"] == "freeze":
            send(conn, {"id": request["id"], "ok": False, "error": "lock busy", "code": "FREEZE_TIMEOUT"})
        elif request["event"] == "prepare-snapshot":
            send(conn, {"id": request["id"], "ok": False, "error": "no database", "code": "WRITER_ERROR"})
        else:
            ok(request, conn)

    with scripted_writer(home, handler) as path:
        writer = RemoteWriter(path)
        s = session()
        with pytest.raises(WriterError, match="no database"):
            writer.prepare_snapshot(s, Deadline.after(2))
        with pytest.raises(FreezeTimeout, match="lock busy"):
            writer.freeze(s, Deadline.after(2))
        writer.abort(s, Deadline.after(2))  # still connected


def test_stale_and_unsafe_registrations(home: Path, tmp_path: Path) -> None:
    directory = registry_dir(home)
    stale = socket_path(directory, uuid.uuid4())
    bind(stale).close()  # what a killed writer leaves: a socket file nobody listens on
    writer = RemoteWriter(stale)
    assert writer.stale and writer.unavailable is not None and "stale" in writer.unavailable.message
    found = discover(home, [VOLUME])
    assert found.stale == (stale,) and found.writers == ()
    open_socket = socket_path(directory, uuid.uuid4())
    bind(open_socket).close()
    open_socket.chmod(0o666)
    assert "open to others" in str(RemoteWriter(open_socket).unavailable)
    with pytest.raises(UsageError, match="not a registered writer's socket"):
        RemoteWriter(directory / "other.sock")
    directory.chmod(0o755)
    with pytest.raises(WriterError, match=r"open to group or others \(mode 755\)"):
        check_registry_dir(directory)
    with pytest.raises(WriterError, match="open to group or others"):
        discover(home, [VOLUME])
    assert "open to group or others" in str(RemoteWriter(stale).unavailable)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to give the socket file to another user")
def test_a_socket_owned_by_one_user_but_served_by_another_is_refused(home: Path) -> None:
    with scripted_writer(home, ok) as path:
        os.chown(path, 65534, 65534)  # the file says "nobody", the listener is root
        writer = RemoteWriter(path)
        assert writer.identity is None and writer.unavailable is not None
        assert f"owned by uid 65534 but the process listening on it (pid {os.getpid()}) runs as uid 0" in (
            writer.unavailable.message
        )


def test_discovery_keeps_the_writers_on_the_sets_volumes(home: Path) -> None:
    on_set, elsewhere = uuid.uuid4(), uuid.uuid4()

    def describe(writer_id: uuid.UUID, volume: str) -> Handler:
        def handler(request: dict[str, Any], conn: socket.socket) -> None:
            m = metadata(writer_id)
            m_json = metadata_to_json(m)
            for c in m_json["components"]:
                for spec in c["database_files"] + c["log_files"]:
                    spec["volume"] = volume
            send(conn, {"id": request["id"], "ok": True, "metadata": m_json})

        return handler

    with (
        scripted_writer(home, describe(on_set, "/srv/data"), on_set),
        scripted_writer(home, describe(elsewhere, "/srv/other"), elsewhere),
    ):
        found = discover(home, [VOLUME])
        assert [w.writer_id for w in found.writers] == [on_set]
        assert [w.writer_id for w in found.not_involved] == [elsewhere]
        assert discover(home, [VOLUME], skip={on_set}).writers == ()
        for w in found.writers:
            w.close()


# -- the writer process's half -----------------------------------------------------------------------------------


@contextlib.contextmanager
def served(home: Path, writer: RecordingWriter, directory: Path | None = None) -> Iterator[tuple[Path, WriterService]]:
    directory = directory or registry_dir(home)
    path = socket_path(directory, writer.writer_id)
    listener = bind(path)
    service = WriterService(writer, listener, wedge_grace_s=None, abort_timeout_s=5)
    thread = threading.Thread(target=service.serve_forever, daemon=True)
    thread.start()
    try:
        yield path, service
    finally:
        service.stop()
        thread.join(5)
        path.unlink(missing_ok=True)


def test_the_service_runs_each_event_and_passes_its_log_on(home: Path) -> None:
    fake = RecordingWriter()
    with served(home, fake) as (path, service):
        writer = RemoteWriter(path)
        assert writer.identity is not None and writer.identity.pid == os.getpid() and not writer.identity.frozen
        s = session()
        assert writer.identify(Deadline.after(5)) == metadata(fake.writer_id)
        writer.prepare_backup(s, (), Deadline.after(5))
        writer.prepare_snapshot(s, Deadline.after(5))
        writer.freeze(s, Deadline.after(5))
        assert service.identity()["frozen"] is True
        writer.thaw(s, Deadline.after(5))
        assert writer.post_snapshot(s, Deadline.after(5)) == {"cluster\\db": "label"}
        writer.close()
        time.sleep(0.2)
        assert not fake.aborted.is_set()  # the set was made: a hang-up now undoes nothing
        assert [e for e, _ in fake.events] == ["prepare-backup", "prepare-snapshot", "freeze", "thaw", "post-snapshot"]
        assert writer.take_event_log()[-1] == LogEntry(EventKind.HOOK_OUTPUT, "after 5 events")


def test_the_service_takes_restore_events_with_their_context_in_version_2(home: Path) -> None:
    fake = RecordingWriter()
    restore = RestoreContext(
        uuid.uuid4(), BackupType.COPY, Path("/restored"), ("cluster\\db",), {"cluster\\db": "label"}, "one"
    )
    with served(home, fake) as (path, _service):
        writer = RemoteWriter(path)
        assert writer.identity is not None and writer.identity.protocol == 2
        writer.pre_restore(restore, Deadline.after(5))
        writer.post_restore(restore, Deadline.after(5))
        writer.close()
    assert fake.events == [("pre-restore", restore.set_id), ("post-restore", restore.set_id)]
    assert fake.restores == [restore, restore]
    assert fake.restores[0].location("/srv/db/file") == Path("/restored/srv/db/file")


def test_the_service_speaks_version_1_to_an_old_coordinator_and_refuses_it_restores(home: Path) -> None:
    fake = RecordingWriter()
    with served(home, fake) as (path, _service), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        with unix_address(path) as address:
            sock.connect(address)
        reader = LineReader(sock)
        send(sock, {"v": 1, "id": 0, "event": "hello", "versions": [1]})
        assert json.loads(reader.read_line(5) or b"")["protocol"] == 1
        send(sock, {"v": 1, "id": 1, "event": "pre-restore", "deadline_s": 5, "components": ["cluster\\db"]})
        reply = json.loads(reader.read_line(5) or b"")
        assert reply["ok"] is False and "needs protocol version 2" in reply["error"]
    assert fake.events == []


def test_the_service_aborts_when_its_coordinator_hangs_up_while_frozen(home: Path) -> None:
    fake = RecordingWriter()
    with served(home, fake) as (path, service):
        writer = RemoteWriter(path)
        s = session()
        writer.prepare_snapshot(s, Deadline.after(5))
        writer.freeze(s, Deadline.after(5))
        writer.close()  # as the kernel does when the coordinator is SIGKILLed
        assert fake.aborted.wait(5)
        assert fake.events[-1] == ("abort", s.set_id)
        assert service.identity()["frozen"] is False


def test_the_service_lets_go_when_the_freeze_window_runs_out_and_says_so_at_thaw(home: Path) -> None:
    fake = RecordingWriter()
    with served(home, fake) as (path, _service):
        writer = RemoteWriter(path)
        s = session(window_s=0.5)
        writer.freeze(s, Deadline.after(5))
        assert fake.aborted.wait(3)
        with pytest.raises(WriterError, match=r"freeze window \(0.5 s\) ran out, before thaw was asked"):
            writer.thaw(s, Deadline.after(5))
        fake.aborted.clear()
        s2 = session(window_s=0.5)
        writer.freeze(s2, Deadline.after(5))
        writer.thaw(s2, Deadline.after(5))  # in time: the watchdog is off
        time.sleep(0.8)
        assert not fake.aborted.is_set()


def test_the_service_answers_an_overrun_at_the_deadline(home: Path) -> None:
    fake = RecordingWriter(freeze_s=1.2)
    with served(home, fake) as (path, _service):
        writer = RemoteWriter(path)
        s = session()
        started = time.monotonic()
        with pytest.raises(FreezeTimeout, match="freeze did not finish within"):
            writer.freeze(s, Deadline.after(0.6))
        assert time.monotonic() - started < 0.85
        writer.abort(s, Deadline.after(5))  # queued behind the late freeze, then run
        assert fake.aborted.wait(5)
        assert [e for e, _ in fake.events] == ["freeze", "abort"]


def test_the_service_refuses_other_versions_and_cuts_off_garbage(home: Path) -> None:
    fake = RecordingWriter()
    with served(home, fake) as (path, _service), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        with unix_address(path) as address:
            sock.connect(address)
        reader = LineReader(sock)
        send(sock, {"v": 3, "id": 1, "event": "hello"})
        reply = json.loads(reader.read_line(5) or b"")
        assert reply["id"] == 1 and reply["ok"] is False and reply["versions"] == [1, 2]
        assert "protocol version 3 is not spoken here" in reply["error"]
        s = session_to_json(session())
        send(sock, {"v": 1, "id": 2, "event": "prepare-snapshot", "deadline_s": 5, "session": s})
        assert json.loads(reader.read_line(5) or b"")["ok"] is True
        send(sock, {"v": 1, "id": 3, "event": "refreeze", "deadline_s": 5, "session": s})
        assert "unknown event 'refreeze'" in json.loads(reader.read_line(5) or b"")["error"]
        send(sock, {"v": 1, "id": 4, "event": "freeze", "deadline_s": 5, "session": {"set_id": "x"}})
        assert "protocol error: session" in json.loads(reader.read_line(5) or b"")["error"]
        send(sock, b"garbage\n")
        reply = json.loads(reader.read_line(5) or b"")
        assert reply["id"] is None and "not JSON" in reply["error"]
        assert reader.read_line(5) is None  # cut off
        assert fake.aborted.wait(5)  # and the session it had open is aborted


@pytest.mark.skipif(not IS_ROOT, reason="needs root to connect as another user")
def test_the_service_refuses_a_coordinator_that_is_neither_root_nor_itself(home: Path, tmp_path: Path) -> None:
    shared = Path(os.environ.get("TMPDIR", "/tmp")) / f"snapport-test-{uuid.uuid4().hex[:8]}"
    shared.mkdir(mode=0o755)
    try:
        fake = RecordingWriter()
        with served(home, fake, shared) as (path, _service):
            path.chmod(0o666)
            client = (
                "import socket, sys\n"
                "s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
                's.sendall(b\'{"v":1,"id":0,"event":"hello"}\\n\'); print(s.recv(4096).decode())\n'
            )
            out = subprocess.run(
                [sys.executable, "-c", client, str(path)], user=65534, group=65534, capture_output=True, text=True,
                timeout=30, check=True,
            )  # fmt: skip
            reply = json.loads(out.stdout)
            assert reply == {"id": None, "ok": False, "error": "uid 65534 may not use this writer"}
            assert fake.events == []
    finally:
        for child in shared.iterdir():
            child.unlink()
        shared.rmdir()


WEDGED = """
import socket, sys, time, uuid
from snapport.writers.service import WriterService
sys.path.insert(0, sys.argv[2])
from tests.unit.writers.recording_writer import RecordingWriter
writer = RecordingWriter(freeze_s=3600)
writer.writer_id = uuid.UUID(sys.argv[3])
from pathlib import Path
from tests.unit.writers.recording_writer import bind
listener = bind(Path(sys.argv[1]))
print("ready", flush=True)
WriterService(writer, listener, wedge_grace_s=0.5).serve_forever()
"""


def test_a_writer_process_wedged_past_its_deadline_exits(home: Path) -> None:
    writer_id = uuid.uuid4()
    path = socket_path(registry_dir(home), writer_id)
    root = Path(__file__).parents[3]
    proc = subprocess.Popen(
        [sys.executable, "-c", WEDGED, str(path), str(root), str(writer_id)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        writer = RemoteWriter(path)
        with pytest.raises(FreezeTimeout):
            writer.freeze(session(), Deadline.after(1))
        assert proc.wait(10) == 75  # EX_TEMPFAIL: whatever it held died with it
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        path.unlink(missing_ok=True)
