"""A counted gate: work in progress is counted in and out, and closing the gate refuses new work and
waits for the rest to drain. Model versions use one for their requests, the edge one for its calls."""

from __future__ import annotations

import threading


class InFlight:
    """Counts entries while open; once closed, refuses new ones and lets a closer wait for the count to reach zero."""

    def __init__(self, *, is_open: bool = True) -> None:
        self._count = 0
        self._open = is_open
        self._draining = False
        # The hot path takes the plain lock (its `with` runs in C); only a closer waits on the condition.
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)

    @property
    def count(self) -> int:
        return self._count

    def open(self) -> None:
        with self._lock:
            self._open = True

    def enter(self) -> bool:
        """Count one in; False when the gate is closed."""
        with self._lock:
            if not self._open:
                return False
            self._count += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._count -= 1
            # Only a closer waits: Condition.notify_all is Python code that a lone request would
            # otherwise run every time the count falls back to zero.
            if self._count == 0 and self._draining:
                self._idle.notify_all()

    def close_and_wait(self, timeout_s: float) -> bool:
        """Refuse new entries and wait up to ``timeout_s`` for those inside; True when none is left."""
        with self._idle:
            self._open = False
            self._draining = True
            return self._idle.wait_for(lambda: self._count == 0, timeout=timeout_s)
