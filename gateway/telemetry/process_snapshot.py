"""This gateway process's metrics as one snapshot: the observer's shards plus what the serving parts
already count, read when asked (queue depth, in flight, statistics, loads, shadows, capture, drift).

Counters that exist elsewhere are read here, not counted twice. The parts outside serving (shadows,
capture, drift) are seen through the small protocols below, so this part imports none of them.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from gateway.routing.table import RoutingTableHolder
from gateway.serving.model_manager import ModelManager
from gateway.telemetry.families import (
    CAPTURE_QUEUED,
    CAPTURE_RECORDS,
    CONTROL_REFUSED,
    DRIFT,
    DRIFT_ROWS,
    INFLIGHT,
    MODEL_LOAD_FAILURES,
    MODEL_LOADS,
    POLICY_GENERATION,
    QUEUE_DEPTH,
    SHADOW_COMPARED,
    SHADOW_COPIES,
    SHADOW_MAX_ABS_DIFF,
    SHADOW_TOP1,
    WORKER_RESTARTS,
)
from gateway.telemetry.shards import ThreadShards
from gateway.telemetry.snapshot import Snapshot, add_into
from gateway.telemetry.statistics_families import STATISTICS_FAMILIES, add_statistics

log = logging.getLogger(__name__)

# Drift statistics over a full window take about half a second per version (mostly scipy's exact
# KS p-value), so they are computed at most once a minute (about 1% of a core per watched version
# however often Prometheus scrapes) and served from the last computation in between.
DRIFT_REFRESH_S = 60.0
DRIFT_STATISTICS = ("psi", "js", "ks", "wasserstein")


class OutputDivergenceLike(Protocol):
    max_abs_diff: float


class ShadowFiguresLike(Protocol):
    primary_version: int
    shadow_version: int
    mirrored: int
    compared: int
    failed: int
    dropped: int
    paused: int
    top1_agreed: int
    top1_rows: int

    @property
    def outputs(self) -> Mapping[str, OutputDivergenceLike]: ...


class ShadowSource(Protocol):
    def figures_of(self, model: str) -> Sequence[ShadowFiguresLike]: ...


class CaptureStatsLike(Protocol):
    def snapshot(self) -> dict[str, int]: ...


class CaptureSource(Protocol):
    @property
    def stats(self) -> CaptureStatsLike: ...

    def queued(self) -> int: ...


class FeatureDriftLike(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def psi(self) -> float: ...

    @property
    def js(self) -> float: ...

    @property
    def ks(self) -> float: ...

    @property
    def wasserstein(self) -> float: ...


class DriftSource(Protocol):
    def watched_versions(self) -> list[tuple[str, int]]: ...

    def rows(self, model: str, version: int) -> int: ...

    def statistics(self, model: str, version: int, *, ks_pvalue: bool = True) -> Sequence[FeatureDriftLike] | None: ...


class RefusalSource(Protocol):
    def counts(self) -> dict[tuple[str, str], int]: ...


# Capture's counters as the records' outcomes: what was kept, lost, or left out on purpose.
CAPTURE_OUTCOMES = {
    "written": ("written",),
    "dropped": ("dropped_full", "dropped_closing", "dropped_budget"),
    "failed": ("failed",),
    "sampled_out": ("sampled_out",),
    "skipped": ("skipped",),
}


class ProcessSnapshot:
    """Takes this process's snapshot; whole, or the statistics alone (what ModelStatistics needs)."""

    def __init__(
        self,
        shards: ThreadShards,
        manager: ModelManager,
        routes: RoutingTableHolder,
        *,
        shadows: ShadowSource | None = None,
        capture: CaptureSource | None = None,
        drift: DriftSource | None = None,
        refused: RefusalSource | None = None,
    ) -> None:
        self._shards = shards
        self._refused = refused
        self._manager = manager
        self._routes = routes
        self._shadows = shadows
        self._capture = capture
        self._drift = drift
        self._drift_lock = threading.Lock()  # one computation at a time; others take the last one
        self._drift_cache: Snapshot = {}
        self._drift_at = -math.inf

    def statistics(self) -> Snapshot:
        """The statistics extension's counters of every loaded version."""
        snapshot: Snapshot = {family: {} for family in STATISTICS_FAMILIES}
        for version in self._manager.versions():
            if version.plan is not None:
                add_statistics(snapshot, version.model, str(version.version), version.statistics.snapshot())
        return snapshot

    def take(self) -> Snapshot:
        snapshot = self._shards.totals()
        snapshot.update(self.statistics())
        self._add_serving(snapshot)
        self._add_routing(snapshot)
        if self._refused is not None:
            refused = snapshot.setdefault(CONTROL_REFUSED, {})
            for key, count in self._refused.counts().items():
                refused[key] = float(count)
        if self._shadows is not None:
            self._add_shadows(snapshot, self._shadows)
        if self._capture is not None:
            self._add_capture(snapshot, self._capture)
        if self._drift is not None:
            for family, values in self._drift_snapshot(self._drift).items():
                snapshot[family] = dict(values)
        return snapshot

    def _add_serving(self, snapshot: Snapshot) -> None:
        for family in (QUEUE_DEPTH, INFLIGHT, WORKER_RESTARTS, MODEL_LOADS, MODEL_LOAD_FAILURES):
            snapshot.setdefault(family, {})
        for version in self._manager.versions():
            if version.plan is None:
                continue
            key = (version.model, str(version.version))
            add_into(snapshot, QUEUE_DEPTH, key, float(version.queued()))
            add_into(snapshot, INFLIGHT, key, float(version.in_flight()))
            # A shared worker's restarts are counted by the supervisor's broker (these hosts have none).
            restarts = sum(getattr(host, "restarts", 0) for host in version.hosts)
            add_into(snapshot, WORKER_RESTARTS, key, float(restarts))
        for model, count in dict(self._manager.loads).items():
            add_into(snapshot, MODEL_LOADS, (model,), float(count))
            add_into(snapshot, MODEL_LOAD_FAILURES, (model,), float(self._manager.load_failures.get(model, 0)))

    def _add_routing(self, snapshot: Snapshot) -> None:
        snapshot.setdefault(POLICY_GENERATION, {})
        for model, route in self._routes.current.routes.items():
            add_into(snapshot, POLICY_GENERATION, (model,), float(route.generation))

    def _add_shadows(self, snapshot: Snapshot, shadows: ShadowSource) -> None:
        for family in (SHADOW_COPIES, SHADOW_COMPARED, SHADOW_TOP1, SHADOW_MAX_ABS_DIFF):
            snapshot.setdefault(family, {})
        for record in self._manager.records():
            for figures in shadows.figures_of(record.name):
                key = (record.name, str(figures.primary_version), str(figures.shadow_version))
                outcomes = (("sent", figures.mirrored), ("dropped", figures.dropped),
                            ("failed", figures.failed), ("paused", figures.paused))  # fmt: skip
                for outcome, count in outcomes:
                    add_into(snapshot, SHADOW_COPIES, (*key, outcome), float(count))
                add_into(snapshot, SHADOW_COMPARED, key, float(figures.compared))
                add_into(snapshot, SHADOW_TOP1, key, [float(figures.top1_agreed), float(figures.top1_rows)])
                for output, divergence in dict(figures.outputs).items():
                    add_into(snapshot, SHADOW_MAX_ABS_DIFF, (*key, output), float(divergence.max_abs_diff))

    @staticmethod
    def _add_capture(snapshot: Snapshot, capture: CaptureSource) -> None:
        counts = capture.stats.snapshot()
        for outcome, names in CAPTURE_OUTCOMES.items():
            add_into(snapshot, CAPTURE_RECORDS, (outcome,), float(sum(counts.get(name, 0) for name in names)))
        add_into(snapshot, CAPTURE_QUEUED, (), float(capture.queued()))

    def _drift_snapshot(self, drift: DriftSource) -> Snapshot:
        with self._drift_lock:
            if time.monotonic() - self._drift_at >= DRIFT_REFRESH_S:
                self._drift_cache = drift_families(drift)
                self._drift_at = time.monotonic()
            return self._drift_cache


def drift_families(drift: DriftSource) -> Snapshot:
    """Each watched version's drift per feature, weighted by its window's rows so that processes'
    figures merge into their row-weighted mean."""
    snapshot: Snapshot = {DRIFT: {}, DRIFT_ROWS: {}}
    for model, version in drift.watched_versions():
        rows = drift.rows(model, version)
        add_into(snapshot, DRIFT_ROWS, (model, str(version)), float(rows))
        try:
            features = drift.statistics(model, version, ks_pvalue=False)  # not shown; most of the time
        except Exception:  # a statistic that fails leaves the rest of the metrics standing
            log.exception("drift statistics of %s version %d failed", model, version)
            continue
        for feature in features or ():
            for statistic in DRIFT_STATISTICS:
                value = float(getattr(feature, statistic))
                if math.isfinite(value):
                    add_into(
                        snapshot, DRIFT, (model, str(version), feature.name, statistic), [value * rows, float(rows)]
                    )
    return snapshot
