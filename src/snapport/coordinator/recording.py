"""Writing what writers did into the catalog: their events with timings, and their status."""

from __future__ import annotations

import uuid

from snapport.catalog import Catalog
from snapport.writers.guarded import GuardedWriter


def record_writer(catalog: Catalog, set_id: uuid.UUID, writer: GuardedWriter) -> None:
    """Flush the writer's new event records, the lines it asked to log (a hook's output) and its current status
    to the catalog."""
    for entry in writer.take_event_log():
        catalog.record_event(set_id, entry.kind, entry.message)
    for record in writer.take_records():
        catalog.record_writer_event(
            set_id,
            str(record.writer_id),
            record.event.value,
            started_at=record.started_at,
            duration_ms=record.duration_ms,
            ok=record.ok,
            error=record.error,
        )
    status = writer.status
    catalog.upsert_writer_status(
        str(writer.writer_id),
        class_id=str(writer.class_id),
        kind=writer.kind,
        name=writer.kind,
        instance_name=writer.instance_name,
        state=status.reported_state,
        last_error=status.last_error,
        last_freeze_ms=status.last_freeze_ms,
    )
