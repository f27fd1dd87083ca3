"""Finding the out-of-process writers registered on this host that take part in a set (docs/writer-protocol.md)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence

from snapport.coordinator.host import Host
from snapport.model import EventKind, Volume
from snapport.writers.remote import RemoteWriter, discover

DISCOVERY_IDENTIFY_S = 10.0  # asking a registered writer which files it covers


def remote_spec(writer: RemoteWriter) -> str:
    """The `--writer` spec that reaches `writer` again (so that `complete` can send it BackupComplete)."""
    return f"remote:{writer.socket_path}"


def registered_writers_for(
    host: Host, set_id: uuid.UUID, volumes: Sequence[Volume], *, skip: Collection[uuid.UUID], timeout_s: float
) -> list[RemoteWriter]:
    """The registered writers whose files lie on `volumes` (or that cannot say), connected; each one found, and
    each stale registration (no process listening), is recorded in the set's event log."""
    found = discover(host.home, volumes, skip=skip, identify_timeout_s=min(timeout_s, DISCOVERY_IDENTIFY_S))
    for path in found.stale:
        host.catalog.record_event(
            set_id, EventKind.WRITER_STALE, f"no process listens on {path}; that writer is left out"
        )
    for writer in found.writers:
        if writer.identity is not None:
            about = f"{writer.kind} ({writer.instance_name}), pid {writer.identity.pid} uid {writer.identity.uid}"
        else:
            about = f"at {writer.socket_path}, which could not be asked ({writer.unavailable})"
        host.catalog.record_event(set_id, EventKind.WRITER_DISCOVERED, f"registered writer {about} takes part")
    return list(found.writers)
