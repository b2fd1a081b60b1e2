"""Routing is pure: the split, the monotone sticky ramp and the precedence, proved on random inputs."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.routing.decide import Arm, Reason, bucket_of, decide
from gateway.routing.policy import BUCKETS, Canary, Policy, PolicyInvalid, Shadow, checked, weight_bp_from_percent

unit_draws = st.floats(min_value=0, max_value=1, exclude_max=True)
weights = st.integers(min_value=0, max_value=BUCKETS)
keys = st.text(min_size=1, max_size=40)


def canary_policy(weight_bp: int, sticky_key: str | None = None) -> Policy:
    return checked(Policy(stable=1, canary=Canary(2, weight_bp), sticky_key=sticky_key))


@given(weights, unit_draws, unit_draws)
def test_random_draw_goes_to_canary_exactly_below_its_weight(weight_bp: int, u: float, u_shadow: float) -> None:
    decision = decide(canary_policy(weight_bp), None, None, u, u_shadow)
    expected_canary = u * BUCKETS < weight_bp
    assert decision.version == (2 if expected_canary else 1)
    assert decision.arm is (Arm.CANARY if expected_canary else Arm.STABLE)


@settings(max_examples=15, deadline=None)  # 10,000 decisions per example
@given(weights)
def test_random_split_over_an_even_grid_of_draws_matches_the_weight(weight_bp: int) -> None:
    draws = [(i + 0.5) / BUCKETS for i in range(BUCKETS)]
    on_canary = sum(decide(canary_policy(weight_bp), None, None, u, 0.5).arm is Arm.CANARY for u in draws)
    assert on_canary == weight_bp


@given(keys, weights, weights, unit_draws, unit_draws)
def test_sticky_ramp_is_monotone(key: str, low: int, high: int, u1: float, u2: float) -> None:
    low, high = min(low, high), max(low, high)
    before = decide(canary_policy(low, "x-user-id"), None, key, u1, 0.5)
    after = decide(canary_policy(high, "x-user-id"), None, key, u2, 0.5)
    assert before.reason is Reason.STICKY or low == 0
    if before.arm is Arm.CANARY:
        assert after.arm is Arm.CANARY  # raising the weight never sends a canary key back


@given(keys, weights, unit_draws, unit_draws)
def test_sticky_key_ignores_the_random_draw(key: str, weight_bp: int, u1: float, u2: float) -> None:
    policy = canary_policy(weight_bp, "x-user-id")
    assert decide(policy, None, key, u1, 0.5).version == decide(policy, None, key, u2, 0.5).version


def test_sticky_buckets_spread_evenly() -> None:
    counts = [0] * 10
    for i in range(20_000):
        counts[bucket_of(f"user-{i}") * 10 // BUCKETS] += 1
    assert all(1_800 < count < 2_200 for count in counts), counts


def test_buckets_never_change() -> None:
    # blake2b, not Python's salted hash(): every process and host must agree, today and after upgrades,
    # or sticky keys would move between versions.
    assert [bucket_of(key) for key in ("alice", "bob", "")] == [4729, 9842, 9876]


@given(st.integers(min_value=1, max_value=50), st.one_of(st.none(), keys), weights, unit_draws, unit_draws)
def test_pin_beats_sticky_and_random(pin: int, key: str | None, weight_bp: int, u: float, u_shadow: float) -> None:
    decision = decide(canary_policy(weight_bp, "x-user-id"), pin, key, u, u_shadow)
    assert (decision.version, decision.arm, decision.reason) == (pin, Arm.PINNED, Reason.PIN)


@given(unit_draws, unit_draws, st.floats(min_value=0.01, max_value=1), st.floats(min_value=0.01, max_value=1))
def test_shadows_get_a_copy_below_their_fraction(u: float, u_shadow: float, f3: float, f4: float) -> None:
    policy = checked(Policy(stable=1, shadows=(Shadow(3, f3), Shadow(4, f4))))
    decision = decide(policy, None, None, u, u_shadow)
    assert decision.version == 1
    assert decision.shadows == tuple(v for v, f in ((3, f3), (4, f4)) if u_shadow < f)


def test_a_shadow_never_mirrors_the_version_that_answers() -> None:
    policy = checked(Policy(stable=1, shadows=(Shadow(3, 1.0),)))
    assert decide(policy, 3, None, 0.1, 0.1).shadows == ()
    assert decide(policy, None, None, 0.1, 0.1).shadows == (3,)


def test_a_canary_compared_as_a_shadow_gets_copies_of_the_stables_requests_only() -> None:
    policy = checked(Policy(stable=1, canary=Canary(2, 5000), shadows=(Shadow(2, 1.0),)))
    assert decide(policy, None, None, 0.1, 0.1).shadows == (), "the canary answered: nothing to compare"
    assert decide(policy, None, None, 0.9, 0.1).shadows == (2,), "the stable answered: its answer is compared"


def test_no_policy_canary_means_stable() -> None:
    decision = decide(Policy(stable=7), None, "k", 0.0, 0.99)
    assert (decision.version, decision.arm, decision.reason, decision.shadows) == (7, Arm.STABLE, Reason.NO_CANARY, ())


@given(st.integers(min_value=0, max_value=BUCKETS))
def test_weight_percent_round_trips_in_basis_points(weight_bp: int) -> None:
    assert weight_bp_from_percent(weight_bp * 100 / BUCKETS) == weight_bp


@pytest.mark.parametrize("percent", [-1, 100.5, math.nan, 10.001])
def test_bad_weights_are_refused(percent: float) -> None:
    with pytest.raises(PolicyInvalid, match="weight"):
        weight_bp_from_percent(percent)


@pytest.mark.parametrize(
    ("policy", "fault"),
    [
        (Policy(stable=0), "start at 1"),
        (Policy(stable=1, canary=Canary(1, 10)), "already the stable"),
        (Policy(stable=1, canary=Canary(2, BUCKETS + 1)), "basis points"),
        (Policy(stable=1, shadows=(Shadow(2, 0.0),)), "fraction"),
        (Policy(stable=1, shadows=(Shadow(1, 0.5),)), "is the stable version"),
        (Policy(stable=1, shadows=(Shadow(2, 0.5), Shadow(2, 0.2))), "twice"),
        (Policy(stable=1, sticky_key="X-User"), "metadata key"),
        (Policy(stable=1, sticky_key="trace-bin"), "binary"),
    ],
)
def test_malformed_policies_name_their_fault(policy: Policy, fault: str) -> None:
    with pytest.raises(PolicyInvalid, match=fault):
        checked(policy)


def test_rollback_target_keeps_stable_and_sticky_key() -> None:
    policy = checked(Policy(stable=1, canary=Canary(2, 500), shadows=(Shadow(3, 0.5),), sticky_key="x-user-id"))
    assert policy.without_trials() == Policy(stable=1, sticky_key="x-user-id")
