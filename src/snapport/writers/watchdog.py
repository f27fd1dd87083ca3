"""The freeze-window watchdog of writers that hold an application still themselves (sqlite, mariadb).

A writer's hold (a write lock, a backup stage) must not outlive the session's freeze window, even if thaw never
comes. The watchdog lets go when the window runs out and remembers it, so that the late thaw can report that
the snapshot may be inconsistent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class FreezeWindowWatchdog:
    """Calls the writer's `release` under its `lock` once `window_s` has passed since `start`, if the writer is
    still `holding`. Every method but the timer's own is called with the writer's lock held."""

    def __init__(self, lock: threading.Lock, release: Callable[[], None], holding: Callable[[], bool]) -> None:
        self._lock = lock
        self._release = release
        self._holding = holding
        self._timer: threading.Timer | None = None
        self._generation = 0  # a timer from an earlier freeze never acts on a later one
        self._expired_after: float | None = None

    def start(self, window_s: float) -> None:
        self._generation += 1
        self._expired_after = None
        self._timer = threading.Timer(window_s, self._expire, args=(self._generation, window_s))
        self._timer.daemon = True
        self._timer.start()

    def stop(self) -> None:
        """Cancel the timer (the writer's `release` calls this)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def take_expiry(self) -> float | None:
        """The window after which the hold was let go before thaw, once; None if it was not."""
        expired_after, self._expired_after = self._expired_after, None
        return expired_after

    def _expire(self, generation: int, window_s: float) -> None:
        with self._lock:
            if generation == self._generation and self._holding():
                self._release()
                self._expired_after = window_s
