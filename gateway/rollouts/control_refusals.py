"""Refused control calls: kept in the model's audit history (actor "unknown", what was tried, never the
credential) and counted by method and reason for the metrics."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from gateway.errors import ECHO_LIMIT
from gateway.rollouts.control_access import Refusal
from gateway.state.store import RefusedCall, StateStore, StateUnavailable

log = logging.getLogger(__name__)

# What a refused call tried is kept this long: enough to read the request, not a caller's essay.
MAX_DETAIL_CHARS = 512
UNKNOWN_ACTOR = "unknown"
# Each kept refusal is a write to the state store; a caller hammering the control port with bad
# tokens must not turn into a write storm. This many rows a second are kept (a burst of as many),
# the rest only counted, and the log says how many went unrecorded at most once a minute.
RECORDED_PER_S = 10.0
_UNRECORDED_LOG_INTERVAL_S = 60.0


class RefusedCalls:
    """Writes each refused call to the state store and counts it."""

    def __init__(self, store: StateStore, per_s: float = RECORDED_PER_S) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._per_s = per_s
        self._allowance = per_s
        self._refilled = time.monotonic()
        self._unrecorded = 0
        self._unrecorded_logged = 0.0

    def record(self, model: str, method: str, detail: str, refusal: Refusal) -> None:
        """Count the refusal of ``method`` on ``model`` and keep it in the history unless refusals come
        faster than :data:`RECORDED_PER_S`; ``detail`` says what the request asked."""
        with self._lock:
            self._counts[(method, refusal.reason)] += 1
            keep = self._take_allowance()
        if not keep:
            return
        what = f"{_cut(detail, MAX_DETAIL_CHARS)}; refused: {refusal.message}"
        try:
            self._store.record_refused(RefusedCall(_cut(model, ECHO_LIMIT), time.time(), UNKNOWN_ACTOR, method, what))
        except StateUnavailable as error:  # the refusal stands; only its history row is lost
            log.warning("a refused %s call was not recorded: %s", method, error)

    def _take_allowance(self) -> bool:
        """A token bucket, under the lock: whether this refusal may be written."""
        now = time.monotonic()
        self._allowance = min(self._per_s, self._allowance + (now - self._refilled) * self._per_s)
        self._refilled = now
        if self._allowance >= 1.0:
            self._allowance -= 1.0
            return True
        self._unrecorded += 1
        if now - self._unrecorded_logged >= _UNRECORDED_LOG_INTERVAL_S:
            self._unrecorded_logged = now
            log.warning(
                "refused control calls arrive faster than %.0f a second: %d so far counted but not kept in the"
                " history (turnout_control_refused_total counts them all)",
                self._per_s,
                self._unrecorded,
            )
        return False

    def counts(self) -> dict[tuple[str, str], int]:
        """Refused calls so far, by (method, reason)."""
        with self._lock:
            return dict(self._counts)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
