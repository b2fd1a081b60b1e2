"""Request checks name the input that does not fit and what the model expected."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from gateway.errors import InvalidArgument
from gateway.serving.inference_types import InferRequest
from gateway.serving.request_checks import checked_inputs, checked_outputs
from gateway.serving.tensors import Tensor
from runtimes.contract import Signature, TensorSpec
from runtimes.raw_tensors import raw_of

DIGITS = Signature(
    inputs=(TensorSpec("input", "FP32", (-1, 64)),),
    outputs=(TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 10))),
)


def named(name: str, array: np.ndarray[Any, Any]) -> Tensor:
    return Tensor(name, raw_of(array))


def request(*tensors: Tensor, outputs: list[str] | None = None) -> InferRequest:
    return InferRequest("digits", "", "id-1", list(tensors), outputs or [])


def pixels(rows: int, width: int = 64, datatype: str = "FP32") -> Tensor:
    dtype = {"FP32": np.float32, "FP64": np.float64}[datatype]
    return named("input", np.zeros((rows, width), dtype))


def test_a_good_request_passes_with_its_rows() -> None:
    inputs, rows = checked_inputs(request(pixels(5)), DIGITS, 64)
    assert rows == 5 and list(inputs) == ["input"] and inputs["input"].shape == (5, 64)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ((named("pixels", np.zeros((1, 64), np.float32)),), r"no input 'pixels'; its inputs are \['input'\]"),
        ((), r"needs inputs \['input'\]"),
        ((pixels(1, datatype="FP64"),), "input 'input' has datatype FP64, expected FP32"),
        ((pixels(1, width=63),), r"input 'input' has shape \[1, 63\], expected \[-1, 64\]"),
        ((pixels(65),), "input 'input' has batch size 65; this model takes 1 to 64"),
        ((pixels(1), pixels(1)), "given more than once"),
    ],
)
def test_bad_inputs_are_named_with_what_was_expected(tensors: tuple[Tensor, ...], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        checked_inputs(request(*tensors), DIGITS, 64)


def test_inputs_must_agree_on_the_batch_size() -> None:
    two = Signature(
        inputs=(TensorSpec("a", "FP32", (-1, 2)), TensorSpec("b", "FP32", (-1, 2))),
        outputs=(TensorSpec("y", "FP32", (-1, 2)),),
    )
    tensors = (named("a", np.zeros((2, 2), np.float32)), named("b", np.zeros((3, 2), np.float32)))
    with pytest.raises(InvalidArgument, match="input 'b' has batch size 3 but another input has 2"):
        checked_inputs(request(*tensors), two, 8)


def test_a_model_without_a_batch_axis_checks_the_whole_shape() -> None:
    fixed = Signature(inputs=(TensorSpec("input", "FP32", (2, 64)),), outputs=(TensorSpec("y", "FP32", (2,)),))
    assert checked_inputs(request(pixels(2)), fixed, 0)[1] == 1
    with pytest.raises(InvalidArgument, match=r"expected \[2, 64\]"):
        checked_inputs(request(pixels(3)), fixed, 0)


def test_requested_outputs_must_exist_once() -> None:
    assert checked_outputs(request(outputs=["label"]), DIGITS) == ["label"]
    with pytest.raises(InvalidArgument, match=r"no output 'score'; its outputs are \['label', 'probabilities'\]"):
        checked_outputs(request(outputs=["score"]), DIGITS)
    with pytest.raises(InvalidArgument, match="twice"):
        checked_outputs(request(outputs=["label", "label"]), DIGITS)
