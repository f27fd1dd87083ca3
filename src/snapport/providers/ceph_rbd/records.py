"""What snapport records in the cluster itself: the names of its snapshots and clones, and their metadata.

- a snapshot `snapport-<snapshot id>` of a volume's image, with the record `snapport.snapshot.<snapshot id>` =
  `{"set": SET, "host": HOST}` in the image's metadata (written before the snapshot is taken);
- an import: the clone `<image>.set-<set id>` in the image's pool and namespace, with the metadata
  `snapport.importer` (the importing host), `snapport.set`, `snapport.snapshot`;
- a broken-off import: the standalone image `<image>.broken-<set id>`, with no snapport metadata.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from snapport.providers.ceph_rbd.cluster import ImageRef

SNAPSHOT_PREFIX = "snapport-"
RECORD_PREFIX = "snapport.snapshot."
IMPORTER, CLONE_SET, CLONE_SNAPSHOT = "snapport.importer", "snapport.set", "snapport.snapshot"
CLONE_NAME = re.compile(r"^(?P<image>.+)\.set-(?P<set>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


def snapshot_name(snapshot_id: uuid.UUID | str) -> str:
    return f"{SNAPSHOT_PREFIX}{snapshot_id}"


def clone_of(image: ImageRef, set_id: uuid.UUID | str) -> ImageRef:
    return ImageRef(image.pool, image.namespace, f"{image.name}.set-{set_id}")


def broken_of(image: ImageRef, set_id: uuid.UUID | str) -> ImageRef:
    return ImageRef(image.pool, image.namespace, f"{image.name}.broken-{set_id}")


def metadata(image: Any, key: str) -> str | None:
    """An open image's metadata value, or None."""
    try:
        return str(image.metadata_get(key))
    except Exception:  # librbd's KeyError-like ObjectNotFound
        return None


def record(image: Any, snapshot_id: str) -> dict[str, str] | None:
    """The record of snapshot `snapport-<snapshot_id>` in an open image, or None."""
    return _parse(metadata(image, RECORD_PREFIX + snapshot_id))


def records(image: Any) -> dict[str, dict[str, str]]:
    """Every snapport record of an open image, by snapshot id."""
    found = {}
    for key, value in image.metadata_list():
        parsed = _parse(value) if key.startswith(RECORD_PREFIX) else None
        if parsed is not None:
            found[key.removeprefix(RECORD_PREFIX)] = parsed
    return found


def _parse(raw: str | None) -> dict[str, str] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        return None
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else None


def write_record(image: Any, snapshot_id: str, *, set_id: str, host: str) -> None:
    image.metadata_set(RECORD_PREFIX + snapshot_id, json.dumps({"set": set_id, "host": host}))


def remove_snapshot(image: Any, snapshot_id: str) -> None:
    """Remove a snapport snapshot and its record from an open image; idempotent (the record last: while a
    snapshot exists, its record says whose it is)."""
    name = snapshot_name(snapshot_id)
    if any(s["name"] == name for s in image.list_snaps()):
        image.remove_snap(name)
    if metadata(image, RECORD_PREFIX + snapshot_id) is not None:
        image.metadata_remove(RECORD_PREFIX + snapshot_id)
