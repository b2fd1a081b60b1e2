"""Bounds on open ``ModelStreamInfer`` streams: in all, and per connection.

grpcio's synchronous server runs each stream's handler on one of its ``--grpc-threads`` threads for
as long as the stream is open, waiting on the stream's answers. Nothing short of the asyncio server
gives that thread back while it waits (the handler is a generator the server's thread drives, with no
way to park it), and serving the port from ``grpc.aio`` cost every unary call 10-34% more CPU when
measured (docs/architecture.md, "Limits"). So the bound is what keeps unary calls and health checks
served: streams may hold at most ``--max-streams`` threads, fewer than the pool, and one
connection at most ``--max-streams-per-connection`` of those. A stream beyond either bound is refused at once with
RESOURCE_EXHAUSTED, naming the limit.
"""

from __future__ import annotations

import threading
from collections import Counter

from gateway.errors import ResourceExhausted


class StreamSlots:
    """Open streams counted in all and by connection (the peer address gRPC reports)."""

    def __init__(self, total: int, per_connection: int) -> None:
        self.total = total
        self.per_connection = per_connection
        self._open = 0
        self._by_peer: Counter[str] = Counter()
        self._lock = threading.Lock()

    @property
    def open(self) -> int:
        return self._open

    def take(self, peer: str) -> None:
        """Count a stream from ``peer`` in; raises ResourceExhausted when a bound is reached."""
        with self._lock:
            if self._open >= self.total:
                raise ResourceExhausted(
                    f"{self._open} streams are open on this gateway process, its limit (--max-streams {self.total});"
                    " close one or use unary ModelInfer calls"
                )
            if self._by_peer[peer] >= self.per_connection:
                raise ResourceExhausted(
                    f"this connection has {self._by_peer[peer]} streams open, its limit"
                    f" (--max-streams-per-connection {self.per_connection}); close one or open another connection"
                )
            self._open += 1
            self._by_peer[peer] += 1

    def give_back(self, peer: str) -> None:
        """Count a stream taken with :meth:`take` out."""
        with self._lock:
            self._open -= 1
            left = self._by_peer[peer] - 1
            if left:
                self._by_peer[peer] = left
            else:
                del self._by_peer[peer]  # peers come and go: keep only those with streams open
