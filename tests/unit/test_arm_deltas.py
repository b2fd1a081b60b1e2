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


def test_a_process_that_began_before_counting_started_and_published_late_counts_from_its_first_totals() -> None:
    deltas = ArmDeltas()
    deltas.take({"a": [arm(100)]}, started={"a": 10.0}, now=50.0)
    late = deltas.take({"a": [arm(110)], "b": [arm(900)]}, started={"a": 10.0, "b": 20.0}, now=51.0)
    assert late[("m", 1, "stable")].requests == 10, "b's 900 were served before the rollout"
    new = deltas.take({"a": [arm(110)], "b": [arm(905)], "c": [arm(3)]}, started={"a": 10.0, "b": 20.0, "c": 50.5},
                      now=52.0)  # fmt: skip
    assert new[("m", 1, "stable")].requests == 5 + 3, "c began after counting started: all of it is new"
