"""What the database writers (`postgresql`, `mariadb`) share: finding the set's volume that holds a path, file
specs for whole directories, statement budgets from a deadline, and their JSON backup metadata."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from snapport.errors import WriterError
from snapport.model import FileSpec, Volume
from snapport.model.paths import relative_to_volume
from snapport.osal.mount import containing_mount
from snapport.writers.base import Deadline

STATEMENT_SHARE = 0.9  # of what is left of an event's deadline, so the call still returns inside it


def volume_of(path: Path, volumes: Sequence[Volume]) -> Volume | None:
    """The set's volume holding `path` (its containing mount, symlinks resolved), or None."""
    mount_point = containing_mount(os.path.realpath(path)).mount_point
    return next((v for v in volumes if v.mount_point == mount_point), None)


def spec_for(path: Path, volume: Volume, pattern: str = "*", *, recursive: bool = True) -> FileSpec:
    """A file spec for `path` (symlinks resolved) relative to the volume holding it."""
    relative = relative_to_volume(volume.mount_point, os.path.realpath(path))
    return FileSpec(volume=volume.mount_point, path=relative, pattern=pattern, recursive=recursive)


def statement_budget_s(deadline: Deadline) -> float:
    """How long one statement may run and still let the event return inside its deadline (at least 1 ms)."""
    return max(0.001, deadline.remaining() * STATEMENT_SHARE)


def encode_metadata(fmt: str, fields: Mapping[str, object]) -> str:
    """A component's private backup metadata: one JSON object, ASCII only, with its format name first."""
    return json.dumps({"format": fmt, **fields}, separators=(",", ":"))


def decode_metadata(fmt: str, text: str) -> dict[str, object]:
    """The fields of metadata written by `encode_metadata(fmt, ...)`; `WriterError` if it is something else."""
    try:
        fields = json.loads(text)
    except ValueError as exc:
        raise WriterError(f"backup metadata is not JSON: {exc}") from None
    if not isinstance(fields, dict) or fields.get("format") != fmt:
        raise WriterError(f"backup metadata is not in format {fmt}")
    return fields
