"""The clocks the catalog uses: wall-clock UTC for records people read, this boot's clock for lease expiry."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

_BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


def utc_now() -> datetime:
    return datetime.now(UTC)


def boot_seconds() -> float:
    """Seconds since this host booted, suspend included (CLOCK_BOOTTIME): one clock for every process on the host.

    Unlike the wall clock it never jumps (NTP, an operator), so a lease cannot expire early or late because of it.
    """
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def boot_id() -> str:
    """This boot's id (Linux gives a fresh UUID per boot): a boot-time stamp is only valid within the same boot."""
    try:
        return str(uuid.UUID(_BOOT_ID.read_text().strip()))
    except (OSError, ValueError):
        # No procfs (not Linux, or a restricted container): one id per process is the safe fallback, because a
        # stranger's boot-time stamp then reads as expired rather than as valid.
        return f"process-{uuid.uuid4()}"


def require_aware(value: datetime, what: str) -> datetime:
    """`value` in UTC; a naive datetime is refused, as its zone would be a guess."""
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)
