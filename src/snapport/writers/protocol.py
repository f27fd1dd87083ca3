"""The out-of-process writer protocol, versions 1 and 2: JSON lines over a local Unix socket (docs/writer-protocol.md).

Both halves share this module: framing (one JSON object per line, at most `MAX_LINE_BYTES`), peer credentials
(SO_PEERCRED), and the JSON spelling of the values that cross the socket (`Session`, `RestoreContext`,
`WriterMetadata`). Version 2 adds the restore context to `pre-restore`/`post-restore`; nothing else changed. Anything
malformed is a `WriterError` whose message starts with "protocol error".
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import struct
import time
import uuid
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapport.errors import PathEscape, SnapportError, WriterError
from snapport.model import (
    Attr,
    BackupSchema,
    BackupType,
    Component,
    ComponentType,
    Context,
    EventKind,
    FileSpec,
    RestoreMethod,
    RestoreMethodSpec,
    UsageType,
    Volume,
    WriterMetadata,
    WriterRestore,
)
from snapport.model.export import to_jsonable
from snapport.writers.base import LogEntry, RestoreContext, Session

PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
RESTORE_VERSION = 2  # the first version whose restore events say where the files land
MAX_LINE_BYTES = 1 << 20  # one message; a writer's metadata is a few KiB
REGISTRY_DIR_NAME = "writers.d"  # under $SNAPPORT_HOME: one `<writer-id>.sock` per registered writer
SOCKET_SUFFIX = ".sock"
HELLO = "hello"

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_SUN_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path), its terminating NUL included


def protocol_error(message: str) -> WriterError:
    return WriterError(f"protocol error: {message}")


@dataclass(frozen=True, slots=True)
class PeerCred:
    """Who is at the other end of a connected Unix socket (as the kernel saw it at connect or listen time)."""

    pid: int
    uid: int
    gid: int


def peer_cred(sock: socket.socket) -> PeerCred:
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return PeerCred(pid, uid, gid)


@contextlib.contextmanager
def unix_address(path: Path) -> Iterator[str]:
    """An address for binding or connecting to the socket at `path`, however deep it is: a Unix socket address
    holds at most 107 bytes, so a longer path is reached through its directory's descriptor in /proc/self/fd."""
    if len(os.fsencode(path)) < _SUN_PATH_MAX:
        yield str(path)
        return
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


# -- framing --------------------------------------------------------------------------------------------------


def encode(message: Mapping[str, Any]) -> bytes:
    """One message as one line; refuses what the other side would refuse as too long."""
    line = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode() + b"\n"
    if len(line) > MAX_LINE_BYTES:
        raise protocol_error(f"a {message.get('event', 'reply')} message of {len(line)} bytes is over the limit")
    return line


def decode(line: bytes) -> dict[str, Any]:
    """A line (without its newline) back into an object; `WriterError` if it is not a JSON object."""
    try:
        value = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        shown = line[:60].decode("utf-8", "replace")
        raise protocol_error(f"a line that is not JSON: {shown!r}{'...' if len(line) > 60 else ''}") from None
    if not isinstance(value, dict):
        raise protocol_error(f"a JSON {type(value).__name__} where an object was expected")
    return value


class LineReader:
    """Reads newline-terminated lines from a stream socket, never buffering more than `limit` bytes of one."""

    def __init__(self, sock: socket.socket, limit: int = MAX_LINE_BYTES) -> None:
        self._sock = sock
        self._limit = limit
        self._buffer = bytearray()

    def read_line(self, timeout_s: float | None = None) -> bytes | None:
        """The next line without its newline; None at end of stream (a partial last line counts as garbage).

        `TimeoutError` if no whole line came within `timeout_s`; `WriterError` for a line over the limit.
        """
        end = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            cut = self._buffer.find(b"\n")
            if cut >= 0:
                line = bytes(self._buffer[:cut])
                del self._buffer[: cut + 1]
                if len(line) + 1 > self._limit:
                    raise protocol_error(f"a line longer than {self._limit} bytes")
                return line
            if len(self._buffer) > self._limit:
                raise protocol_error(f"a line longer than {self._limit} bytes")
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    raise TimeoutError("no complete line in time")
                self._sock.settimeout(left)
            else:
                self._sock.settimeout(None)
            chunk = self._sock.recv(65536)
            if not chunk:
                if self._buffer:
                    raise protocol_error("the stream ended in the middle of a line")
                return None
            self._buffer += chunk


# -- checked reading of decoded objects ------------------------------------------------------------------------


class Fields:
    """Typed, checked access to a decoded JSON object; every mismatch is a protocol error naming the field."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise protocol_error(f"{where} is not an object")
        self.data: dict[str, Any] = value
        self.where = where

    def _missing(self, key: str, what: str) -> WriterError:
        return protocol_error(f"{self.where} has no {what} field {key!r}")

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def text(self, key: str, default: str | None = None) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str):
            raise self._missing(key, "text")
        return value

    def optional_text(self, key: str) -> str | None:
        return self.text(key) if self.has(key) else None

    def flag(self, key: str, default: bool | None = None) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self._missing(key, "true/false")
        return value

    def integer(self, key: str) -> int:
        value = self.data.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._missing(key, "integer")
        return value

    def seconds(self, key: str) -> float:
        value = self.data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise self._missing(key, "non-negative number")
        return float(value)

    def items(self, key: str) -> list[Any]:
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise self._missing(key, "list")
        return value

    def texts(self, key: str) -> tuple[str, ...]:
        values = self.items(key)
        if not all(isinstance(v, str) for v in values):
            raise protocol_error(f"{self.where}: {key!r} must be a list of text")
        return tuple(values)

    def text_map(self, key: str) -> dict[str, str]:
        value = self.data.get(key, {})
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise protocol_error(f"{self.where}: {key!r} must map text to text")
        return dict(value)

    def fields(self, key: str) -> Fields:
        return Fields(self.data.get(key), f"{self.where}.{key}")


@contextlib.contextmanager
def converting(where: str) -> Iterator[None]:
    """Turn a model constructor's refusal (a bad enum value, a path that escapes its volume) into a protocol error."""
    try:
        yield
    except WriterError:
        raise
    except (ValueError, KeyError, TypeError, PathEscape) as exc:
        reason = exc.message if isinstance(exc, SnapportError) else str(exc)
        raise protocol_error(f"{where}: {reason}") from None


def _uuid(text: str, where: str) -> uuid.UUID:
    with converting(where):
        return uuid.UUID(text)


# -- Session --------------------------------------------------------------------------------------------------


def session_to_json(session: Session) -> dict[str, Any]:
    return {
        "set_id": str(session.set_id),
        "context": session.context.value,
        "attrs": session.attrs.names(),
        "backup_type": session.backup_type.value,
        "volumes": [to_jsonable(v) for v in session.volumes],
        "freeze_window_s": session.freeze_window_s,
        "backup_metadata": dict(session.backup_metadata),
    }


def session_from_json(value: object) -> Session:
    f = Fields(value, "session")
    volumes = []
    for item in f.items("volumes"):
        v = Fields(item, "session volume")
        with converting("session volume"):
            volumes.append(
                Volume(
                    host=v.text("host"),
                    mount_point=v.text("mount_point"),
                    fs_type=v.text("fs_type"),
                    fs_uuid=v.text("fs_uuid"),
                    device=v.text("device", ""),
                )
            )
    with converting("session"):
        return Session(
            set_id=uuid.UUID(f.text("set_id")),
            context=Context(f.text("context")),
            attrs=Attr.from_names(f.texts("attrs")),
            backup_type=BackupType(f.text("backup_type")),
            volumes=tuple(volumes),
            freeze_window_s=f.seconds("freeze_window_s"),
            backup_metadata=f.text_map("backup_metadata"),
        )


def common_version(offered: Collection[object]) -> int:
    """The version to speak with a peer offering `offered`: the highest both speak (this side's own if none)."""
    common = [v for v in SUPPORTED_VERSIONS if v in offered]
    return max(common) if common else PROTOCOL_VERSION


# -- RestoreContext -------------------------------------------------------------------------------------------


def restore_to_json(restore: RestoreContext) -> dict[str, Any]:
    return {
        "set_id": str(restore.set_id),
        "backup_type": restore.backup_type.value,
        "target": str(restore.target),
        "components": list(restore.components),
        "backup_metadata": dict(restore.backup_metadata),
        "originating_host": restore.originating_host,
    }


def restore_from_json(value: object) -> RestoreContext:
    f = Fields(value, "restore")
    with converting("restore"):
        return RestoreContext(
            set_id=uuid.UUID(f.text("set_id")),
            backup_type=BackupType(f.text("backup_type")),
            target=Path(f.text("target")),
            components=f.texts("components"),
            backup_metadata=f.text_map("backup_metadata"),
            originating_host=f.text("originating_host", ""),
        )


# -- WriterMetadata -------------------------------------------------------------------------------------------


def metadata_to_json(metadata: WriterMetadata) -> dict[str, Any]:
    value: dict[str, Any] = to_jsonable(metadata)
    return value


def _file_spec(value: object) -> FileSpec:
    f = Fields(value, "file spec")
    with converting("file spec"):
        return FileSpec(
            volume=f.text("volume"),
            path=f.text("path"),
            pattern=f.text("pattern", "*"),
            recursive=f.flag("recursive", False),
            alternate_location=f.optional_text("alternate_location"),
        )


def _component(value: object) -> Component:
    f = Fields(value, "component")
    with converting("component"):
        return Component(
            type=ComponentType(f.text("type")),
            name=f.text("name"),
            logical_path=f.text("logical_path", ""),
            caption=f.text("caption", ""),
            selectable=f.flag("selectable", True),
            selectable_for_restore=f.flag("selectable_for_restore", True),
            files=tuple(_file_spec(s) for s in f.items("files")),
            database_files=tuple(_file_spec(s) for s in f.items("database_files")),
            log_files=tuple(_file_spec(s) for s in f.items("log_files")),
        )


def metadata_from_json(value: object) -> WriterMetadata:
    """A writer's metadata from its JSON form, checked field by field and by the model's own validators."""
    f = Fields(value, "metadata")
    restore = f.fields("restore_method") if f.has("restore_method") else Fields({}, "metadata.restore_method")
    with converting("metadata"):
        return WriterMetadata(
            writer_id=_uuid(f.text("writer_id"), "metadata"),
            class_id=_uuid(f.text("class_id"), "metadata"),
            name=f.text("name"),
            instance_name=f.text("instance_name", ""),
            usage=UsageType(f.text("usage", UsageType.USER_DATA.value)),
            components=tuple(_component(c) for c in f.items("components")),
            excludes=tuple(_file_spec(s) for s in f.items("excludes")),
            restore_method=RestoreMethodSpec(
                method=RestoreMethod(restore.text("method", RestoreMethod.RESTORE_IF_CAN_REPLACE.value)),
                service=restore.text("service", ""),
                writer_restore=WriterRestore(restore.text("writer_restore", WriterRestore.NEVER.value)),
                reboot_required=restore.flag("reboot_required", False),
            ),
            backup_schema=BackupSchema.from_names(f.texts("backup_schema")),
            version=f.text("version", "1.0"),
        )


# -- replies --------------------------------------------------------------------------------------------------


def check_reply(reply: dict[str, Any], expected_id: int) -> Fields:
    """A reply's envelope: `id` must answer the request sent, `ok` must be there, a refusal must say why."""
    f = Fields(reply, "reply")
    if reply.get("id") is None and reply.get("ok") is False and isinstance(reply.get("error"), str):
        raise WriterError(f"the writer process refused the request: {reply['error']}")  # it could not read it
    if "id" not in reply:
        raise protocol_error(f"a reply without an id (to request {expected_id})")
    if reply["id"] != expected_id:
        raise protocol_error(f"a reply to request {reply['id']!r} while waiting for request {expected_id}")
    f.flag("ok")
    if not reply["ok"]:
        f.text("error")
    return f


def log_entries(reply: Fields) -> list[LogEntry]:
    """A reply's lines for the set's event log. A kind this snapport does not know (a newer or foreign writer
    process's) is kept as `writer-log`, the message prefixed with it: nothing a writer said is lost, and the
    catalog records only kinds of the one enum."""
    entries = []
    for item in reply.items("log"):
        entry = Fields(item, "log entry")
        kind, message = entry.text("kind"), entry.text("message")
        try:
            entries.append(LogEntry(EventKind(kind), message))
        except ValueError:
            entries.append(LogEntry(EventKind.WRITER_LOG, f"{kind}: {message}"))
    return entries


def log_json(entries: list[LogEntry]) -> list[dict[str, str]]:
    """The `log` field of a reply, as `log_entries` reads it."""
    return [{"kind": entry.kind.value, "message": entry.message} for entry in entries]
