"""The rollout analysis: anytime-valid checks, proved on simulated rollouts and on random counts.

The simulations check after every request (or every few, where only detection speed is asked) and
print the requests each regression needed; run with ``-s`` to see them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.analysis.decision import Limits, RolloutAnalysis, Verdict
from gateway.analysis.error_rate import error_evidence
from gateway.analysis.evalues import (
    JEFFREYS,
    LOW_RATES,
    critical_above,
    critical_below,
    log_evalue_above,
    log_evalue_below,
)
from gateway.analysis.latency import LatencyBuckets
from gateway.analysis.simulation import NEVER, SyntheticArms, Traffic, rollbacks, synthetic_traffic
from gateway.telemetry.recent_traffic import BUCKET_BOUNDS_S

# Buckets over the simulated latencies' range (1 ms to 130 ms), few enough to keep the simulations quick.
BUCKETS = LatencyBuckets(first_bound_s=1e-3, growth=1.05, bounds=100)
ALPHA = 0.05


def binomial_tolerance(rate: float, trials: int) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / trials)


def test_an_identical_canary_checked_after_every_request_is_rolled_back_at_most_alpha_of_the_time() -> None:
    # The strictest limits (no margin, ratio 1) and a shadow disagreeing exactly at its limit: the
    # nulls' edges, where false alarms are likeliest.
    limits = Limits(alpha=ALPHA, max_error_increase=0.0, max_latency_ratio=1.0, max_divergence=0.02)
    runs, requests = 500, 1500
    arms = SyntheticArms(disagreement_rate=0.02)
    found = rollbacks(synthetic_traffic(arms, runs, requests, seed=17), limits, BUCKETS, every=1)
    assert set(found.by_check) == {"error_rate", "latency_order", "latency_p99", "divergence"}
    share = float(found.rolled_back.mean())
    print(f"A/A: {share:.3f} of {runs} rollouts rolled back, checked after each of {requests} requests")
    assert share <= ALPHA + binomial_tolerance(ALPHA, runs)


def test_an_identical_canary_within_the_default_margins_is_never_rolled_back() -> None:
    found = rollbacks(synthetic_traffic(SyntheticArms(canary_share=0.2), 200, 2000, seed=3), Limits(), BUCKETS)
    assert not found.rolled_back.any()


def test_a_canary_failing_two_points_more_is_rolled_back_by_the_error_check() -> None:
    arms = SyntheticArms(stable_error_rate=0.01, canary_error_rate=0.03)
    found = rollbacks(synthetic_traffic(arms, 60, 20_000, seed=5), Limits(alpha=ALPHA), BUCKETS, every=20)
    caught = found.by_check["error_rate"]
    median = float(np.median(caught[caught != NEVER]))
    print(f"error +2 points: {np.mean(caught != NEVER):.2f} caught, median {median:.0f} requests (both arms)")
    assert np.mean(caught != NEVER) >= 0.95
    assert median < 10_000


def test_a_canary_one_and_a_half_times_slower_is_rolled_back_by_a_latency_check() -> None:
    arms = SyntheticArms(canary_latency_ratio=1.5)
    found = rollbacks(synthetic_traffic(arms, 200, 2000, seed=7), Limits(alpha=ALPHA), BUCKETS, every=1)
    assert found.rolled_back.all()
    median = float(np.median(found.at_request))
    print(f"latency x1.5: all caught, median {median:.0f} requests, at most {found.at_request.max()}")
    assert median < 1000


def replay(traffic: Traffic, rollout: int, limits: Limits) -> int:
    """Feed one simulated rollout request by request to the controller's object; the request it rolls back at."""
    analysis = RolloutAnalysis(limits, BUCKETS)
    for index in range(traffic.canary.shape[1]):
        canary = bool(traffic.canary[rollout, index])
        analysis.observe(canary, float(traffic.latency_s[rollout, index]), bool(traffic.failed[rollout, index]))
        if canary and limits.max_divergence is not None:
            analysis.observe_comparison(bool(traffic.disagreed[rollout, index]))
        if analysis.decide().verdict is Verdict.ROLL_BACK:
            return index + 1
    return NEVER


def test_the_simulation_and_the_controllers_object_roll_back_at_the_same_request() -> None:
    limits = Limits(alpha=ALPHA, max_divergence=0.02)
    for arms in (
        SyntheticArms(canary_latency_ratio=1.5),
        SyntheticArms(canary_error_rate=0.15),
        SyntheticArms(disagreement_rate=0.1),
    ):
        traffic = synthetic_traffic(arms, 2, 1200, seed=11)
        simulated = rollbacks(traffic, limits, BUCKETS).at_request
        assert [replay(traffic, r, limits) for r in range(2)] == simulated.tolist()


def test_no_decision_before_the_minimum_of_requests_per_arm() -> None:
    analysis = RolloutAnalysis(Limits(min_requests=50), BUCKETS)
    for _ in range(49):
        analysis.observe(True, 0.5, True)  # as bad as a canary gets
        analysis.observe(False, 0.01, False)
    decision = analysis.decide()
    assert decision.verdict is Verdict.INSUFFICIENT_TRAFFIC
    assert "canary 49, stable 49" in decision.reason
    analysis.observe(True, 0.5, True)
    analysis.observe(False, 0.01, False)
    assert analysis.decide().verdict is Verdict.ROLL_BACK


def test_a_clearly_better_canary_ends_its_step_early_and_the_evidence_is_reported() -> None:
    rng = np.random.default_rng(2)
    analysis = RolloutAnalysis(Limits(min_requests=100, max_latency_ratio=1.2), BUCKETS)
    verdicts = []
    for _ in range(3000):
        analysis.observe(True, 0.005 * math.exp(0.3 * rng.standard_normal()), False)
        analysis.observe(False, 0.010 * math.exp(0.3 * rng.standard_normal()), bool(rng.random() < 0.05))
        verdicts.append(analysis.decide().verdict)
        if verdicts[-1] is Verdict.STEP_UP:
            break
    assert verdicts[-1] is Verdict.STEP_UP and Verdict.ROLL_BACK not in verdicts
    record = analysis.decide().as_dict()
    checks = {check["check"]: check for check in record["checks"]}  # type: ignore[attr-defined]
    assert set(checks) == {"error_rate", "latency_order", "latency_p99"}
    assert checks["error_rate"]["e_value_no_worse"] >= checks["error_rate"]["no_worse_bound"]
    assert math.isclose(checks["error_rate"]["no_worse_bound"], 1 / 0.05)
    analysis.begin_step()
    assert analysis.decide().verdict is Verdict.CONTINUE  # a new step needs its own minimum first


def test_a_batch_counts_like_its_requests_one_by_one() -> None:
    one, batch = RolloutAnalysis(Limits(), BUCKETS), RolloutAnalysis(Limits(), BUCKETS)
    latencies = [0.002, 0.004, 0.004, 0.03]
    for latency in latencies:
        one.observe(True, latency, False)
    one.observe(True, 0.5, True)
    histogram = [0] * BUCKETS.count
    for latency in latencies:
        histogram[BUCKETS.index(latency)] += 1
    batch.observe_batch(True, 5, 1, histogram)
    assert one.evidence()[0] == batch.evidence()[0]
    assert one.evidence()[2] == batch.evidence()[2]


def test_the_last_minutes_buckets_of_turnout_status_are_one_set_of_latency_buckets() -> None:
    # So the per-arm figures of the metrics issue feed observe_batch as they are.
    recent = LatencyBuckets(first_bound_s=50e-6, growth=1.25, bounds=64)
    assert recent.upper_bounds_s == pytest.approx(BUCKET_BOUNDS_S, rel=1e-12)
    assert recent.count == len(BUCKET_BOUNDS_S) + 1
    assert recent.shift(1.2) == 1


def test_a_divergent_shadow_is_a_fourth_check() -> None:
    analysis = RolloutAnalysis(Limits(max_divergence=0.02, min_requests=10), BUCKETS)
    for index in range(400):
        analysis.observe(index % 2 == 0, 0.01, False)
        analysis.observe_comparison(index % 10 == 0)  # 10% disagree
    decision = analysis.decide()
    assert decision.verdict is Verdict.ROLL_BACK and "divergence" in decision.reason
    assert analysis.limits.log_rollback_bound == math.log(4 / 0.05)


counts = st.integers(min_value=0, max_value=5000)


@settings(max_examples=60, deadline=None)
@given(counts, counts, counts, counts)
def test_the_error_evidence_stays_at_most_1_where_the_estimates_sit_inside_its_null(
    e_c: int, extra: int, e_s: int, extra_s: int
) -> None:
    n_c, n_s = e_c + extra + 1, e_s + extra_s + 1
    margin = 0.005
    found = error_evidence(e_c, n_c, e_s, n_s, margin)
    if e_c / n_c <= e_s / n_s + margin:
        assert found.log_worse <= 1e-9
    if e_c / n_c >= e_s / n_s + margin:
        assert found.log_no_worse <= 1e-9


@settings(max_examples=60, deadline=None)
@given(counts, counts, counts, counts, st.sampled_from([0.0, 0.005, 0.05]))
def test_the_controllers_scalar_path_and_the_simulations_arrays_agree(
    e_c: int, extra: int, e_s: int, extra_s: int, margin: float
) -> None:
    n_c, n_s = e_c + extra, e_s + extra_s
    one = error_evidence(e_c, n_c, e_s, n_s, margin)
    many = error_evidence(np.array([e_c]), np.array([n_c]), np.array([e_s]), np.array([n_s]), margin)
    assert math.isclose(float(one.log_worse), float(many.log_worse[0]), abs_tol=1e-9)
    assert math.isclose(float(one.log_no_worse), float(many.log_no_worse[0]), abs_tol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=100_000),
    st.sampled_from([0.01, 0.02, 0.5]),
    st.sampled_from([JEFFREYS, LOW_RATES]),
)
def test_critical_counts_are_where_the_evidence_first_reaches_the_bound(
    trials: int, rate0: float, prior: tuple[float, float]
) -> None:
    bound = math.log(60)
    least = int(critical_above(trials, rate0, bound, prior))
    if least <= trials:
        assert log_evalue_above(least, trials, rate0, prior) >= bound
    if least > 0:
        assert log_evalue_above(least - 1, trials, rate0, prior) < bound
    most = int(critical_below(trials, rate0, bound, prior))
    if most >= 0:
        assert log_evalue_below(most, trials, rate0, prior) >= bound
    if most < trials:
        assert log_evalue_below(most + 1, trials, rate0, prior) < bound


@settings(max_examples=40, deadline=None)
@given(st.floats(min_value=1.0, max_value=3.0), st.floats(min_value=1e-4, max_value=10.0))
def test_a_ratio_becomes_a_shift_that_never_falls_short_of_it(ratio: float, latency_s: float) -> None:
    shift = BUCKETS.shift(ratio)
    assert BUCKETS.growth**shift >= ratio * (1 - 1e-9)
    assert shift == 0 or BUCKETS.growth ** (shift - 1) < ratio
