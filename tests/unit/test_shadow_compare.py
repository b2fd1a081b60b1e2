"""Shadow answers are compared the way the figures report them."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.rollouts.shadow import (
    BatchComparison,
    ShadowFigures,
    _arrays_per_copy,
    _Copy,
    compare_batch,
    compare_outputs,
)
from gateway.routing.decide import Arm, Reason
from gateway.serving.inference_types import InferRequest
from gateway.serving.observers import Finished, Route, Timings
from runtimes.raw_tensors import raw_of


def test_identical_answers_agree_everywhere() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    result = compare_outputs({"p": scores, "label": np.array([1, 0])}, {"p": scores.copy(), "label": np.array([1, 0])})
    assert result.max_abs_diff == {"p": 0.0, "label": 0.0}
    assert result.equal_elements == {"p": (4, 4), "label": (2, 2)}
    assert (result.top1_agreed, result.top1_rows) == (2, 2)
    assert not result.disagreed


def test_differences_and_top1_disagreement_are_counted() -> None:
    primary = {"p": np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.4]], np.float32)}
    shadow = {"p": np.array([[0.1, 0.9], [0.3, 0.7], [0.5, 0.4]], np.float32)}
    result = compare_outputs(primary, shadow)
    assert np.isclose(result.max_abs_diff["p"], 0.5)
    assert result.equal_elements["p"] == (4, 6)
    assert (result.top1_agreed, result.top1_rows) == (2, 3)
    assert result.disagreed, "its top class differs in a row"


def test_a_copy_disagrees_on_its_top_class_or_beyond_the_tolerance_not_on_rounding() -> None:
    scores = np.array([[0.1, 0.9]], np.float32)
    assert not compare_outputs({"p": scores}, {"p": scores + 0.05}).disagreed, "the same top class"
    value = np.array([[1000.0]], np.float32)
    assert not compare_outputs({"v": value}, {"v": value * (1 + 1e-7)}).disagreed, "a rounding difference"
    assert compare_outputs({"v": value}, {"v": value + 1}).disagreed
    assert compare_outputs({"v": np.zeros((2, 3))}, {"v": np.zeros((2, 4))}).disagreed, "shapes differ"


def test_a_shape_mismatch_is_an_outright_disagreement_and_missing_outputs_are_skipped() -> None:
    result = compare_outputs({"p": np.zeros((2, 3)), "only_primary": np.zeros(2)}, {"p": np.zeros((2, 4))})
    assert result.max_abs_diff == {"p": float("inf")}
    assert result.equal_elements == {"p": (0, 6)}


def summed_one_by_one(primaries: list[dict[str, np.ndarray]], shadows: list[dict[str, np.ndarray]]) -> BatchComparison:
    total = BatchComparison(len(primaries), {}, {}, {}, 0, 0)
    for primary, shadow in zip(primaries, shadows, strict=True):
        one = compare_outputs(primary, shadow)
        total.top1_agreed += one.top1_agreed
        total.top1_rows += one.top1_rows
        total.disagreed += one.disagreed
        for name, difference in one.max_abs_diff.items():
            total.max_abs_diff[name] = max(total.max_abs_diff.get(name, 0.0), difference)
            total.sum_max_abs_diff[name] = total.sum_max_abs_diff.get(name, 0.0) + difference
            equal, elements = total.equal_elements.get(name, (0, 0))
            more_equal, more_elements = one.equal_elements[name]
            total.equal_elements[name] = (equal + more_equal, elements + more_elements)
    return total


@settings(max_examples=60, deadline=None)
@given(
    rows=st.lists(st.integers(min_value=1, max_value=4), min_size=2, max_size=8),
    classes=st.integers(min_value=1, max_value=5),
    data=st.data(),
)
def test_a_batch_compares_like_its_copies_one_by_one(rows: list[int], classes: int, data: st.DataObject) -> None:
    """The shadow thread compares a whole batch at once; the figures must not notice."""
    scores = hnp.arrays(np.float32, st.just((sum(rows), classes)), elements=st.floats(-4, 4, width=32))
    labels = hnp.arrays(np.int64, st.just((sum(rows),)), elements=st.integers(0, 3))
    primary_scores, shadow_scores = data.draw(scores), data.draw(scores)
    primary_labels, shadow_labels = data.draw(labels), data.draw(labels)
    primaries, shadows, offset = [], [], 0
    for count in rows:
        cut = slice(offset, offset + count)
        primaries.append({"p": primary_scores[cut], "label": primary_labels[cut]})
        shadows.append({"p": shadow_scores[cut], "label": shadow_labels[cut]})
        offset += count
    together = compare_batch(primaries, shadows)
    expected = summed_one_by_one(primaries, shadows)
    assert together is not None
    assert together.copies == expected.copies
    assert together.equal_elements == expected.equal_elements
    assert (together.top1_agreed, together.top1_rows) == (expected.top1_agreed, expected.top1_rows)
    assert together.disagreed == expected.disagreed, "a copy disagrees on any output, counted once"
    for name in ("p", "label"):
        assert together.max_abs_diff[name] == expected.max_abs_diff[name]
        assert np.isclose(together.sum_max_abs_diff[name], expected.sum_max_abs_diff[name])


def test_copies_that_do_not_line_up_are_left_to_one_by_one() -> None:
    agree = {"p": np.zeros((1, 3))}
    assert compare_batch([agree, agree], [agree, {"p": np.zeros((1, 4))}]) is None
    assert compare_batch([agree, agree], [agree, {}]) is None
    scalar = {"s": np.array(1.0, np.float32)}
    assert compare_batch([scalar, scalar], [scalar, scalar]) is None
    assert compare_batch([agree, agree], [{}, agree]) is None  # the first copy has nothing in common, the second has


def test_copies_with_no_output_in_common_are_counted_as_compared() -> None:
    primary = {"label": np.array([1]), "p": np.zeros((1, 3), np.float32)}
    echoed = {"input": np.zeros((1, 64), np.float32)}
    together = compare_batch([primary, primary, primary], [echoed, echoed, echoed])
    assert together == BatchComparison(3, {}, {}, {}, 0, 0)
    assert BatchComparison.of_one(compare_outputs(primary, echoed)) == BatchComparison(1, {}, {}, {}, 0, 0)


def test_a_shadow_batch_is_cut_per_copy_and_a_batch_that_cannot_be_cut_is_seen_whole() -> None:
    def copy(rows: int) -> _Copy:
        route = Route("m", 1, Arm.STABLE, 1, Reason.NO_CANARY, (2,))
        source = Finished(InferRequest("m", "", "", []), route, {}, rows, {}, None, Timings(0, 0.0, 0.0, 0.0))
        return _Copy(ShadowFigures("m", 1, 2), {}, rows, (), {}, 0.0, source)

    batch = [copy(1), copy(2)]
    cut = _arrays_per_copy(batch, {"p": raw_of(np.arange(6, dtype=np.float32).reshape(3, 2))})
    assert [answer["p"].tolist() for answer in cut] == [[[0, 1]], [[2, 3], [4, 5]]]
    wrong = np.zeros((4, 2), np.float32)  # the shadow answered 4 rows for 3
    whole = _arrays_per_copy(batch, {"p": raw_of(wrong)})
    assert all(answer["p"].shape == (4, 2) for answer in whole), "compared whole: an outright disagreement"
