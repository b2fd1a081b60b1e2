"""MetricsObserver: counts every finished request into this thread's shard.

It runs on the request observers' seam (:mod:`gateway.serving.observers`): once per batch on the
dispatcher thread that ran it, or on a request's own thread when it failed before a batch. Each call
touches only the calling thread's shard (:mod:`gateway.telemetry.shards`): dict lookups, a bisect
per histogram, integer additions. No lock, no prometheus_client object.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

from gateway.serving.observers import Finished, Route
from gateway.telemetry.families import (
    BATCH_SIZE,
    BATCH_SIZE_BUCKETS,
    COMPUTE_DURATION,
    DURATION_BUCKETS_S,
    QUEUE_DURATION,
    REQUEST_DURATION,
    REQUESTS,
)
from gateway.telemetry.shards import ThreadShards
from gateway.telemetry.status_codes import NOT_FOUND, OK, code_of

COUNTED = (REQUESTS, REQUEST_DURATION, QUEUE_DURATION, COMPUTE_DURATION, BATCH_SIZE)
# A histogram value's length: a count per bucket, +Inf's, then the sum.
_DURATION_VALUE = len(DURATION_BUCKETS_S) + 2
_BATCH_SIZE_VALUE = len(BATCH_SIZE_BUCKETS) + 2


class MetricsObserver:
    """A request observer that wants every request and counts it in per-thread shards."""

    wants_every_request = True  # the seam builds every request's ticket without asking
    needs_request_id = False  # counts carry no id: none is made up for metrics

    def __init__(self, shards: ThreadShards | None = None) -> None:
        self.shards = shards if shards is not None else ThreadShards(COUNTED)

    def wants(self, route: Route | None) -> bool:
        return True

    def observe(self, finished: Sequence[Finished]) -> None:
        # Histogram updates are written out here rather than in a helper: a Python call per
        # observation is a good share of this method's cost. Called once per batch. Lookups are
        # ``in`` and subscripts, not ``dict.get``: operators, where a method is a C call per request.
        try:
            shard = self.shards.local.shard
        except AttributeError:  # this thread's first batch
            shard = self.shards.mine()
        requests = shard[REQUESTS]
        latencies = shard[REQUEST_DURATION]
        queueing = shard[QUEUE_DURATION]
        bounds = DURATION_BUCKETS_S
        empty = _DURATION_VALUE
        batch_ran = False
        rows = 0
        for item in finished:
            route = item.route
            error = item.error
            code = OK if error is None else code_of(error)
            if route is None:  # failed before routing: no version, no arm
                # A name the gateway does not know is the client's, so not a label: any number of
                # made-up names would make as many series.
                model = "" if code == NOT_FOUND else item.request.model_name
                key: tuple[Any, ...] = (model, "", "", code)
                requests[key] = requests[key] + 1 if key in requests else 1
                continue
            key = (route.model, route.version, route.arm, code)
            if key in requests:
                requests[key] += 1
            else:
                requests[key] = 1
            timings = item.timings
            arm_key = (route.model, route.version, route.arm)
            if arm_key in latencies:
                counts = latencies[arm_key]
            else:
                counts = latencies[arm_key] = [0.0] * empty
            latency = timings.latency_s
            counts[bisect_left(bounds, latency)] += 1  # bisect_left: a value on a bound is in it (le)
            counts[-1] += latency
            if timings.compute_s > 0:  # it reached a batch: its queueing is known
                if arm_key in queueing:
                    counts = queueing[arm_key]
                else:
                    counts = queueing[arm_key] = [0.0] * empty
                queued = timings.queue_s
                counts[bisect_left(bounds, queued)] += 1
                counts[-1] += queued
                batch_ran = True
                rows += item.rows
        if batch_ran:  # one call is one batch execution (a request that failed alone ran none)
            route = finished[0].route
            assert route is not None
            version_key = (route.model, route.version)
            counts = shard[COMPUTE_DURATION].get(version_key)
            if counts is None:
                counts = shard[COMPUTE_DURATION][version_key] = [0.0] * empty
            compute = finished[0].timings.compute_s
            counts[bisect_left(bounds, compute)] += 1
            counts[-1] += compute
            counts = shard[BATCH_SIZE].get(version_key)
            if counts is None:
                counts = shard[BATCH_SIZE][version_key] = [0.0] * _BATCH_SIZE_VALUE
            counts[bisect_left(BATCH_SIZE_BUCKETS, rows)] += 1
            counts[-1] += rows
