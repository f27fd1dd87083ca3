"""Turn model objects into JSON-ready values: the one spelling of the model in `--json` output and API payloads."""

from __future__ import annotations

import dataclasses
import enum
import uuid
from datetime import datetime
from typing import Any


def to_jsonable(value: Any) -> Any:
    """Dataclasses become dicts, flags lists of kebab-case words, enums their value, ids and times strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Flag):
        names = getattr(value, "names", None)
        if callable(names):
            return names()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, frozenset, set)):
        return [to_jsonable(v) for v in value]
    return value
