"""The bound on inference requests in flight in one gateway process (``--max-in-flight``).

Unary calls are bounded by the server's threads, but a stream may send requests without waiting
for answers: without this bound one client could queue as many as every model's queue holds. A
request beyond it is refused at once with RESOURCE_EXHAUSTED, before any routing or queueing.
"""

from __future__ import annotations

import functools
import queue
from collections.abc import Callable

from gateway.errors import ResourceExhausted


class InFlightLimit:
    """Tokens for requests in flight: a request takes one with :attr:`try_enter` and returns it with
    :attr:`leave`. Both are C-level methods of a ``SimpleQueue``, so the request path runs no Python
    frame for the bound (the lock-and-counter version cost two calls per request)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("an in-flight limit is at least 1")
        self.limit = limit
        tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(limit):
            tokens.put(None)
        self._tokens = tokens
        # Raises queue.Empty when every token is taken: the caller answers with refusal().
        self.try_enter: Callable[[], None] = tokens.get_nowait
        self.leave: Callable[[], None] = functools.partial(tokens.put, None)

    @property
    def count(self) -> int:
        return self.limit - self._tokens.qsize()

    def refusal(self) -> ResourceExhausted:
        return ResourceExhausted(
            f"{self.limit} requests are in flight in this gateway process, its limit (--max-in-flight); retry later"
        )

    def enter(self) -> None:
        """Take a token; raises ResourceExhausted when none is left."""
        try:
            self.try_enter()
        except queue.Empty:
            raise self.refusal() from None
