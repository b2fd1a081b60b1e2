"""Reshape: a tensor moves between its declared dims and the model's shape over the same bytes."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.errors import Internal
from gateway.registry.model_settings import ModelSettings, TensorDeclaration
from gateway.serving.reshape import ReshapeInvalid, declared_signature, reshapes_of, resolved
from runtimes.contract import Signature, TensorSpec
from runtimes.raw_tensors import array_of, raw_of


def settings_with(inputs: list[TensorDeclaration], outputs: list[TensorDeclaration]) -> ModelSettings:
    return ModelSettings(inputs=tuple(inputs), outputs=tuple(outputs))


def test_a_free_dimension_is_sized_from_the_elements() -> None:
    assert resolved((2, 4), (8,)) == (8,)
    assert resolved((2, 4), (-1,)) == (8,)
    assert resolved((2, 4), (2, -1)) == (2, 4)
    assert resolved((), (1,)) == (1,)
    with pytest.raises(ReshapeInvalid):
        resolved((3,), (2, -1))
    with pytest.raises(ReshapeInvalid):
        resolved((2, 4), (7,))


def test_none_without_a_reshape() -> None:
    plain = settings_with([TensorDeclaration(name="x", datatype="FP32", dims=(8,))], [])
    assert reshapes_of(plain, 8) is None
    assert reshapes_of(ModelSettings(), 8) is None


def test_inputs_reach_the_model_reshaped_and_outputs_return_in_their_dims_with_the_same_bytes() -> None:
    settings = settings_with(
        [TensorDeclaration(name="x", datatype="FP32", dims=(2, 4), reshape=(8,))],
        [TensorDeclaration(name="y", datatype="FP32", dims=(2, 4), reshape=(8,))],
    )
    reshapes = reshapes_of(settings, 8)
    assert reshapes is not None
    first = raw_of(np.arange(8, dtype=np.float32).reshape(1, 2, 4))
    second = raw_of(np.arange(16, dtype=np.float32).reshape(2, 2, 4))
    parts = reshapes.model_inputs({"x": [first, second], "other": [first]})
    assert [part.shape for part in parts["x"]] == [(1, 8), (2, 8)]
    assert parts["x"][1].data is second.data
    assert parts["other"] == [first]
    produced = raw_of(np.arange(24, dtype=np.float32).reshape(3, 8))
    back = reshapes.client_outputs({"y": produced})
    assert back["y"].shape == (3, 2, 4)
    np.testing.assert_array_equal(array_of(back["y"]).reshape(-1), np.arange(24, dtype=np.float32))


def test_without_a_batch_dimension_the_whole_shape_is_reshaped() -> None:
    settings = settings_with([TensorDeclaration(name="x", datatype="INT64", dims=(2, 3), reshape=(6,))], [])
    reshapes = reshapes_of(settings, 0)
    assert reshapes is not None
    tensor = raw_of(np.zeros((2, 3), dtype=np.int64))
    assert reshapes.model_inputs({"x": [tensor]})["x"][0].shape == (6,)


def test_an_output_that_cannot_take_its_dims_is_an_internal_error() -> None:
    settings = settings_with([], [TensorDeclaration(name="y", datatype="FP32", dims=(2, 4), reshape=(8,))])
    reshapes = reshapes_of(settings, 8)
    assert reshapes is not None
    with pytest.raises(Internal, match="output 'y' of shape \\[1, 7\\]"):
        reshapes.client_outputs({"y": raw_of(np.zeros((1, 7), dtype=np.float32))})


def test_clients_see_the_declared_dims_of_reshaped_tensors_only() -> None:
    signature = Signature(
        (TensorSpec("x", "FP32", (-1, 8)), TensorSpec("z", "FP32", (-1, 3))),
        (TensorSpec("y", "FP32", (-1, 8)),),
        "onnxruntime_onnx",
    )
    settings = settings_with(
        [TensorDeclaration(name="x", datatype="FP32", dims=(2, 4), reshape=(8,))],
        [TensorDeclaration(name="y", datatype="FP32", dims=(4, 2), reshape=(8,))],
    )
    seen = declared_signature(signature, settings, 8)
    assert [spec.shape for spec in seen.inputs] == [(-1, 2, 4), (-1, 3)]
    assert [spec.shape for spec in seen.outputs] == [(-1, 4, 2)]
    assert seen.platform == "onnxruntime_onnx"
