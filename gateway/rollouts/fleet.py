"""The fleet as ``turnout status`` shows it: every gateway process on the shared state, host by host.

Read from the processes' heartbeats in the state store; a process silent for longer than the
liveness window is shown as not live (a change no longer waits for it) until it says goodbye or
comes back; one silent for :data:`GONE_AFTER_S` is left out (a pod replaced long ago, a host
killed and never restarted), so the view does not grow with every restart of the fleet.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.state.store import ProcessReport, StateStore

GONE_AFTER_S = 600.0


@dataclass(frozen=True, slots=True)
class FleetProcess:
    report: ProcessReport
    live: bool


@dataclass(frozen=True, slots=True)
class FleetView:
    generation: int  # the newest in the shared state
    processes: tuple[FleetProcess, ...]  # by host, then process
    liveness_s: float


class Fleet:
    def __init__(self, store: StateStore, liveness_s: float) -> None:
        self._store = store
        self._liveness_s = liveness_s

    def view(self) -> FleetView:
        """Raises StateUnavailable when the store cannot be read."""
        generation = self._store.generation()
        now = time.time()
        processes = tuple(
            FleetProcess(report, report.seen_at >= now - self._liveness_s)
            for report in sorted(self._store.reports(), key=lambda r: (r.host, r.process_id))
            if report.seen_at >= now - GONE_AFTER_S
        )
        return FleetView(generation, processes, self._liveness_s)
