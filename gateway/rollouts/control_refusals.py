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


class RefusedCalls:
    """Writes each refused call to the state store and counts it."""

    def __init__(self, store: StateStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str]] = Counter()

    def record(self, model: str, method: str, detail: str, refusal: Refusal) -> None:
        """Keep the refusal of ``method`` on ``model``; ``detail`` says what the request asked."""
        with self._lock:
            self._counts[(method, refusal.reason)] += 1
        what = f"{_cut(detail, MAX_DETAIL_CHARS)}; refused: {refusal.message}"
        try:
            self._store.record_refused(RefusedCall(_cut(model, ECHO_LIMIT), time.time(), UNKNOWN_ACTOR, method, what))
        except StateUnavailable as error:  # the refusal stands; only its history row is lost
            log.warning("a refused %s call was not recorded: %s", method, error)

    def counts(self) -> dict[tuple[str, str], int]:
        """Refused calls so far, by (method, reason)."""
        with self._lock:
            return dict(self._counts)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
