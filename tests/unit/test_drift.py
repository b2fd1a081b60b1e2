"""The drift statistics: PSI by hand, tied quantiles, scipy's numbers on the same data, and verdicts on digits."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats
from scipy.spatial import distance

from gateway.capture import drift
from gateway.capture.drift_thresholds import PSI_EPSILON, SCIPY_DIRECT_MAX_ROWS
from tests.support.model_repository import EXAMPLES

DIGITS = EXAMPLES / "digits"
FEATURES = [f"px_{i}" for i in range(64)]
SHIFTED = ("px_20", "px_21", "px_36", "px_43")


def digits(version: int) -> dict[str, np.ndarray]:
    table = pq.read_table(DIGITS / str(version) / "reference.parquet", columns=FEATURES)
    return {name: table.column(name).to_numpy() for name in FEATURES}


def flagged(reference: dict[str, np.ndarray], current: dict[str, np.ndarray]) -> set[str]:
    return {name for name in FEATURES if drift.compare(drift.profile(name, reference[name]), current[name]).drifted}


def test_features_shifted_by_half_a_standard_deviation_are_flagged_and_no_others() -> None:
    reference = digits(1)
    current = dict(reference)
    for name in SHIFTED:
        current[name] = reference[name] + 0.5 * reference[name].std()
    assert flagged(reference, current) == set(SHIFTED)


def test_another_sample_of_the_same_data_flags_nothing() -> None:
    reference = digits(1)
    assert flagged(reference, digits(2)) == set()
    # A random half of the rows, against all of them: sampling noise alone stays under every threshold.
    for seed in range(3):
        rows = np.random.default_rng(seed).permutation(len(reference["px_0"]))[: len(reference["px_0"]) // 2]
        assert flagged(reference, {name: values[rows] for name, values in reference.items()}) == set(), seed


def scipy_statistics(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> tuple[float, ...]:
    """Each statistic straight from scipy (and the bins from numpy), to hold ours to. The values are
    widened to float64 first, exactly, as ours are: a float32 std would differ in the 8th digit."""
    reference, current = reference.astype(np.float64), current.astype(np.float64)
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1], method="inverted_cdf"))
    reference_counts = np.bincount(np.searchsorted(edges, reference, side="left"), minlength=edges.size + 1)
    current_counts = np.bincount(np.searchsorted(edges, current, side="left"), minlength=edges.size + 1)
    ks = stats.ks_2samp(reference, current)
    return (
        float(distance.jensenshannon(reference_counts / reference.size, current_counts / current.size)),
        float(ks.statistic),
        float(ks.pvalue),
        float(stats.wasserstein_distance(reference, current)) / max(float(np.std(reference)), 0.001),
    )


def ours(reference: np.ndarray, current: np.ndarray) -> tuple[float, ...]:
    result = drift.compare(drift.profile("x", reference), current)
    return result.js, result.ks, result.ks_pvalue, result.wasserstein


def test_the_statistics_are_scipys_on_digits() -> None:
    reference, current = digits(1), digits(1)
    for name in ("px_5", "px_20", "px_43", "px_60"):
        shifted = current[name] + 0.3 * current[name].std()
        assert ours(reference[name], shifted) == pytest.approx(scipy_statistics(reference[name], shifted), rel=1e-9)
        half = current[name][::2]
        assert ours(reference[name], half) == pytest.approx(scipy_statistics(reference[name], half), rel=1e-9)


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_the_sorted_array_path_for_large_samples_gives_scipys_numbers(kind: str) -> None:
    rng = np.random.default_rng(7)
    rows = SCIPY_DIRECT_MAX_ROWS * 5  # past scipy's exact KS: the asymptotic p-value, as scipy takes it
    if kind == "continuous":
        reference = rng.normal(size=3_000).astype(np.float32)
        current = rng.normal(0.04, 1.1, size=rows).astype(np.float32)
    else:  # ties everywhere, and values the reference never had
        reference = rng.integers(0, 8, size=3_000).astype(np.float64)
        current = rng.integers(0, 10, size=rows).astype(np.float64)
    expected = scipy_statistics(reference, current)
    assert ours(reference, current) == pytest.approx(expected, rel=1e-9, abs=1e-300)
    # And scipy's functions themselves on our sorted path's inputs, both ways round.
    assert drift.wasserstein_distance(np.sort(current.astype(np.float64)), np.sort(reference.astype(np.float64))) == (
        pytest.approx(stats.wasserstein_distance(current, reference), rel=1e-9)
    )
    assert drift.ks_statistic(np.sort(reference.astype(np.float64)), np.sort(current.astype(np.float64))) == (
        pytest.approx(stats.ks_2samp(reference, current).statistic, rel=1e-12)
    )


def test_psi_by_hand() -> None:
    # Bins of the reference [1, 2, 3, 4] at the quartiles of a 2-bin split: (-inf, 2], (2, inf).
    reference = drift.profile("x", [1.0, 2.0, 3.0, 4.0], bins=2)
    assert reference.edges.tolist() == [2.0]
    assert reference.shares.tolist() == [0.5, 0.5]
    result = drift.compare(reference, [1.0, 3.0, 4.0, 5.0])  # a quarter below 2, three quarters above
    by_hand = (0.25 - 0.5) * math.log(0.25 / 0.5) + (0.75 - 0.5) * math.log(0.75 / 0.5)
    assert result.psi == pytest.approx(by_hand, rel=1e-12)
    assert result.psi == pytest.approx(0.274653, abs=1e-6)


def test_an_empty_bin_counts_as_epsilon_in_psi() -> None:
    by_hand = (1.0 - 0.5) * math.log(1.0 / 0.5) + (PSI_EPSILON - 0.5) * math.log(PSI_EPSILON / 0.5)
    assert drift.psi(np.array([0.5, 0.5]), np.array([1.0, 0.0])) == pytest.approx(by_hand, rel=1e-12)
    assert drift.psi(np.array([0.5, 0.5, 0.0]), np.array([0.5, 0.5, 0.0])) == 0.0  # empty on both sides: nothing


def test_tied_quantiles_of_a_discrete_feature_merge_into_one_bin() -> None:
    # 70% zeros: seven of the nine deciles are 0; they make one bin (-inf, 0], not seven, none empty.
    # The 0.8 and 0.9 deciles are 1 and 2 (the smallest value whose share reaches them), and the 3s
    # fill the open last bin.
    values = np.array([0] * 70 + [1] * 10 + [2] * 10 + [3] * 10, dtype=np.float64)
    reference = drift.profile("x", values)
    assert reference.edges.tolist() == [0.0, 1.0, 2.0]
    assert reference.shares.tolist() == pytest.approx([0.7, 0.1, 0.1, 0.1])
    assert reference.distinct == 4 and reference.test == "js"
    same = drift.compare(reference, values[::-1])
    assert (same.psi, same.js, same.wasserstein, same.drifted) == (0.0, 0.0, 0.0, False)
    # The 3s become -1: the first bin fills, the last empties (and counts as epsilon in PSI).
    moved = drift.compare(reference, np.where(values == 3, -1.0, values))
    assert moved.current_shares.tolist() == pytest.approx([0.8, 0.1, 0.1, 0.0])
    assert moved.drifted and moved.js > 0.1 and moved.psi > 0.25


def test_a_constant_reference_feature() -> None:
    reference = drift.profile("x", np.zeros(100))
    # One edge: the zeros, and an open bin above them that the reference leaves empty.
    assert reference.edges.tolist() == [0.0] and reference.shares.tolist() == [1.0, 0.0] and reference.std == 0.0
    assert not drift.compare(reference, np.zeros(50)).drifted
    # The std is floored (Evidently's 0.001), so any change at all is drift rather than a division by zero.
    changed = drift.compare(reference, np.r_[np.zeros(45), np.ones(5)])
    assert changed.drifted and math.isfinite(changed.wasserstein)


def test_non_finite_values_are_left_out() -> None:
    reference = drift.profile("x", [1.0, 2.0, np.nan, 3.0, np.inf])
    assert reference.rows == 3
    assert drift.compare(reference, [1.0, np.nan, 2.0, 3.0]).ks == 0.0
    with pytest.raises(drift.NoFiniteValues, match="no finite values"):
        drift.compare(reference, [np.nan])


def test_the_verdict_bands() -> None:
    assert drift.verdict("wasserstein", psi=0.05, js=0.5, wasserstein=0.05) == "ok"  # js does not decide here
    assert drift.verdict("wasserstein", psi=0.1, js=0.0, wasserstein=0.05) == "warn"
    assert drift.verdict("wasserstein", psi=0.25, js=0.0, wasserstein=0.0) == "drift"
    assert drift.verdict("wasserstein", psi=0.0, js=0.0, wasserstein=0.1) == "drift"
    assert drift.verdict("js", psi=0.0, js=0.1, wasserstein=0.0) == "drift"
    assert drift.verdict("js", psi=0.0, js=0.09, wasserstein=5.0) == "ok"


def test_the_dataset_drifts_at_the_drift_share() -> None:
    reference = drift.profile("x", np.arange(100.0))
    still, moved = drift.compare(reference, np.arange(100.0)), drift.compare(reference, np.arange(100.0) + 50)
    assert drift.dataset_drifted([moved, still], drift_share=0.5)
    assert not drift.dataset_drifted([moved, still, still], drift_share=0.5)
    assert drift.dataset_drifted([moved, still, still], drift_share=0.3)
    assert not drift.dataset_drifted([], drift_share=0.5)
