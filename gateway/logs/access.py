"""The access log: one line per finished request (or a sample of them), written off the request path.

A request observer (:mod:`gateway.serving.observers`): on the dispatcher thread it keeps a tuple of
scalars per request (never the request's tensors, whose buffers the request reuses) on a bounded
deque, and returns; its own thread turns them into records of the ``turnout.access`` logger, so the
formatting and the write to stderr cost no dispatcher any time. A deque rather than a
``queue.Queue``: appending takes no lock the dispatchers would share. When the deque is full the
lines are dropped and counted; the count is logged every minute while it grows, and at the end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import NamedTuple

from gateway.errors import TurnoutError, status_name
from gateway.logs.configure import ACCESS_LOGGER
from gateway.serving.observers import Finished, Route, sample_point

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 16_384  # lines waiting; a few seconds of a busy gateway
_DRAIN_INTERVAL_S = 0.05
_DROPPED_REPORT_S = 60.0


class _Line(NamedTuple):
    """What one access line needs, taken from a finished request on the dispatcher thread."""

    finished_unix_s: float
    request_id: str
    model: str
    version: str
    arm: str
    generation: int
    reason: str
    error: TurnoutError | None
    latency_s: float
    rows: int


def _line_of(item: Finished) -> _Line:
    route = item.route
    timings = item.timings
    finished = timings.received_unix_ns / 1e9 + timings.latency_s
    if route is None:  # failed before routing chose a version (unknown model, say)
        request = item.request
        return _Line(finished, item.request_id, request.model_name, request.model_version, "", 0, "",
                     item.error, timings.latency_s, item.rows)  # fmt: skip
    return _Line(finished, item.request_id, route.model, str(route.version), str(route.arm), route.generation,
                 str(route.reason), item.error, timings.latency_s, item.rows)  # fmt: skip


def _fields_of(line: _Line) -> dict[str, object]:
    """The keys of one access line, in the order the text format writes them."""
    fields: dict[str, object] = {
        "request_id": line.request_id,
        "model": line.model,
        "version": line.version,
        "arm": line.arm,
        "generation": line.generation,
        "reason": line.reason,
        "status": status_name(line.error),
        "latency_ms": round(line.latency_s * 1e3, 3),
        "rows": line.rows,
    }
    if line.error is not None:
        fields["error"] = str(line.error)
    return fields


class AccessLog:
    """A request observer that writes ``--access-log`` lines from a thread of its own."""

    def __init__(
        self, sample: float = 1.0, capacity: int = DEFAULT_CAPACITY, logger: logging.Logger | None = None
    ) -> None:
        self._sample = sample
        self._capacity = capacity
        self._logger = logger or logging.getLogger(ACCESS_LOGGER)
        self._lines: deque[_Line] = deque()
        self._dropped_lock = threading.Lock()  # taken only when lines are dropped
        self.dropped = 0
        self._reported_dropped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- the request observer (dispatcher threads) -----------------------------------------

    def wants(self, route: Route | None) -> bool:
        return True  # the sample is decided by request id, which routing does not see

    def observe(self, finished: Sequence[Finished]) -> None:
        sample = self._sample
        # As capture's sample: by request id (the same requests in every process and in capture), and
        # a failed request always has its line.
        lines = [
            _line_of(item)
            for item in finished
            if sample >= 1.0 or item.error is not None or sample_point(item.request_id) < sample
        ]
        if not lines:
            return
        if len(self._lines) + len(lines) > self._capacity:
            with self._dropped_lock:
                self.dropped += len(lines)
            return
        self._lines.extend(lines)  # deque.extend is atomic under the GIL: no lock

    # --- the writer thread -----------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is waiting, say how many lines were dropped, and stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.drain()
        if self.dropped:
            log.warning("access log: %d lines dropped in all (its queue of %d was full)", self.dropped, self._capacity)

    def _run(self) -> None:
        next_report = time.monotonic() + _DROPPED_REPORT_S
        while not self._stop.wait(_DRAIN_INTERVAL_S):
            try:
                self.drain()
            except Exception:  # a broken handler must not end the access log
                log.exception("access log: writing lines failed")
            if time.monotonic() >= next_report:
                next_report += _DROPPED_REPORT_S
                self._report_dropped()

    def drain(self) -> int:
        """Write every waiting line; returns how many."""
        written = 0
        lines = self._lines
        logger = self._logger
        while lines:
            line = lines.popleft()
            record = logger.makeRecord(
                logger.name, logging.INFO, __file__, 0, "request", (), None, extra={"fields": _fields_of(line)}
            )
            # The line's time is when the request finished, not when this thread got to it.
            record.created = line.finished_unix_s
            record.msecs = (line.finished_unix_s % 1) * 1000
            logger.handle(record)
            written += 1
        return written

    def _report_dropped(self) -> None:
        dropped = self.dropped
        if dropped > self._reported_dropped:
            log.warning("access log: %d lines dropped in the last minute (its queue of %d was full)",
                        dropped - self._reported_dropped, self._capacity)  # fmt: skip
            self._reported_dropped = dropped
