"""`RemoteWriter`: a writer running in its own process, reached over its registered Unix socket.

The coordinator's half of the protocol (docs/writer-protocol.md). A writer process registers itself as
`$SNAPPORT_HOME/writers.d/<writer-id>.sock`; the directory must be root's (or the home owner's) and closed to
everyone else, and the process listening on a socket must run as the user who owns the socket file (checked with
SO_PEERCRED). Each event is one request line and one reply line, bounded by the event's deadline through the
socket's timeout. Once the connection breaks (a timeout, a protocol error, the process died) no further event
reaches the writer: `abort` and `backup_shutdown` then succeed at once, since a writer process aborts by itself
when its connection closes, and `thaw` fails if the writer had frozen.
"""

from __future__ import annotations

import contextlib
import socket
import stat
import threading
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from snapport.errors import FreezeTimeout, SnapportError, UsageError, WriterError
from snapport.model import Volume, WriterMetadata
from snapport.writers.base import Deadline, LogEntry, RestoreContext, Session, Tier, Writer, WriterEvent
from snapport.writers.protocol import (
    HELLO,
    REGISTRY_DIR_NAME,
    RESTORE_VERSION,
    SOCKET_SUFFIX,
    SUPPORTED_VERSIONS,
    Fields,
    LineReader,
    check_reply,
    converting,
    decode,
    encode,
    log_entries,
    metadata_from_json,
    peer_cred,
    restore_to_json,
    session_to_json,
    unix_address,
)

CONNECT_TIMEOUT_S = 5.0  # connect and hello
REPLY_MARGIN_S = 0.05  # give up this much before the deadline, so the error is this writer's own and on time
WRITER_MARGIN_S = 0.1  # tell the writer a deadline this much earlier, so its reply can arrive in time


def registry_dir(home: Path) -> Path:
    """Where a host's out-of-process writers register: `$SNAPPORT_HOME/writers.d`."""
    return home / REGISTRY_DIR_NAME


def socket_path(directory: Path, writer_id: uuid.UUID) -> Path:
    return directory / f"{writer_id}{SOCKET_SUFFIX}"


def writer_id_of(path: Path) -> uuid.UUID:
    """The writer id a socket is registered under (its file name, `<writer-id>.sock`)."""
    stem = path.name.removesuffix(SOCKET_SUFFIX)
    try:
        writer_id = uuid.UUID(stem)
    except ValueError:
        writer_id = None
    if writer_id is None or not path.name.endswith(SOCKET_SUFFIX) or str(writer_id) != stem:
        raise UsageError(f"{path} is not a registered writer's socket (<writer-id>{SOCKET_SUFFIX})")
    return writer_id


def check_registry_dir(directory: Path) -> None:
    """Refuse a registry directory someone other than root (or the home's owner) could put a socket in."""
    try:
        st = directory.lstat()
        home_owner = directory.parent.stat().st_uid
    except OSError as exc:
        raise WriterError(f"writer registry {directory}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise WriterError(f"writer registry {directory} is not a directory")
    if st.st_uid not in (0, home_owner):
        raise WriterError(f"writer registry {directory} is owned by uid {st.st_uid}, not root or the home's owner")
    if st.st_mode & 0o077:
        raise WriterError(
            f"writer registry {directory} is open to group or others (mode {stat.S_IMODE(st.st_mode):o}); chmod 700 it"
        )


def probe_listener(path: Path, timeout_s: float = 1.0) -> int | None:
    """The pid of the process listening on `path`, or None if nothing does (a stale socket)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        try:
            with unix_address(path) as address:
                sock.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        return peer_cred(sock).pid


@dataclass(frozen=True, slots=True)
class Identity:
    """What a writer process says of itself in its `hello` reply."""

    protocol: int
    kind: str
    tier: Tier
    writer_id: uuid.UUID
    class_id: uuid.UUID | None
    instance_name: str
    pid: int
    uid: int
    frozen: bool
    version: str


def _identity(reply: Fields) -> Identity:
    protocol = reply.integer("protocol")
    if protocol not in SUPPORTED_VERSIONS:
        raise WriterError(
            f"protocol version mismatch: the writer process speaks version {protocol}, this snapport "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    with converting("hello"):
        class_id = reply.optional_text("class_id")
        return Identity(
            protocol=protocol,
            kind=reply.text("kind"),
            tier=Tier[reply.text("tier").upper()],
            writer_id=uuid.UUID(reply.text("writer_id")),
            class_id=uuid.UUID(class_id) if class_id is not None else None,
            instance_name=reply.text("instance_name"),
            pid=reply.integer("pid"),
            uid=reply.integer("uid"),
            frozen=reply.flag("frozen", False),
            version=reply.text("snapport", ""),
        )


class RemoteWriter(Writer):
    """A `Writer` whose events go to a writer process over its registered socket.

    Constructing one connects and says hello; if that fails, `unavailable` says why (and `stale` whether no
    process listens at all), and every event raises it.
    """

    def __init__(self, path: Path, *, connect_timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self.socket_path = Path(path)
        self.writer_id = writer_id_of(self.socket_path)
        self.instance_name = str(self.socket_path)
        self.identity: Identity | None = None
        self.stale = False
        self.unavailable: WriterError | None = None
        self._sock: socket.socket | None = None
        self._reader: LineReader | None = None
        self._next_id = 0
        self._lock = threading.Lock()  # one request at a time on the connection
        self._broken: str | None = None  # why no further event can reach the writer
        self._frozen = False
        self._log: list[LogEntry] = []
        try:
            self._connect(connect_timeout_s)
        except WriterError as exc:
            self.unavailable = exc
            self._break(exc.message)

    @property
    def kind(self) -> str:
        return self.identity.kind if self.identity is not None else "remote"

    @property
    def tier(self) -> Tier:
        return self.identity.tier if self.identity is not None else Tier.APPLICATION

    @property
    def class_id(self) -> uuid.UUID | None:
        return self.identity.class_id if self.identity is not None else None

    def close(self) -> None:
        """Hang up (before post-snapshot, the writer process takes that as an abort)."""
        with self._lock:
            self._break("the connection was closed by the coordinator")

    def take_event_log(self) -> list[LogEntry]:
        """Lines the writer process asked to keep in the set's event log, since the last call."""
        with self._lock:
            taken, self._log = self._log, []
            return taken

    # -- connection -------------------------------------------------------------------------------------------

    def _connect(self, timeout_s: float) -> None:
        path = self.socket_path
        check_registry_dir(path.parent)
        try:
            st = path.lstat()
        except FileNotFoundError:
            self.stale = True
            raise WriterError(f"no writer is registered at {path}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise WriterError(f"{path} is not a socket")
        if st.st_mode & 0o007:
            raise WriterError(f"{path} is open to others (mode {stat.S_IMODE(st.st_mode):o}); refusing it")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            with unix_address(path) as address:
                sock.connect(address)
        except (ConnectionRefusedError, FileNotFoundError):
            sock.close()
            self.stale = True
            raise WriterError(f"no writer process listens on {path} (a stale registration)") from None
        except OSError as exc:
            sock.close()
            raise WriterError(f"cannot connect to {path}: {exc.strerror or exc}") from None
        cred = peer_cred(sock)
        if cred.uid != st.st_uid:
            sock.close()
            raise WriterError(
                f"refusing {path}: the socket is owned by uid {st.st_uid} but the process listening on it "
                f"(pid {cred.pid}) runs as uid {cred.uid}"
            )
        self._sock, self._reader = sock, LineReader(sock)
        try:
            reply = self._exchange(HELLO, {"versions": list(SUPPORTED_VERSIONS)}, Deadline.after(timeout_s))
            identity = _identity(reply)
        except WriterError as exc:
            raise WriterError(f"{path}: hello failed: {exc.message}") from None
        if identity.writer_id != self.writer_id:
            raise WriterError(f"{path}: the process there says it is writer {identity.writer_id}")
        self.identity = replace(identity, pid=cred.pid, uid=cred.uid)  # the kernel's word, not the process's
        self.instance_name = identity.instance_name

    def _break(self, reason: str) -> None:
        self._broken = reason
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = self._reader = None

    def _exchange(self, event: str, payload: Mapping[str, Any], deadline: Deadline) -> Fields:
        """Send one request and read its reply (call with the lock held, or from the constructor)."""
        if self._broken is not None or self._sock is None or self._reader is None:
            raise WriterError(self._broken or "not connected")
        wait_s = deadline.remaining() - REPLY_MARGIN_S
        if wait_s <= 0:
            raise FreezeTimeout(f"no time was left to send {event} to the writer process")
        request_id, self._next_id = self._next_id, self._next_id + 1
        request = {
            "v": self.identity.protocol if self.identity is not None else min(SUPPORTED_VERSIONS),
            "id": request_id,
            "event": event,
            "deadline_s": round(max(0.0, wait_s - WRITER_MARGIN_S), 3),
            **payload,
        }
        pid = self.identity.pid if self.identity is not None else "?"
        try:
            self._sock.settimeout(wait_s)
            self._sock.sendall(encode(request))
            line = self._reader.read_line(wait_s)
        except TimeoutError:
            self._break(f"the writer process (pid {pid}) did not answer {event} in time")
            raise FreezeTimeout(
                f"the writer process (pid {pid}) did not answer {event} within {wait_s:.3g} s"
            ) from None
        except WriterError as exc:
            self._break(exc.message)
            raise
        except OSError as exc:
            self._break(f"the writer process (pid {pid}) is gone: {exc.strerror or exc}")
            raise WriterError(f"writer process died during {event} (pid {pid}: {exc.strerror or exc})") from None
        if line is None:
            self._break(f"the writer process (pid {pid}) closed the connection during {event}")
            raise WriterError(f"writer process died during {event} (pid {pid} closed the connection)")
        try:
            reply = check_reply(decode(line), request_id)
            self._log.extend(log_entries(reply))
        except WriterError as exc:
            self._break(exc.message)
            raise
        if not reply.data["ok"]:
            error = reply.text("error")
            raise FreezeTimeout(error) if reply.data.get("code") == FreezeTimeout.code else WriterError(error)
        return reply

    def _request(self, event: WriterEvent, deadline: Deadline, **payload: Any) -> Fields:
        with self._lock:
            return self._exchange(event.value, payload, deadline)

    # -- the Writer protocol ------------------------------------------------------------------------------------

    def identify(self, deadline: Deadline) -> WriterMetadata:
        reply = self._request(WriterEvent.IDENTIFY, deadline)
        metadata = metadata_from_json(reply.data.get("metadata"))
        if metadata.writer_id != self.writer_id:
            raise WriterError(f"the writer process describes writer {metadata.writer_id}, not {self.writer_id}")
        return metadata

    def prepare_backup(self, session: Session, components: tuple[str, ...], deadline: Deadline) -> None:
        self._request(
            WriterEvent.PREPARE_BACKUP, deadline, session=session_to_json(session), components=list(components)
        )

    def prepare_snapshot(self, session: Session, deadline: Deadline) -> None:
        self._request(WriterEvent.PREPARE_SNAPSHOT, deadline, session=session_to_json(session))

    def freeze(self, session: Session, deadline: Deadline) -> None:
        with self._lock:
            self._exchange(WriterEvent.FREEZE.value, {"session": session_to_json(session)}, deadline)
            self._frozen = True

    def thaw(self, session: Session, deadline: Deadline) -> None:
        with self._lock:
            was_frozen, self._frozen = self._frozen, False
            if self._broken is not None:
                if was_frozen:
                    raise WriterError(f"{self._broken} after it froze; the snapshot may be inconsistent")
                return  # it never froze, and it aborts by itself now that the connection is gone
            self._exchange(WriterEvent.THAW.value, {"session": session_to_json(session)}, deadline)

    def post_snapshot(self, session: Session, deadline: Deadline) -> Mapping[str, str]:
        reply = self._request(WriterEvent.POST_SNAPSHOT, deadline, session=session_to_json(session))
        return reply.text_map("metadata")

    def abort(self, session: Session, deadline: Deadline) -> None:
        with self._lock:
            self._frozen = False
            if self._broken is not None:
                return  # a writer process aborts by itself when its connection closes (or died with its holds)
            self._exchange(WriterEvent.ABORT.value, {"session": session_to_json(session)}, deadline)

    def backup_complete(self, session: Session, succeeded: Mapping[str, bool], deadline: Deadline) -> None:
        self._request(
            WriterEvent.BACKUP_COMPLETE, deadline, session=session_to_json(session), succeeded=dict(succeeded)
        )

    def backup_shutdown(self, session: Session, deadline: Deadline) -> None:
        with self._lock:
            if self._broken is not None:
                return
            self._exchange(WriterEvent.BACKUP_SHUTDOWN.value, {"session": session_to_json(session)}, deadline)

    def pre_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        self._restore_event(WriterEvent.PRE_RESTORE, restore, deadline)

    def post_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        self._restore_event(WriterEvent.POST_RESTORE, restore, deadline)

    def _restore_event(self, event: WriterEvent, restore: RestoreContext, deadline: Deadline) -> None:
        """Restore events need version 2: a version-1 writer could not know where the files land."""
        if self.identity is not None and self.identity.protocol < RESTORE_VERSION:
            raise WriterError(
                f"the writer process (pid {self.identity.pid}) speaks protocol version {self.identity.protocol}, "
                f"whose {event.value} cannot say where the files land; upgrade it to a snapport speaking version "
                f"{RESTORE_VERSION}"
            )
        self._request(event, deadline, components=list(restore.components), restore=restore_to_json(restore))

    def __repr__(self) -> str:
        return f"RemoteWriter({str(self.socket_path)!r})"


# -- discovery ------------------------------------------------------------------------------------------------


def registrations(home: Path) -> list[Path]:
    """Every socket registered in `home`'s writer registry (none if it has no registry)."""
    directory = registry_dir(home)
    if not directory.exists():
        return []
    check_registry_dir(directory)
    return sorted(p for p in directory.iterdir() if p.name.endswith(SOCKET_SUFFIX))


@dataclass(frozen=True, slots=True)
class Discovery:
    """The registered writers that take part in a set, and the registrations nobody answers for."""

    writers: tuple[RemoteWriter, ...] = ()
    stale: tuple[Path, ...] = ()
    not_involved: tuple[RemoteWriter, ...] = ()  # closed: their files lie on none of the set's volumes


def discover(
    home: Path, volumes: Sequence[Volume], *, skip: Collection[uuid.UUID] = (), identify_timeout_s: float = 10.0
) -> Discovery:
    """The registered writers whose files lie on one of `volumes`.

    A writer that cannot be asked (it refuses, answers garbage, or fails `identify`) is kept: it may hold data on
    these volumes, so its failure is the set's to handle. A writer with no files at all takes part in every set.
    """
    mount_points = {v.mount_point for v in volumes}
    taking_part: list[RemoteWriter] = []
    stale: list[Path] = []
    not_involved: list[RemoteWriter] = []
    for path in registrations(home):
        try:
            if writer_id_of(path) in skip:
                continue
        except UsageError:
            continue  # not a registration (only root can put anything here)
        writer = RemoteWriter(path)
        if writer.stale:
            stale.append(path)
            continue
        if writer.unavailable is None:
            try:
                metadata = writer.identify(Deadline.after(identify_timeout_s))
            except SnapportError:
                pass
            else:
                on = {spec.volume for c in metadata.components for spec in c.all_files()}
                if on and not on & mount_points:
                    writer.close()
                    not_involved.append(writer)
                    continue
        taking_part.append(writer)
    return Discovery(tuple(taking_part), tuple(stale), tuple(not_involved))
