"""Rollouts in simulation: synthetic per-request outcomes, and when each check would have rolled back.

The tests and ``benchmarks/rollout_analysis.py`` use it to measure the false-rollback rate (A/A:
both arms alike) and the requests a regression needs to be caught. It runs the checks of
:mod:`gateway.analysis.decision` on many rollouts at once with numpy, at every request (or every
``every`` requests), from the same functions :class:`~gateway.analysis.decision.RolloutAnalysis`
calls; a unit test holds the two to the same answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from gateway.analysis.decision import Limits
from gateway.analysis.error_rate import error_evidence
from gateway.analysis.evalues import LOW_RATES, critical_above, critical_below, log_evalue_above
from gateway.analysis.latency import TAIL, LatencyBuckets, order_evidence

NEVER = -1
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class SyntheticArms:
    """Two arms' traffic: each request goes to the canary with ``canary_share``; latencies are log-normal."""

    canary_share: float = 0.5
    stable_error_rate: float = 0.01
    canary_error_rate: float = 0.01
    stable_median_s: float = 0.010
    latency_sigma: float = 0.5
    canary_latency_ratio: float = 1.0
    disagreement_rate: float = 0.0  # each canary request's answer compared with the stable's (a shadow)


@dataclass(frozen=True)
class Traffic:
    """Rollouts x requests: which arm served each request, whether it failed, and its latency."""

    canary: BoolArray
    failed: BoolArray
    latency_s: npt.NDArray[np.float64]
    disagreed: BoolArray  # meaningful on canary requests only


def synthetic_traffic(arms: SyntheticArms, rollouts: int, requests: int, seed: int) -> Traffic:
    rng = np.random.default_rng(seed)
    shape = (rollouts, requests)
    canary = rng.random(shape) < arms.canary_share
    failed = rng.random(shape) < np.where(canary, arms.canary_error_rate, arms.stable_error_rate)
    latency = arms.stable_median_s * np.exp(arms.latency_sigma * rng.standard_normal(shape))
    disagreed = canary & (rng.random(shape) < arms.disagreement_rate)
    return Traffic(canary, failed, latency * np.where(canary, arms.canary_latency_ratio, 1.0), disagreed)


@dataclass(frozen=True)
class Rollbacks:
    """Per rollout, the number of requests served when it was rolled back (:data:`NEVER`: not), and by what."""

    at_request: IntArray
    by_check: dict[str, IntArray]

    @property
    def rolled_back(self) -> BoolArray:
        return np.asarray(self.at_request != NEVER)


def rollbacks(traffic: Traffic, limits: Limits, buckets: LatencyBuckets, every: int = 1) -> Rollbacks:
    """When each rollout's analysis, checked after every ``every`` requests, would have rolled it back."""
    requests = traffic.canary.shape[1]
    grid = np.arange(every, requests + 1, every)  # requests served at each look
    canary_seen = np.cumsum(traffic.canary, axis=1)[:, grid - 1]
    stable_seen = grid[None, :] - canary_seen
    allowed = np.minimum(canary_seen, stable_seen) >= limits.min_requests
    bound = limits.log_rollback_bound
    by_check = {
        "error_rate": _first(_error_fires(traffic, grid, limits, bound) & allowed, grid),
        "latency_order": _first(_order_fires(traffic, grid, buckets, limits, bound) & allowed, grid),
        "latency_p99": _first(_p99_fires(traffic, grid, buckets, limits, bound + np.log(2)) & allowed, grid),
    }
    if limits.max_divergence is not None:
        compared = np.cumsum(traffic.canary, axis=1)[:, grid - 1]
        disagreed = np.cumsum(traffic.disagreed, axis=1)[:, grid - 1]
        fires = log_evalue_above(disagreed, compared, limits.max_divergence, LOW_RATES) >= bound
        by_check["divergence"] = _first(fires & allowed, grid)
    stacked = np.stack(list(by_check.values()))
    at = np.where(stacked == NEVER, np.iinfo(np.int64).max, stacked).min(axis=0)
    return Rollbacks(np.where(at == np.iinfo(np.int64).max, NEVER, at), by_check)


def _first(fires: BoolArray, grid: IntArray) -> IntArray:
    return np.where(fires.any(axis=1), grid[fires.argmax(axis=1)], NEVER)


def _error_fires(traffic: Traffic, grid: IntArray, limits: Limits, bound: float) -> BoolArray:
    def seen(mask: BoolArray) -> IntArray:
        return np.asarray(np.cumsum(mask, axis=1)[:, grid - 1], dtype=np.int64)

    canary, failed = traffic.canary, traffic.failed
    e_c, n_c, e_s, n_s = seen(canary & failed), seen(canary), seen(~canary & failed), seen(~canary)
    # Only where the canary's estimate is above the stable's plus the margin can the evidence exceed 1:
    # the best fit of the null is searched for there alone.
    margin = limits.max_error_increase
    may = e_c * np.maximum(n_s, 1) > (e_s + margin * np.maximum(n_s, 1)) * np.maximum(n_c, 1)
    fires = np.zeros(may.shape, bool)
    fires[may] = error_evidence(e_c[may], n_c[may], e_s[may], n_s[may], margin).log_worse >= bound
    return fires


def _order_fires(traffic: Traffic, grid: IntArray, buckets: LatencyBuckets, limits: Limits, bound: float) -> BoolArray:
    """The paired test: the k-th successful canary latency meets the k-th successful stable one."""
    rollouts, requests = traffic.canary.shape
    bucket = buckets.indices(traffic.latency_s)
    ok = ~traffic.failed
    when_c, bucket_c, count_c = _in_arrival_order(ok & traffic.canary, bucket)
    when_s, bucket_s, count_s = _in_arrival_order(ok & ~traffic.canary, bucket)
    pairs = np.minimum(count_c, count_s)
    real = np.arange(requests)[None, :] < pairs[:, None]
    outcome = np.where(real, np.sign(bucket_c - bucket_s - buckets.shift(limits.max_latency_ratio)), 0)
    wins, losses = np.cumsum(outcome > 0, axis=1), np.cumsum(outcome < 0, axis=1)
    fires_after_pair = order_evidence(wins, losses).log_worse >= bound
    done = np.where(real, np.maximum(when_c, when_s) + 1, requests + 1)  # requests served when pair k is complete
    done_by_look = np.stack([np.searchsorted(done[r], grid, side="right") for r in range(rollouts)])
    padded = np.concatenate([np.zeros((rollouts, 1), bool), fires_after_pair], axis=1)
    return np.take_along_axis(padded, done_by_look, axis=1)


def _in_arrival_order(mask: BoolArray, bucket: IntArray) -> tuple[IntArray, IntArray, IntArray]:
    """Per rollout: the request numbers where ``mask`` holds, their buckets (padded at the end), their count."""
    requests = mask.shape[1]
    order = np.argsort(np.where(mask, np.arange(requests), requests), axis=1, kind="stable")
    return order, np.take_along_axis(bucket, order, axis=1), mask.sum(axis=1)


def _p99_fires(traffic: Traffic, grid: IntArray, buckets: LatencyBuckets, limits: Limits, bound: float) -> BoolArray:
    """The p99 check with running tail counts: one pass over the looks, all rollouts at once."""
    rollouts, requests = traffic.canary.shape
    bucket = buckets.indices(traffic.latency_s)
    ok = ~traffic.failed
    fewest_above = critical_above(np.arange(requests + 1), TAIL, bound, LOW_RATES)  # canary: evidence needs this many
    most_above = critical_below(np.arange(requests + 1), TAIL, bound, LOW_RATES)  # stable: a bound needs at most
    shift = buckets.shift(limits.max_latency_ratio)
    levels = np.arange(buckets.count)
    tails = {True: np.zeros((rollouts, buckets.count), np.int64), False: np.zeros((rollouts, buckets.count), np.int64)}
    seen = {True: np.zeros(rollouts, np.int64), False: np.zeros(rollouts, np.int64)}
    fires = np.zeros((rollouts, grid.size), bool)
    start = 0
    for look, end in enumerate(grid):
        for arm in (True, False):
            chosen = ok[:, start:end] & (traffic.canary[:, start:end] == arm)
            for column in range(end - start):  # a look every request: one column; each adds its latency's tail
                rows = chosen[:, column]
                tails[arm][rows] += levels[None, :] < bucket[rows, start + column][:, None]
                seen[arm] += rows
        start = end
        holds = tails[False] <= most_above[seen[False]][:, None]
        holds[:, -1] = False
        upper = np.where(holds.any(axis=1), holds.argmax(axis=1), NEVER)
        threshold = np.minimum(upper + shift, buckets.count - 1)  # the open top bucket: nothing above it
        above = np.take_along_axis(tails[True], threshold[:, None], axis=1)[:, 0]
        fires[:, look] = (upper != NEVER) & (above >= fewest_above[seen[True]])
    return fires
