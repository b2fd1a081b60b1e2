"""The last minute per arm: what it counts, when seconds fall out of it, percentiles, and merging."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import InvalidArgument
from gateway.routing.decide import Arm, Reason
from gateway.serving.inference_types import InferRequest
from gateway.serving.observers import Finished, Route, Timings
from gateway.telemetry.recent_traffic import (
    BUCKET_BOUNDS_S,
    BUCKETS,
    WINDOW_S,
    ArmTraffic,
    RecentTraffic,
    bucket_of,
    from_snapshot,
    percentile_s,
    to_snapshot,
)
from gateway.telemetry.snapshot import merge as snapshot_merge


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def finished(version: int, arm: Arm, latency_s: float, failed: bool = False, routed: bool = True) -> Finished:
    request = InferRequest("digits", "", "", [])
    route = Route("digits", version, arm, 3, Reason.RANDOM) if routed else None
    error = InvalidArgument("bad shape") if failed else None
    return Finished(request, route, None, 1, None, error, Timings(0, latency_s, 0.0, 0.0))


def test_each_arm_counts_its_requests_errors_and_latencies() -> None:
    clock = Clock()
    traffic = RecentTraffic(clock)
    traffic.observe([finished(1, Arm.STABLE, 0.001)] * 9 + [finished(1, Arm.STABLE, 0.002, failed=True)])
    traffic.observe([finished(2, Arm.CANARY, 0.010), finished(2, Arm.CANARY, 0.010, failed=True)])
    stable, canary = traffic.window("digits")
    assert (stable.version, stable.arm, stable.requests, stable.errors) == (1, "stable", 10, 1)
    assert (canary.version, canary.arm, canary.requests, canary.errors) == (2, "canary", 2, 1)
    assert sum(stable.buckets) == 10 and sum(canary.buckets) == 2
    assert traffic.window("other") == []


def test_requests_that_named_no_servable_model_belong_to_no_arm() -> None:
    traffic = RecentTraffic(Clock())
    traffic.observe([finished(0, Arm.STABLE, 0.001, failed=True, routed=False)])
    assert traffic.window() == []


def test_seconds_older_than_the_window_fall_out() -> None:
    clock = Clock()
    traffic = RecentTraffic(clock)
    traffic.observe([finished(1, Arm.STABLE, 0.001)] * 3)
    clock.now += WINDOW_S - 1  # the first second is still the window's oldest
    traffic.observe([finished(1, Arm.STABLE, 0.001)] * 2)
    assert traffic.window()[0].requests == 5
    clock.now += 1  # now it is not
    assert traffic.window()[0].requests == 2
    clock.now += WINDOW_S
    assert traffic.window() == []


def test_a_slot_is_reused_a_minute_later_without_its_old_counts() -> None:
    clock = Clock()
    traffic = RecentTraffic(clock)
    traffic.observe([finished(1, Arm.STABLE, 0.001)] * 4)
    clock.now += WINDOW_S  # the same slot, a minute on
    traffic.observe([finished(1, Arm.STABLE, 0.001)])
    assert traffic.window()[0].requests == 1


def test_buckets_hold_a_latency_at_or_below_their_bound() -> None:
    assert bucket_of(0.0) == 0
    assert bucket_of(BUCKET_BOUNDS_S[0]) == 0
    assert bucket_of(BUCKET_BOUNDS_S[0] * 1.01) == 1
    assert bucket_of(1e6) == BUCKETS - 1


@given(st.lists(st.floats(min_value=1e-4, max_value=30.0), min_size=1, max_size=400), st.sampled_from([0.5, 0.99]))
def test_a_percentile_is_within_one_bucket_of_the_exact_one(latencies: list[float], fraction: float) -> None:
    buckets = [0] * BUCKETS
    for latency in latencies:
        buckets[bucket_of(latency)] += 1
    estimate = percentile_s(buckets, fraction)
    exact = float(np.percentile(latencies, 100 * fraction, method="inverted_cdf"))
    assert estimate is not None
    assert exact / 1.25 <= estimate <= exact * 1.25


def test_no_requests_have_no_percentile() -> None:
    assert percentile_s([0] * BUCKETS, 0.99) is None


arm_traffic = st.builds(
    lambda version, arm, requests, errors, bucket: ArmTraffic(
        "m", version, arm, requests, min(errors, requests), [requests if i == bucket else 0 for i in range(BUCKETS)]
    ),
    st.integers(1, 3),
    st.sampled_from(["stable", "canary"]),
    st.integers(0, 1000),
    st.integers(0, 1000),
    st.integers(0, BUCKETS - 1),
)


def merged(parts: list[list[ArmTraffic]]) -> list[ArmTraffic]:
    """Several processes' windows summed as the gateway sums them: through the peers' snapshots."""
    return from_snapshot(snapshot_merge([to_snapshot(part) for part in parts]))


# A process's window holds each (model, version, arm) once.
@given(st.lists(st.lists(arm_traffic, max_size=4, unique_by=lambda arm: arm.key), max_size=5))
def test_merging_processes_equals_counting_in_one_place_in_any_order(parts: list[list[ArmTraffic]]) -> None:
    total = merged(parts)
    assert merged(list(reversed(parts))) == total
    assert merged([total]) == total
    for arm in total:
        same = [one for part in parts for one in part if one.key == arm.key]
        assert arm.requests == sum(one.requests for one in same)
        assert arm.errors == sum(one.errors for one in same)
        assert arm.buckets == [sum(column) for column in zip(*(one.buckets for one in same), strict=True)]
    assert {arm.key for arm in total} == {one.key for part in parts for one in part}


def test_an_arm_travels_in_a_snapshot_and_back() -> None:
    arm = ArmTraffic("m", 2, "canary", 7, 1, [0] * BUCKETS)
    arm.buckets[5] = 7
    assert from_snapshot(to_snapshot([arm])) == [arm]
