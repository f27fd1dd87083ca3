"""An in-process writer that records the events it is given, and the socket a writer process listens on: what the
writer protocol's tests serve, in this process or in a child (which imports this module, not the tests)."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from snapport.model import Component, ComponentType, EventKind, FileSpec, WriterMetadata
from snapport.writers.base import Deadline, LogEntry, RestoreContext, Session, Tier, Writer
from snapport.writers.protocol import unix_address

CLASS_ID = uuid.uuid5(uuid.NAMESPACE_DNS, "test.fake")


def metadata(writer_id: uuid.UUID) -> WriterMetadata:
    return WriterMetadata(
        writer_id=writer_id,
        class_id=CLASS_ID,
        name="fake",
        instance_name="fake instance",
        components=(
            Component(
                type=ComponentType.DATABASE,
                name="db",
                logical_path="cluster",
                database_files=(FileSpec("/srv/data", "pg", "base*", recursive=True),),
                log_files=(FileSpec("/srv/data", "pg/wal", "0*"),),
            ),
        ),
    )


def bind(path: Path) -> socket.socket:
    """A listening socket at `path`, mode 0600, as a writer process registers one."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with unix_address(path) as address:
        listener.bind(address)
    path.chmod(0o600)
    listener.listen()
    return listener


class RecordingWriter(Writer):
    """An in-process writer that records its events; `freeze_s` makes its freeze take that long."""

    kind = "fake"
    tier = Tier.APPLICATION
    class_id = CLASS_ID

    def __init__(self, freeze_s: float = 0.0) -> None:
        self.writer_id = uuid.uuid4()
        self.instance_name = "fake instance"
        self.freeze_s = freeze_s
        self.events: list[tuple[str, uuid.UUID | None]] = []
        self.aborted = threading.Event()
        self.restores: list[RestoreContext] = []

    def identify(self, deadline: Deadline) -> WriterMetadata:
        return metadata(self.writer_id)

    def prepare_backup(self, session: Session, components: tuple[str, ...], deadline: Deadline) -> None:
        self.events.append(("prepare-backup", session.set_id))

    def prepare_snapshot(self, session: Session, deadline: Deadline) -> None:
        self.events.append(("prepare-snapshot", session.set_id))

    def freeze(self, session: Session, deadline: Deadline) -> None:
        time.sleep(self.freeze_s)
        self.events.append(("freeze", session.set_id))

    def thaw(self, session: Session, deadline: Deadline) -> None:
        self.events.append(("thaw", session.set_id))

    def post_snapshot(self, session: Session, deadline: Deadline) -> Mapping[str, str]:
        self.events.append(("post-snapshot", session.set_id))
        return {"cluster\\db": "label"}

    def abort(self, session: Session, deadline: Deadline) -> None:
        self.events.append(("abort", session.set_id))
        self.aborted.set()

    def backup_complete(self, session: Session, succeeded: Mapping[str, bool], deadline: Deadline) -> None:
        self.events.append(("backup-complete", session.set_id))

    def backup_shutdown(self, session: Session, deadline: Deadline) -> None:
        self.events.append(("backup-shutdown", session.set_id))

    def pre_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        self.events.append(("pre-restore", restore.set_id))
        self.restores.append(restore)

    def post_restore(self, restore: RestoreContext, deadline: Deadline) -> None:
        self.events.append(("post-restore", restore.set_id))
        self.restores.append(restore)

    def take_event_log(self) -> list[LogEntry]:
        return [LogEntry(EventKind.HOOK_OUTPUT, f"after {len(self.events)} events")]
