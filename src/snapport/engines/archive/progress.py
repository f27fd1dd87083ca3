"""Progress events for a caller's callback, at most one per interval unless forced (a phase change, the end)."""

from __future__ import annotations

import time

from snapport.engines.base import Phase, Progress, ProgressCallback


class Meter:
    """Progress events for a callback, at most one per `interval_s` unless forced."""

    def __init__(self, callback: ProgressCallback | None, interval_s: float) -> None:
        self._callback = callback
        self._interval_s = interval_s
        self._last = float("-inf")

    def __call__(
        self, phase: Phase, files: int, nbytes: int, total: tuple[int, int] | None = None, *, force: bool = False
    ) -> None:
        if self._callback is None:
            return
        now = time.monotonic()
        if force or now - self._last >= self._interval_s:
            self._last = now
            total_files, total_bytes = total if total is not None else (None, None)
            self._callback(Progress(phase, files, nbytes, total_files, total_bytes))
