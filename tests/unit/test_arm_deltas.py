"""The rollout analysis' input: per-arm differences over processes, right through restarts and joins."""

from __future__ import annotations

from gateway.rollouts.arm_deltas import ArmDeltas
from gateway.telemetry.recent_traffic import BUCKETS, ArmTraffic


def arm(requests: int, errors: int = 0, *, version: int = 1, name: str = "stable") -> ArmTraffic:
    buckets = [0] * BUCKETS
    buckets[10] = requests - errors
    return ArmTraffic("m", version, name, requests, errors, buckets)


def test_the_first_look_only_sets_where_counting_starts() -> None:
    deltas = ArmDeltas()
    assert deltas.take({"own": [arm(500)]}) == {}
    served = deltas.take({"own": [arm(530, 2)]})[("m", 1, "stable")]
    assert (served.requests, served.errors, served.buckets[10]) == (30, 2, 28)


def test_processes_add_up_and_a_restarted_or_new_one_counts_in_full() -> None:
    deltas = ArmDeltas()
    deltas.take({"own": [arm(100)], "a.sock": [arm(200)]})
    served = deltas.take({"own": [arm(110)], "a.sock": [arm(5)], "b.sock": [arm(7)]})  # a restarted, b joined
    assert served[("m", 1, "stable")].requests == 10 + 5 + 7
    canary = deltas.take({"own": [arm(110), arm(4, version=2, name="canary")]})  # a and b gone
    assert canary[("m", 2, "canary")].requests == 4 and canary[("m", 1, "stable")].requests == 0
