"""Waits until every live gateway process has applied a generation of the shared state.

A change (a policy, an explicit model load or unload) is committed to the state store under a new
generation. This process applies it at once; the others notice it on their next poll and report
back. The change's call returns when every process seen alive recently, on every host of the
fleet, reports that generation, or fails with DEADLINE_EXCEEDED naming those that did not (host,
process, last heartbeat). A process whose heartbeat lapsed (killed, cut off) is no longer waited for.
"""

from __future__ import annotations

import logging
import time

from gateway.errors import DeadlineExceeded
from gateway.rollouts.policy_sync import PolicySync
from gateway.state.store import ProcessReport, StateStore

log = logging.getLogger(__name__)

# Issue 3 promises a change in effect everywhere within 100 ms; a slower one is logged with the laggards.
_SLOW_APPLY_S = 0.1
_POLL_S = 0.005


class Propagation:
    def __init__(self, store: StateStore, sync: PolicySync, *, apply_timeout_s: float, liveness_s: float) -> None:
        self._store = store
        self._sync = sync
        self._apply_timeout_s = apply_timeout_s
        self._liveness_s = liveness_s

    def wait(self, generation: int, what: str) -> tuple[str, ...]:
        """Apply ``generation`` here, then wait for every live process; returns the processes that applied it.

        ``what`` names the change in the slow-apply warning and the DEADLINE_EXCEEDED message.
        """
        started = time.monotonic()
        self._sync.sync_now()
        synced_here_s = time.monotonic() - started
        deadline = started + self._apply_timeout_s
        last_behind: list[str] = []
        while True:
            live = [r for r in self._store.reports() if r.seen_at >= time.time() - self._liveness_s]
            behind = [describe_laggard(r) for r in live if r.applied_generation < generation]
            if not behind:
                took_s = time.monotonic() - started
                if took_s > _SLOW_APPLY_S:
                    log.warning(
                        "generation %d (%s) took %.0f ms to be applied everywhere (%.0f ms by this process); "
                        "the last to report: %s",
                        generation, what, took_s * 1000, synced_here_s * 1000, ", ".join(last_behind) or "this process",
                    )
                return tuple(r.process_id for r in live)
            last_behind = behind
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"generation {generation} ({what}) is committed but not yet applied by {', '.join(behind)}"
                )
            time.sleep(_POLL_S)


def describe_laggard(report: ProcessReport) -> str:
    """A process that has not applied a change yet, as the answer and the log name it."""
    ago_s = max(time.time() - report.seen_at, 0.0)
    return (
        f"process {report.process_id} on host {report.host or 'unknown'} (generation {report.applied_generation},"
        f" last heartbeat {ago_s:.1f} s ago)"
    )
