"""Shadow answers are compared the way the figures report them."""

from __future__ import annotations

import numpy as np

from gateway.shadow import compare_outputs


def test_identical_answers_agree_everywhere() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2]], np.float32)
    result = compare_outputs({"p": scores, "label": np.array([1, 0])}, {"p": scores.copy(), "label": np.array([1, 0])})
    assert result.max_abs_diff == {"p": 0.0, "label": 0.0}
    assert result.equal_elements == {"p": (4, 4), "label": (2, 2)}
    assert (result.top1_agreed, result.top1_rows) == (2, 2)


def test_differences_and_top1_disagreement_are_counted() -> None:
    primary = {"p": np.array([[0.1, 0.9], [0.8, 0.2], [0.5, 0.4]], np.float32)}
    shadow = {"p": np.array([[0.1, 0.9], [0.3, 0.7], [0.5, 0.4]], np.float32)}
    result = compare_outputs(primary, shadow)
    assert np.isclose(result.max_abs_diff["p"], 0.5)
    assert result.equal_elements["p"] == (4, 6)
    assert (result.top1_agreed, result.top1_rows) == (2, 3)


def test_a_shape_mismatch_is_an_outright_disagreement_and_missing_outputs_are_skipped() -> None:
    result = compare_outputs({"p": np.zeros((2, 3)), "only_primary": np.zeros(2)}, {"p": np.zeros((2, 4))})
    assert result.max_abs_diff == {"p": float("inf")}
    assert result.equal_elements == {"p": (0, 6)}
