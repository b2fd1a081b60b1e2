"""The bound on inference requests in flight in one gateway process (``--max-in-flight``).

Unary calls are bounded by the server's threads, but a stream may send requests without waiting
for answers: without this bound one client could queue as many as every model's queue holds. A
request beyond it is refused at once with RESOURCE_EXHAUSTED, before any routing or queueing.
"""

from __future__ import annotations

import sys
import threading

from gateway.errors import ResourceExhausted


class InFlightLimit:
    """Counts requests in and out of the dataplane; refuses one that would exceed ``limit`` (0: no limit)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._capacity = limit if limit > 0 else sys.maxsize
        self._room = self._capacity
        self._lock = threading.Lock()

    @property
    def count(self) -> int:
        return self._capacity - self._room

    def enter(self) -> None:
        """Count one request in; raises ResourceExhausted when the limit is reached."""
        with self._lock:
            if self._room == 0:
                raise ResourceExhausted(
                    f"{self.limit} requests are in flight in this gateway process, its limit (--max-in-flight);"
                    " retry later"
                )
            self._room -= 1

    def leave(self) -> None:
        with self._lock:
            self._room += 1
