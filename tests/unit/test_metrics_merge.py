"""Merging snapshots: associative, commutative, and the same as counting everything in one place."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.telemetry.families import POLICY_GENERATION, REQUEST_DURATION, REQUESTS
from gateway.telemetry.snapshot import Snapshot, from_json, merge, to_json

# Integers (as floats): sums of floats are not associative, counts are.
counts = st.integers(min_value=0, max_value=10**9).map(float)
labels = st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["1", "2"]))
snapshots = st.fixed_dictionaries(
    {
        REQUESTS: st.dictionaries(labels, counts, max_size=4),
        REQUEST_DURATION: st.dictionaries(labels, st.lists(counts, min_size=3, max_size=3), max_size=4),
        POLICY_GENERATION: st.dictionaries(labels, counts, max_size=4),
    }
)


@given(snapshots, snapshots, snapshots)
def test_merging_is_associative_and_commutative(a: Snapshot, b: Snapshot, c: Snapshot) -> None:
    assert merge([merge([a, b]), c]) == merge([a, merge([b, c])])
    assert merge([a, b]) == merge([b, a])


@given(st.lists(st.tuples(labels, counts), max_size=30), st.integers(min_value=1, max_value=5))
def test_merged_parts_equal_counting_in_one_place(events: list[tuple[tuple[str, str], float]], parts: int) -> None:
    whole: Snapshot = {REQUESTS: {}}
    split: list[Snapshot] = [{REQUESTS: {}} for _ in range(parts)]
    for index, (key, count) in enumerate(events):
        for target in (whole, split[index % parts]):
            target[REQUESTS][key] = target[REQUESTS].get(key, 0.0) + count  # type: ignore[operator]
    assert merge(split) == merge([whole])


@given(snapshots, snapshots)
def test_largest_wins_for_a_generation_and_lists_add_element_by_element(a: Snapshot, b: Snapshot) -> None:
    total = merge([a, b])
    for key, value in total[POLICY_GENERATION].items():
        assert value == max(a[POLICY_GENERATION].get(key, 0.0), b[POLICY_GENERATION].get(key, 0.0))
    for key, value in total[REQUEST_DURATION].items():
        left = a[REQUEST_DURATION].get(key, [0.0] * 3)
        right = b[REQUEST_DURATION].get(key, [0.0] * 3)
        assert value == [x + y for x, y in zip(left, right, strict=True)]  # type: ignore[arg-type]


@given(snapshots)
def test_a_snapshot_survives_json(a: Snapshot) -> None:
    assert from_json(to_json(a)) == a


def test_merging_leaves_its_inputs_as_they_were() -> None:
    a: Snapshot = {REQUEST_DURATION: {("m", "1"): [1.0, 2.0]}}
    merge([a, a])
    assert a == {REQUEST_DURATION: {("m", "1"): [1.0, 2.0]}}
