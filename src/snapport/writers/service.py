"""The writer-process half of the protocol: `snapport writer run KIND --config FILE` (docs/writer-protocol.md).

`WriterService` serves one built-in writer on a listening Unix socket registered as
`$SNAPPORT_HOME/writers.d/<writer-id>.sock`. It answers `hello`, runs each event bounded by the deadline it came
with (one event at a time), and keeps the thaw guarantee on its own side: a freeze is let go (the writer aborted)
when the session's freeze window runs out before thaw or abort, and a session is aborted when its coordinator's
connection is lost before `post-snapshot`. An event still running `wedge_grace_s` after its deadline makes the
process exit, so that whatever the writer held dies with it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import stat
import sys
import threading
import time
import tomllib
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from snapport import __version__
from snapport.errors import FreezeTimeout, SnapportError, UsageError, WriterError
from snapport.model import Volume
from snapport.osal import mount as mnt
from snapport.writers.base import Deadline, Session, Writer, WriterEvent
from snapport.writers.protocol import (
    HELLO,
    PROTOCOL_VERSION,
    RESTORE_VERSION,
    SUPPORTED_VERSIONS,
    Fields,
    LineReader,
    common_version,
    decode,
    encode,
    log_json,
    metadata_to_json,
    peer_cred,
    protocol_error,
    restore_from_json,
    session_from_json,
    unix_address,
)
from snapport.writers.registry import WRITERS, writer_from_spec
from snapport.writers.remote import check_registry_dir, probe_listener, registry_dir, socket_path

T = TypeVar("T")
WEDGE_GRACE_S = 5.0
EXIT_WEDGED = 75  # EX_TEMPFAIL: the service manager should restart it
ABORT_TIMEOUT_S = 30.0
NOT_OUT_OF_PROCESS = ("filesystem", "remote")  # the coordinator freezes filesystems itself; remote is the client


def log(message: str) -> None:
    print(f"snapport writer: {message}", file=sys.stderr, flush=True)


# -- configuration ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WriterConfig:
    """A writer's TOML file: `target`, the kind's own keys (at the top or in `[options]`), and optionally the
    `user` to run as."""

    target: str
    options: dict[str, str] = field(default_factory=dict)
    user: str | None = None

    def spec(self, kind: str) -> str:
        return ",".join([f"{kind}:{self.target}", *(f"{k}={v}" for k, v in sorted(self.options.items()))])


def _option_text(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        text = str(value)
        if "," in text:
            raise UsageError(f"writer config: the value of {key!r} cannot contain a comma")
        return text
    raise UsageError(f"writer config: {key!r} must be text or a number, not a {type(value).__name__}")


def load_config(path: Path) -> WriterConfig:
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read writer config {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"writer config {path} is not valid TOML: {exc}") from None
    target = data.pop("target", None)
    if not isinstance(target, str) or not target:
        raise UsageError(f"writer config {path} names no `target` (the writer's TARGET, as in --writer KIND:TARGET)")
    user = data.pop("user", None)
    if user is not None and (not isinstance(user, str) or not user):
        raise UsageError(f"writer config {path}: `user` must be a user name")
    # The kind's keys may also sit in an [options] table: the only way to give a kind's own `user` (the database
    # account of the postgresql and mariadb writers), since a top-level `user` is who the writer runs as.
    table = data.pop("options", {})
    if not isinstance(table, dict):
        raise UsageError(f"writer config {path}: `options` must be a table ([options])")
    both = sorted(table.keys() & data.keys())
    if both:
        raise UsageError(f"writer config {path}: {', '.join(both)} given both at the top and in [options]")
    return WriterConfig(target, {k: _option_text(k, v) for k, v in (data | table).items()}, user)


def mounted_volumes(host: str) -> list[Volume]:
    """Every mounted filesystem as a `Volume` (the writer process does not know which set it will serve)."""
    found: dict[str, Volume] = {}
    for m in mnt.mounts():
        with contextlib.suppress(SnapportError, ValueError):
            found[m.mount_point] = Volume(host=host, mount_point=m.mount_point, fs_type=m.fs_type, fs_uuid="")
    return list(found.values())


def build_writer(kind: str, config: WriterConfig, host: str) -> Writer:
    if kind not in WRITERS:
        raise UsageError(f"unknown writer kind {kind!r}; known kinds: {', '.join(sorted(WRITERS))}")
    if kind in NOT_OUT_OF_PROCESS:
        raise UsageError(f"a {kind} writer cannot run in its own process")
    return writer_from_spec(config.spec(kind), mounted_volumes(host), host)


# -- one connection ---------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Connection:
    """A coordinator's connection: the session it has open, and whether losing it must abort that session."""

    sock: socket.socket
    pid: int
    session: Session | None = None
    needs_abort: bool = False


@dataclass(frozen=True, slots=True)
class _Request:
    id: int
    event: str
    deadline: Deadline
    fields: Fields


class WriterService:
    """Serves `writer` on `listener` (already bound and listening) until `stop` is set."""

    def __init__(
        self,
        writer: Writer,
        listener: socket.socket,
        *,
        wedge_grace_s: float | None = WEDGE_GRACE_S,
        abort_timeout_s: float = ABORT_TIMEOUT_S,
    ) -> None:
        self.writer = writer
        self.listener = listener
        self.wedge_grace_s = wedge_grace_s
        self.abort_timeout_s = abort_timeout_s
        self._events = threading.Lock()  # one writer event at a time
        self._state = threading.Lock()
        self._frozen: Session | None = None  # the session whose freeze this process holds
        self._watchdog: threading.Timer | None = None
        self._let_go: dict[uuid.UUID, str] = {}  # set → why its freeze was let go before thaw was asked
        self._connections: set[_Connection] = set()
        self._stop = threading.Event()

    # -- serving ------------------------------------------------------------------------------------------------

    def identity(self, offered: Collection[object] | None = None) -> dict[str, Any]:
        """The `hello` reply; `protocol` is the highest version both sides speak (given the peer's `offered`)."""
        class_id = self.writer.class_id
        with self._state:
            frozen = self._frozen is not None
        return {
            "protocol": PROTOCOL_VERSION if offered is None else common_version(offered),
            "versions": list(SUPPORTED_VERSIONS),
            "kind": self.writer.kind,
            "tier": self.writer.tier.name.lower(),
            "writer_id": str(self.writer.writer_id),
            "class_id": str(class_id) if class_id is not None else None,
            "instance_name": self.writer.instance_name,
            "pid": os.getpid(),
            "uid": os.geteuid(),
            "frozen": frozen,
            "snapport": __version__,
        }

    def serve_forever(self) -> None:
        """Accept connections until `stop()`; each one is served by its own thread."""
        self.listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    break
                raise
            conn.settimeout(None)
            threading.Thread(target=self._serve, args=(conn,), name="writer-connection", daemon=True).start()

    def request_stop(self) -> None:
        """Make `serve_forever` return (safe from a signal handler); then call `stop`."""
        self._stop.set()

    def stop(self) -> None:
        """Stop accepting, close every connection, and let go of anything held (a service stop is an abort)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self.listener.close()
        with self._state:
            connections = list(self._connections)
            frozen = self._frozen
        for c in connections:
            with contextlib.suppress(OSError):
                c.sock.shutdown(socket.SHUT_RDWR)
        sessions = {c.session.set_id: c.session for c in connections if c.session is not None and c.needs_abort}
        if frozen is not None:
            sessions[frozen.set_id] = frozen
        for session in sessions.values():
            self._abort(session, "the writer service is stopping")

    def _serve(self, sock: socket.socket) -> None:
        with sock:
            cred = peer_cred(sock)
            if cred.uid not in (0, os.geteuid()):
                log(f"refused a connection from pid {cred.pid}: uid {cred.uid} is neither root nor {os.geteuid()}")
                self._send(sock, {"id": None, "ok": False, "error": f"uid {cred.uid} may not use this writer"})
                _hang_up(sock)
                return
            conn = _Connection(sock, cred.pid)
            with self._state:
                self._connections.add(conn)
            why = "the coordinator closed the connection"
            try:
                why = self._converse(conn) or why
                _hang_up(sock)
            except Exception as exc:  # a bug here must not leave a session open
                why = f"serving the connection failed: {type(exc).__name__}: {exc}"
                log(why)
            finally:
                with self._state:
                    self._connections.discard(conn)
                if conn.needs_abort and conn.session is not None:
                    self._abort(conn.session, f"{why} (pid {conn.pid}) before the set was made")

    def _converse(self, conn: _Connection) -> str | None:
        """Answer requests until the connection ends; why it ended, if not by a plain hang-up."""
        reader = LineReader(conn.sock)
        while not self._stop.is_set():
            try:
                line = reader.read_line()
            except WriterError as exc:
                self._send(conn.sock, {"id": None, "ok": False, "error": exc.message})
                return f"the coordinator sent {exc.message}"
            except OSError as exc:
                return f"the connection failed: {exc}"
            if line is None:
                return None
            reply = self._answer(conn, line)
            if not self._send(conn.sock, reply):
                return "the coordinator went away before the reply"
            if reply.get("id") is None:  # a request it could not even read: drop the connection
                return f"the coordinator sent {reply['error']}"
        return "the writer service is stopping"

    @staticmethod
    def _send(sock: socket.socket, reply: Mapping[str, Any]) -> bool:
        try:
            sock.sendall(encode(reply))
        except OSError:
            return False
        return True

    # -- requests -----------------------------------------------------------------------------------------------

    def _parse(self, line: bytes) -> _Request | dict[str, Any]:
        try:
            f = Fields(decode(line), "request")
            rid = f.integer("id")
        except WriterError as exc:
            return {"id": None, "ok": False, "error": exc.message}
        try:
            version = f.integer("v")
            if version not in SUPPORTED_VERSIONS:
                return {
                    "id": rid,
                    "ok": False,
                    "error": f"protocol version {version} is not spoken here (this writer speaks "
                    f"{', '.join(map(str, SUPPORTED_VERSIONS))})",
                    "versions": list(SUPPORTED_VERSIONS),
                }
            event = f.text("event")
            deadline = Deadline.after(f.seconds("deadline_s")) if event != HELLO else Deadline.after(5.0)
        except WriterError as exc:
            return {"id": rid, "ok": False, "error": exc.message}
        return _Request(rid, event, deadline, f)

    def _answer(self, conn: _Connection, line: bytes) -> dict[str, Any]:
        request = self._parse(line)
        if isinstance(request, dict):
            return request
        try:
            result = self._dispatch(conn, request)
        except SnapportError as exc:
            reply = {"id": request.id, "ok": False, "error": exc.message, "code": exc.code}
        except Exception as exc:  # a writer bug: report it, keep serving
            reply = {"id": request.id, "ok": False, "error": f"{type(exc).__name__}: {exc}", "code": "INTERNAL"}
        else:
            reply = {"id": request.id, "ok": True, **result}
        entries = self.writer.take_event_log()
        if entries:
            reply["log"] = log_json(entries)
        return reply

    def _dispatch(self, conn: _Connection, request: _Request) -> dict[str, Any]:
        w, d, f = self.writer, request.deadline, request.fields
        if request.event == HELLO:
            return self.identity(f.items("versions"))
        try:
            event = WriterEvent(request.event)
        except ValueError:
            raise protocol_error(f"unknown event {request.event!r}") from None
        if event is WriterEvent.IDENTIFY:
            return {"metadata": metadata_to_json(self._run(event, d, lambda: w.identify(d)))}
        if event in (WriterEvent.PRE_RESTORE, WriterEvent.POST_RESTORE):
            if f.integer("v") < RESTORE_VERSION or not f.has("restore"):
                raise WriterError(
                    f"{event.value} needs protocol version {RESTORE_VERSION} (its request says where the files land); "
                    "upgrade the coordinator's snapport"
                )
            restore = restore_from_json(f.data.get("restore"))
            call = w.pre_restore if event is WriterEvent.PRE_RESTORE else w.post_restore
            self._run(event, d, lambda: call(restore, d))
            return {}
        session = session_from_json(f.data.get("session"))
        if event in (WriterEvent.PREPARE_BACKUP, WriterEvent.PREPARE_SNAPSHOT, WriterEvent.FREEZE, WriterEvent.THAW):
            conn.session, conn.needs_abort = session, True
        if event is WriterEvent.PREPARE_BACKUP:
            components = f.texts("components")
            self._run(event, d, lambda: w.prepare_backup(session, components, d))
        elif event is WriterEvent.PREPARE_SNAPSHOT:
            self._run(event, d, lambda: w.prepare_snapshot(session, d))
        elif event is WriterEvent.FREEZE:
            asked = time.monotonic()
            self._run(event, d, lambda: w.freeze(session, d))
            self._hold(session, asked)
        elif event is WriterEvent.THAW:
            let_go = self._release(session)
            self._run(event, d, lambda: w.thaw(session, d))
            if let_go is not None:
                raise WriterError(f"{let_go}, before thaw was asked; the snapshot may be inconsistent")
        elif event is WriterEvent.POST_SNAPSHOT:
            metadata = self._run(event, d, lambda: dict(w.post_snapshot(session, d)))
            conn.needs_abort = False  # the set is made: nothing is held, nothing to undo if the line drops now
            return {"metadata": metadata}
        elif event is WriterEvent.ABORT:
            self._release(session)
            conn.needs_abort = False
            self._run(event, d, lambda: w.abort(session, d))
        elif event is WriterEvent.BACKUP_COMPLETE:
            succeeded = f.data.get("succeeded", {})
            if not isinstance(succeeded, dict) or not all(isinstance(v, bool) for v in succeeded.values()):
                raise protocol_error("request: 'succeeded' must map component paths to true/false")
            self._run(event, d, lambda: w.backup_complete(session, succeeded, d))
        elif event is WriterEvent.BACKUP_SHUTDOWN:
            self._release(session)
            conn.needs_abort = False
            self._run(event, d, lambda: w.backup_shutdown(session, d))
        return {}

    # -- bounds and the freeze watchdog -------------------------------------------------------------------------

    def _run(self, event: WriterEvent, deadline: Deadline, call: Callable[[], T]) -> T:
        """Run one writer event in a worker thread, at most until `deadline` (events queue one behind another)."""
        budget_s = deadline.remaining()
        result: list[T] = []
        failure: list[BaseException] = []

        def work() -> None:
            if not self._events.acquire(timeout=max(0.0, deadline.remaining())):
                failure.append(FreezeTimeout(f"{event.value}: the writer was busy with an earlier event"))
                return
            try:
                result.append(call())
            except BaseException as exc:
                failure.append(exc)
            finally:
                self._events.release()

        worker = threading.Thread(target=work, name=f"writer-{event.value}", daemon=True)
        worker.start()
        worker.join(budget_s)
        if worker.is_alive():
            self._watch_wedge(worker, event)
            raise FreezeTimeout(f"{event.value} did not finish within {budget_s:.3g} s")
        if failure:
            raise failure[0]
        return result[0]

    def _watch_wedge(self, worker: threading.Thread, event: WriterEvent) -> None:
        if self.wedge_grace_s is None:
            return

        def check() -> None:
            worker.join(self.wedge_grace_s)
            if worker.is_alive():
                log(
                    f"{event.value} is still running {self.wedge_grace_s:g} s after its deadline; exiting so that "
                    "nothing the writer holds outlives it"
                )
                os._exit(EXIT_WEDGED)

        threading.Thread(target=check, name="writer-wedge", daemon=True).start()

    def _hold(self, session: Session, asked: float) -> None:
        """The freeze of `session` is held: let it go by itself when the freeze window runs out."""
        window_s = session.freeze_window_s
        with self._state:
            self._cancel_watchdog()
            self._frozen = session
            self._let_go.pop(session.set_id, None)
            timer = threading.Timer(max(0.0, asked + window_s - time.monotonic()), self._expire, args=(session,))
            timer.daemon = True
            self._watchdog = timer
            timer.start()

    def _expire(self, session: Session) -> None:
        with self._state:
            if self._frozen is not session:
                return
            self._let_go[session.set_id] = (
                f"the freeze was let go when the freeze window ({session.freeze_window_s:g} s) ran out"
            )
        self._abort(session, "the freeze window ran out before thaw or abort came")

    def _release(self, session: Session) -> str | None:
        """Thaw or abort came for `session`: stop its watchdog; say whether the freeze was already let go."""
        with self._state:
            if self._frozen is not None and self._frozen.set_id == session.set_id:
                self._cancel_watchdog()
                self._frozen = None
            return self._let_go.pop(session.set_id, None)

    def _cancel_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _abort(self, session: Session, why: str) -> None:
        """Abort the writer for `session` by itself (no coordinator is there to ask)."""
        with self._state:
            if self._frozen is not None and self._frozen.set_id == session.set_id:
                self._cancel_watchdog()
                self._frozen = None
        log(f"set {session.set_id}: {why}; aborting")
        deadline = Deadline.after(self.abort_timeout_s)
        try:
            self._run(WriterEvent.ABORT, deadline, lambda: self.writer.abort(session, deadline))
        except SnapportError as exc:
            log(f"set {session.set_id}: abort failed: {exc.message}")


def _hang_up(sock: socket.socket) -> None:
    """Close our side after a last reply, reading what the peer still sends: a Unix socket closed with unread data
    resets the connection, and the peer would lose the reply."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.5)
        while sock.recv(65536):
            pass


# -- `snapport writer run` --------------------------------------------------------------------------------------


def _user_ids(user: str) -> tuple[int, int]:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise UsageError(f"writer config: no user {user!r}") from None
    return entry.pw_uid, entry.pw_gid


def bind_registered(path: Path, user: str | None) -> socket.socket:
    """Bind the writer's socket at `path` (mode 0600), owned by `user` if given, and listen on it — after dropping
    to `user`, so that the kernel records that user as the listener (what the coordinator's SO_PEERCRED sees)."""
    ids = _user_ids(user) if user is not None else None
    if ids is not None and os.geteuid() != 0 and ids[0] != os.geteuid():
        raise UsageError(f"only root can run a writer as another user ({user})")
    with contextlib.suppress(FileNotFoundError):
        st = path.lstat()
        if not stat.S_ISSOCK(st.st_mode):
            raise UsageError(f"{path} exists and is not a socket; remove it")
        listener = probe_listener(path)
        if listener is not None:
            raise UsageError(f"this writer is already running (pid {listener}, socket {path})")
        path.unlink()  # stale: its process is gone
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        with unix_address(path) as address:
            sock.bind(address)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot create {path}: {exc.strerror or exc}") from None
    finally:
        os.umask(old_umask)
    path.chmod(0o600)
    if ids is not None and ids[0] != os.geteuid():
        os.chown(path, *ids)
        os.initgroups(str(user), ids[1])
        os.setgid(ids[1])
        os.setuid(ids[0])
    sock.listen(16)
    return sock


def notify_ready() -> None:
    """Tell systemd (Type=notify) that the writer is registered and answering."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    target = "\0" + address[1:] if address.startswith("@") else address
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", target)


@dataclass
class Registered:
    """A writer built, bound and listening, ready to serve."""

    service: WriterService
    socket_path: Path
    user: str | None

    def close(self) -> None:
        self.service.stop()
        with contextlib.suppress(OSError):  # a writer running as another user cannot: its directory is root's
            self.socket_path.unlink()


def register(kind: str, config: WriterConfig, home: Path, host: str) -> Registered:
    """Build the writer (as the invoking user), register its socket in `home`'s writer registry and listen."""
    writer = build_writer(kind, config, host)
    directory = registry_dir(home)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_registry_dir(directory)
    path = socket_path(directory, writer.writer_id)
    listener = bind_registered(path, config.user)
    return Registered(WriterService(writer, listener), path, config.user)
