"""Structured logs: one JSON object per line on stderr (`ts`, `level`, `event`, then the event's own fields)."""

from __future__ import annotations

import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger("snapport.agent")
_FIELDS = "snapport_fields"


class JsonFormatter(logging.Formatter):
    """A record as one JSON line; an exception becomes `error` (and `traceback` when `debug`)."""

    def __init__(self, *, debug: bool = False) -> None:
        super().__init__()
        self.debug = debug

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
        }
        if record.name != logger.name:
            line["logger"] = record.name
        line.update(getattr(record, _FIELDS, {}))
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            line["error"] = f"{type(error).__name__}: {error}"
            if self.debug:
                line["traceback"] = "".join(traceback.format_exception(error))
        return json.dumps(line, default=str, sort_keys=False)


def setup(*, debug: bool = False) -> None:
    """Send the agent's logs, and aiohttp's and asyncio's warnings, to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(debug=debug))
    for name, level in (("snapport", logging.DEBUG if debug else logging.INFO), ("aiohttp", logging.WARNING)):
        target = logging.getLogger(name)
        target.handlers[:] = [handler]
        target.setLevel(level)
        target.propagate = False
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.handlers[:] = [handler]
    asyncio_logger.setLevel(logging.DEBUG if debug else logging.ERROR)
    asyncio_logger.propagate = False


def log(event: str, *, level: int = logging.INFO, exc_info: BaseException | None = None, **fields: Any) -> None:
    """Log `event` (a short dotted name, e.g. `job.started`) with its fields."""
    logger.log(level, event, extra={_FIELDS: fields}, exc_info=exc_info)
