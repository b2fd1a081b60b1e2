"""Drift statistics of one numeric feature, a reference sample against a current one, and the verdicts.

Pure functions of numpy arrays: no files, no clocks. The reference side is summarised once into a
:class:`FeatureProfile` (its sorted values, the quantile bin edges and its share in each bin), so a
report or a sliding window compares any number of current samples against it without redoing that.

The statistics, and where they come from:

- **PSI**, the population stability index, over the reference's quantile bins: sum over bins of
  ``(current share - reference share) * ln(current share / reference share)``. A bin empty on one side
  would make the logarithm infinite, so an empty share counts as ``PSI_EPSILON`` (1e-4, Evidently's
  fill value).
- **Jensen-Shannon distance** over the same bins, natural logarithm (``scipy.spatial.distance.jensenshannon``).
  It is defined with empty bins, so it takes the raw shares.
- **Kolmogorov-Smirnov**: the two-sample statistic and its p-value, as ``scipy.stats.ks_2samp``.
- **Wasserstein distance** divided by the reference's standard deviation (floored at 0.001, as Evidently
  does, so a constant reference feature does not divide by zero), as ``scipy.stats.wasserstein_distance``.

Small samples go to scipy as they are. A large current sample (a million captured rows) is sorted
once, and the KS statistic and the Wasserstein distance are read off the sorted arrays in linear
time: scipy's functions sort both samples again and merge them with a binary search per value, which
costs about 0.45 s per feature at a million rows (measured, docs/benchmarks-log.md). The KS p-value
then comes from the same asymptotic distribution scipy uses at that size (``kstwo``); the tests hold
both paths to scipy's numbers on the same data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats
from scipy.spatial import distance

from gateway.capture.drift_thresholds import (
    DEFAULT_BINS,
    DEFAULT_DRIFT_SHARE,
    FEW_VALUES,
    JS_DRIFT,
    PSI_DRIFT,
    PSI_EPSILON,
    PSI_WARN,
    SCIPY_DIRECT_MAX_ROWS,
    STD_FLOOR,
    WASSERSTEIN_DRIFT,
)

Floats = npt.NDArray[np.float64]


class NoFiniteValues(ValueError):
    """A sample with nothing to compare: empty, or only NaN and infinities."""


Level = Literal["ok", "warn", "drift"]
Test = Literal["wasserstein", "js"]


@dataclass(frozen=True)
class FeatureProfile:
    """One reference feature, summarised once for every comparison against it."""

    name: str
    sorted_values: Floats
    edges: Floats  # inner bin edges, distinct; bins are (-inf, e0], (e0, e1], ..., (e_last, inf)
    shares: Floats  # the reference's share in each bin
    std: float
    distinct: int

    @property
    def rows(self) -> int:
        return int(self.sorted_values.size)

    @property
    def test(self) -> Test:
        """Which statistic decides: few distinct values make a feature categorical in effect (Evidently)."""
        return "js" if self.distinct <= FEW_VALUES else "wasserstein"


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's statistics and verdict."""

    name: str
    psi: float
    js: float
    ks: float
    ks_pvalue: float
    wasserstein: float  # divided by the reference's standard deviation
    drifted: bool
    level: Level  # ok, warn (PSI in the moderate band) or drift
    test: Test  # the statistic that decided, besides PSI
    reference_mean: float
    current_mean: float
    edges: Floats  # the bins' inner edges, for drawing them
    reference_shares: Floats
    current_shares: Floats

    @property
    def score(self) -> float:
        """How far past its own threshold the deciding statistic is; sorts features by drift."""
        decided = self.wasserstein / WASSERSTEIN_DRIFT if self.test == "wasserstein" else self.js / JS_DRIFT
        return max(decided, self.psi / PSI_DRIFT)


def profile(name: str, values: npt.ArrayLike, bins: int = DEFAULT_BINS) -> FeatureProfile:
    """Summarise a reference feature. Non-finite values are left out."""
    if bins < 2:
        raise ValueError(f"bins must be at least 2, not {bins}")
    ordered = _sorted_finite(values)
    if ordered.size == 0:
        raise NoFiniteValues(f"reference feature {name!r} has no finite values")
    edges = quantile_edges(ordered, bins)
    return FeatureProfile(
        name=name,
        sorted_values=ordered,
        edges=edges,
        shares=bin_shares(ordered, edges),
        std=float(np.std(ordered)),
        distinct=int(np.count_nonzero(np.diff(ordered)) + 1),
    )


def quantile_edges(sorted_values: Floats, bins: int) -> Floats:
    """The inner edges of ``bins`` equal-share bins of the reference, duplicates merged.

    Edges are reference values (the inverted-CDF quantile), and bins are closed on the right, so a
    value that fills several quantiles of a discrete feature (the zeros of a pixel that is mostly
    blank) makes one bin of its own rather than several empty ones: a feature may have fewer bins
    than asked for, never an empty one inside the reference's range.
    """
    quantiles = np.linspace(0.0, 1.0, bins + 1)[1:-1]
    edges: Floats = np.unique(np.quantile(sorted_values, quantiles, method="inverted_cdf"))
    return edges


def bin_shares(sorted_values: Floats, edges: Floats) -> Floats:
    """The share of a sorted sample in each bin of ``edges``: a binary search per edge, not per value."""
    below = np.searchsorted(sorted_values, edges, side="right")
    counts = np.diff(np.concatenate(([0], below, [sorted_values.size])))
    shares: Floats = counts / max(sorted_values.size, 1)
    return shares


def psi(reference_shares: Floats, current_shares: Floats, epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of two share vectors over the same bins; empty shares count as epsilon."""
    reference = np.where(reference_shares > 0, reference_shares, epsilon)
    current = np.where(current_shares > 0, current_shares, epsilon)
    return float(np.sum((current - reference) * np.log(current / reference)))


def compare(reference: FeatureProfile, values: npt.ArrayLike, *, ks_pvalue: bool = True) -> FeatureDrift:
    """Every statistic of a current sample of one feature against its reference, and the verdict.

    ``ks_pvalue=False`` leaves the KS p-value out (NaN): on samples of up to 10,000 rows it is most
    of the time, and the metrics exporter, which recomputes every minute, does not show it.
    """
    current = _sorted_finite(values)
    if current.size == 0:
        raise NoFiniteValues(f"current feature {reference.name!r} has no finite values")
    current_shares = bin_shares(current, reference.edges)
    population_index = psi(reference.shares, current_shares)
    js = float(distance.jensenshannon(reference.shares, current_shares))
    if ks_pvalue:
        ks, pvalue = ks_test(reference.sorted_values, current)
    else:
        ks, pvalue = ks_statistic(reference.sorted_values, current), math.nan
    wasserstein = wasserstein_distance(reference.sorted_values, current) / max(reference.std, STD_FLOOR)
    level = verdict(reference.test, population_index, js, wasserstein)
    return FeatureDrift(
        name=reference.name,
        psi=population_index,
        js=js,
        ks=ks,
        ks_pvalue=pvalue,
        wasserstein=wasserstein,
        drifted=level == "drift",
        level=level,
        test=reference.test,
        reference_mean=float(np.mean(reference.sorted_values)),
        current_mean=float(np.mean(current)),
        edges=reference.edges,
        reference_shares=reference.shares,
        current_shares=current_shares,
    )


def verdict(test: Test, psi: float, js: float, wasserstein: float) -> Level:
    """Drift when the deciding statistic or PSI crosses its drift threshold; warn in PSI's moderate band."""
    decided = wasserstein >= WASSERSTEIN_DRIFT if test == "wasserstein" else js >= JS_DRIFT
    if decided or psi >= PSI_DRIFT:
        return "drift"
    return "warn" if psi >= PSI_WARN else "ok"


def dataset_drifted(features: list[FeatureDrift], drift_share: float = DEFAULT_DRIFT_SHARE) -> bool:
    """Evidently's rule: the dataset drifts when at least ``drift_share`` of its features do."""
    if not features:
        return False
    return sum(feature.drifted for feature in features) >= drift_share * len(features)


def ks_test(reference_sorted: Floats, current_sorted: Floats) -> tuple[float, float]:
    """The two-sample KS statistic and p-value of two sorted samples, as ``scipy.stats.ks_2samp`` gives them."""
    m, n = reference_sorted.size, current_sorted.size
    if max(m, n) <= SCIPY_DIRECT_MAX_ROWS:
        result = stats.ks_2samp(reference_sorted, current_sorted)
        return float(result.statistic), float(result.pvalue)
    statistic = ks_statistic(reference_sorted, current_sorted)
    # scipy's asymptotic branch: Smirnov's distribution at the effective sample size.
    larger, smaller = max(m, n), min(m, n)
    effective = np.round(larger * smaller / (larger + smaller))
    return statistic, float(np.clip(stats.kstwo.sf(statistic, effective), 0.0, 1.0))


def ks_statistic(reference_sorted: Floats, current_sorted: Floats) -> float:
    """The largest gap between the two empirical CDFs, from sorted samples.

    Between two distinct reference values the reference CDF is flat and the current one only rises,
    so the gap is largest at an end of the interval: at a reference value (both CDFs taken there) or
    just before one (both taken just below it). Two binary searches per distinct reference value find
    every candidate, where ks_2samp searches for every value of both samples.
    """
    points = np.unique(reference_sorted)
    m, n = reference_sorted.size, current_sorted.size
    at = np.searchsorted(reference_sorted, points, side="right") / m - np.searchsorted(
        current_sorted, points, side="right"
    ) / n
    before = np.searchsorted(reference_sorted, points, side="left") / m - np.searchsorted(
        current_sorted, points, side="left"
    ) / n
    return float(max(np.max(np.abs(at)), np.max(np.abs(before))))


def wasserstein_distance(reference_sorted: Floats, current_sorted: Floats) -> float:
    """The first Wasserstein distance of two sorted samples, as ``scipy.stats.wasserstein_distance``.

    It is the area between the two empirical CDFs. The reference values are slotted into the sorted
    current sample (one binary search each); walking the merged values, each CDF is the running count
    of its own sample's values, and where the next value is larger than this one, everything so far is
    at most this value, so ties need no care.
    """
    m, n = reference_sorted.size, current_sorted.size
    if max(m, n) <= SCIPY_DIRECT_MAX_ROWS:
        return float(stats.wasserstein_distance(reference_sorted, current_sorted))
    # Where each reference value lands in the merged order (after the current values equal to it).
    landed = np.searchsorted(current_sorted, reference_sorted, side="right") + np.arange(m)
    from_reference = np.zeros(n + m, dtype=bool)
    from_reference[landed] = True
    merged = np.empty(n + m)
    merged[landed] = reference_sorted
    merged[~from_reference] = current_sorted
    # The CDF gap after merged value t, when R reference values are among the first t + 1:
    # R / m - (t + 1 - R) / n, which is R * (1/m + 1/n) - (t + 1) / n; computed in place, one array.
    gap = np.cumsum(from_reference[:-1], dtype=np.float64)
    gap *= 1.0 / m + 1.0 / n
    steps = np.arange(1.0, n + m)
    steps /= n
    gap -= steps
    np.abs(gap, out=gap)
    return float(np.dot(gap, np.diff(merged)))


def _sorted_finite(values: npt.ArrayLike) -> Floats:
    array = np.asarray(values)
    finite = np.isfinite(array)
    if not finite.all():
        array = array[finite]
    # Sort in the sample's own type (float32 sorts twice as fast), then widen: the order survives.
    ordered = np.sort(array)
    widened: Floats = ordered.astype(np.float64, copy=False)
    return widened
