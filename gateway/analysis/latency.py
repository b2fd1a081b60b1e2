"""Latency checks: is the canary stochastically slower than the stable version stretched by a ratio,
and is its p99 above that ratio times the stable's?

Latencies land on fixed geometric buckets (:class:`LatencyBuckets`), so memory is bounded and the
figures of several processes add up; the buckets of ``gateway/telemetry/recent_traffic.py``
(``BUCKET_BOUNDS_S``: 50 µs x 1.25^i) are one such set, and finer ones give finer ratios. A ratio
``r`` becomes a shift of ``s = ceil(log r / log growth)`` buckets: scaling a latency by ``growth^s``
moves it exactly ``s`` buckets up, and ``growth^s >= r`` keeps every test on the safe side.

- Stochastic order, after Lindon, Sanden and Shirikian (KDD 2022), here as a sequential sign test
  on pairs: each canary latency is paired with a stable one (in arrival order, whatever their
  values) and the pair counts a win when the canary's bucket is more than ``s`` above the
  stable's, a loss when less, nothing when level. If the canary is no slower than ``r`` times the
  stable (stochastically), wins are no likelier than losses, so the win count among decided pairs
  is tested against a rate of 1/2 (:func:`order_evidence`).
- p99: the stable's p99 is bounded above by a confidence sequence (the lowest boundary ``b`` with
  evidence that fewer than 1% of stable latencies exceed ``b``), and the canary's share above ``r``
  times that bound is tested against 1% (:func:`p99_evidence`); half of the check's level goes to
  each part. The evidence against 1% only grows with the count above the threshold, so a threshold
  set too high by the bound (the usual case) only weakens it; the bound below the true p99 is the
  one way to err, and its chance is the half spent on it (Howard, Ramdas, McAuliffe and Sekhon,
  Annals of Statistics 2021, build quantile confidence sequences the same way).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from gateway.analysis.evalues import (
    LOW_RATES,
    ArrayLike,
    FloatArray,
    critical_below,
    log_evalue_above,
    log_evalue_below,
)

TAIL = 0.01  # the p99's tail


@dataclass(frozen=True)
class LatencyBuckets:
    """Upper bounds ``first_bound_s * growth**i`` for i below ``bounds``, then one bucket for the rest."""

    first_bound_s: float = 50e-6
    growth: float = 1.05
    bounds: int = 300  # up to about 110 s at the defaults

    @cached_property
    def upper_bounds_s(self) -> tuple[float, ...]:
        return tuple(self.first_bound_s * self.growth**i for i in range(self.bounds))

    @property
    def count(self) -> int:
        return self.bounds + 1

    def index(self, latency_s: float) -> int:
        return bisect.bisect_left(self.upper_bounds_s, latency_s)

    def indices(self, latencies_s: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        return np.searchsorted(np.asarray(self.upper_bounds_s), latencies_s, side="left").astype(np.int64)

    def shift(self, ratio: float) -> int:
        """Buckets to move a latency up so that it is at least ``ratio`` times larger."""
        return max(0, math.ceil(math.log(ratio) / math.log(self.growth) - 1e-9))

    def bound_s(self, index: int) -> float:
        return self.upper_bounds_s[min(index, self.bounds - 1)]


@dataclass(frozen=True)
class OrderEvidence:
    """The paired test's log e-values: canary slower than ``r`` x stable, and surely not."""

    log_worse: FloatArray
    log_no_worse: FloatArray


def order_evidence(wins: ArrayLike, losses: ArrayLike) -> OrderEvidence:
    """Evidence from the decided pairs: wins are pairs where the canary was slower than the stretched stable."""
    w = np.asarray(wins, dtype=np.float64)
    decided = w + np.asarray(losses, dtype=np.float64)
    return OrderEvidence(log_evalue_above(w, decided, 0.5), log_evalue_below(w, decided, 0.5))


def pair_outcome(canary_bucket: ArrayLike, stable_bucket: ArrayLike, shift: int) -> npt.NDArray[np.int64]:
    """+1 when the canary is more than ``shift`` buckets above the stable (a win), -1 when less, 0 when level."""
    return np.asarray(np.sign(np.asarray(canary_bucket) - np.asarray(stable_bucket) - shift), dtype=np.int64)


class LatencyPairs:
    """Pairs the two arms' latencies in arrival order and counts wins and losses: O(1) a latency.

    Each arm waits in a bounded queue for a partner; a full queue drops its oldest entry (which
    entry goes never depends on a value, so the pairs stay fair draws).
    """

    def __init__(self, shift: int, capacity: int = 4096) -> None:
        self.shift = shift
        self.wins = 0
        self.losses = 0
        self.ties = 0
        self._canary: deque[int] = deque(maxlen=capacity)
        self._stable: deque[int] = deque(maxlen=capacity)

    def add(self, canary: bool, bucket: int) -> None:
        (self._canary if canary else self._stable).append(bucket)
        if self._canary and self._stable:
            outcome = int(pair_outcome(self._canary.popleft(), self._stable.popleft(), self.shift))
            self.wins += outcome > 0
            self.losses += outcome < 0
            self.ties += outcome == 0


@dataclass(frozen=True)
class P99Evidence:
    """The p99 check at one moment: the bounds it used and its log e-values (worse, no worse)."""

    log_worse: float
    log_no_worse: float
    stable_p99_upper_s: float | None  # None: not enough stable latencies to bound it yet
    canary_threshold_s: float | None
    canary_above: int  # canary latencies above the threshold


def tail_counts(histogram: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """``tails[..., j]``: the latencies in buckets above ``j`` (above its upper bound)."""
    above_or_in = np.cumsum(histogram[..., ::-1], axis=-1)[..., ::-1]
    return np.concatenate([above_or_in[..., 1:], np.zeros_like(above_or_in[..., :1])], axis=-1)


def stable_p99_upper_index(stable_histogram: npt.NDArray[np.int64], log_bound: float) -> npt.NDArray[np.int64]:
    """The lowest bucket whose upper bound has evidence of holding 99% of stable latencies; -1 when none.

    Vectorised over leading axes: ``stable_histogram[..., bucket]``.
    """
    tails = tail_counts(stable_histogram)
    most_above = critical_below(stable_histogram.sum(axis=-1), TAIL, log_bound, LOW_RATES)  # evidence: tail <= this
    holds = tails <= most_above[..., None]
    holds[..., -1] = False  # the open top bucket bounds nothing
    found = holds.any(axis=-1)
    return np.where(found, holds.argmax(axis=-1), -1)


def p99_evidence(
    canary_histogram: npt.NDArray[np.int64], stable_histogram: npt.NDArray[np.int64], buckets: LatencyBuckets,
    ratio: float, log_bound: float,
) -> P99Evidence:  # fmt: skip
    """The p99 check for one pair of histograms, with its figures; ``log_bound`` is each half's bound.

    No worse mirrors worse: the canary's p99 bounded above, the stable's bounded below (the highest
    boundary with evidence that more than 1% of stable latencies exceed it), and evidence that
    fewer than 1% of canary latencies exceed ``r`` x that lower bound (``r`` rounded down to whole
    buckets).
    """
    shift = buckets.shift(ratio)
    upper = int(stable_p99_upper_index(stable_histogram, log_bound))
    canary_tails = tail_counts(canary_histogram)
    n_c = int(canary_histogram.sum())
    log_worse = 0.0
    threshold_s = None
    above = 0
    if upper >= 0:
        # Past the last bound the threshold would fall short of r x the bound: the open top bucket,
        # with nothing above it, stands in (no evidence, never a wrong one).
        threshold = min(upper + shift, buckets.count - 1)
        above = int(canary_tails[threshold])
        threshold_s = buckets.bound_s(threshold)
        log_worse = float(log_evalue_above(above, n_c, TAIL, LOW_RATES))
    # No worse: the stable's p99 lower bound (highest boundary with evidence of > 1% above it).
    stable_tails = tail_counts(stable_histogram)
    over = np.asarray(log_evalue_above(stable_tails[:-1], int(stable_histogram.sum()), TAIL, LOW_RATES)) >= log_bound
    log_no_worse = 0.0
    if over.any():
        lower = int(np.flatnonzero(over)[-1])
        # The canary must show < 1% above r x (stable's lower bound): r rounded down to whole buckets.
        target = lower + max(0, math.floor(math.log(ratio) / math.log(buckets.growth) + 1e-9))
        if target < buckets.bounds:
            log_no_worse = float(log_evalue_below(int(canary_tails[target]), n_c, TAIL, LOW_RATES))
    return P99Evidence(log_worse, log_no_worse, buckets.bound_s(upper) if upper >= 0 else None, threshold_s, above)
