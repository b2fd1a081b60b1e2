"""Builds small, real ONNX model repositories in a temporary directory for tests."""

from __future__ import annotations

import functools
import math
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples" / "models"

# V2 datatype name -> ONNX element type, for every datatype the protocol carries.
ONNX_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def identity_model(datatype: str, width: int = 4) -> onnx.ModelProto:
    """An ONNX Identity graph: input ``x`` [-1, width] of ``datatype`` -> output ``y``, same values."""
    element = ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("x", element, ["batch", width])],
        [helper.make_tensor_value_info("y", element, ["batch", width])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save_version(repository: Path, model: str, version: int, proto: onnx.ModelProto) -> Path:
    """Write ``proto`` as ``<repository>/<model>/<version>/model.onnx`` and return that path."""
    target = repository / model / str(version) / "model.onnx"
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, target)
    return target


def copy_digits(repository: Path, versions: tuple[int, ...] = (1, 2), model_yaml: str | None = None) -> Path:
    """Copy the example digits model (chosen versions) into ``repository``; optionally replace model.yaml."""
    source = EXAMPLES / "digits"
    target = repository / "digits"
    target.mkdir(parents=True, exist_ok=True)
    for version in versions:
        shutil.copytree(source / str(version), target / str(version))
    (target / "model.yaml").write_text(model_yaml if model_yaml is not None else (source / "model.yaml").read_text())
    return target


def slow_model(size: int = 256) -> onnx.ModelProto:
    """A model whose run time the request picks: ``x`` FP32 [-1, 1] -> ``y`` = ``x``.

    Before answering it runs max(x) rounds of a [size, size] MatMul (about 1 ms each here), so
    tests can hold requests in flight for as long as they need without sleeping in the server.
    """
    round_body = helper.make_graph(
        [
            helper.make_node("MatMul", ["a_in", "a_in"], ["product"]),
            helper.make_node("Tanh", ["product"], ["a_out"]),  # keeps the values finite
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "round",
        [
            helper.make_tensor_value_info("round", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("a_in", TensorProto.FLOAT, [size, size]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("a_out", TensorProto.FLOAT, [size, size]),
        ],
    )
    start_value = helper.make_tensor("start_value", TensorProto.FLOAT, [1], [0.01])
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["most"], keepdims=0),
        helper.make_node("Cast", ["most"], ["rounds"], to=TensorProto.INT64),
        helper.make_node("ConstantOfShape", ["square"], ["start"], value=start_value),
        helper.make_node("Loop", ["rounds", "keep_going", "start"], ["end"], body=round_body),
        # Tie the loop to the output so no optimizer may drop it; adds zero.
        helper.make_node("ReduceSum", ["end"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["x", "nothing"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            helper.make_tensor("square", TensorProto.INT64, [2], [size, size]),
            helper.make_tensor("keep_going", TensorProto.BOOL, [], [True]),
            helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


@functools.cache
def _seconds_per_slow_round() -> float:
    """How long one round of :func:`slow_model` takes on this machine, as a worker runs it (one thread)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(slow_model().SerializeToString(), options, providers=["CPUExecutionProvider"])
    rounds = 100
    best = float("inf")
    for _ in range(3):  # the quickest of three: a busy moment must not shorten the calls tests rely on
        started = time.perf_counter()
        session.run(None, {"x": np.full((1, 1), rounds, np.float32)})
        best = min(best, time.perf_counter() - started)
    return best / rounds


def slow_rounds_for(seconds: float) -> int:
    """The ``x`` that keeps a :func:`slow_model` request busy for about ``seconds`` on this machine.

    Tests that must catch calls in flight (drains, unloads, full queues) size them with this, so
    they hold on a fast machine as on a slow one. Measured once per test process.
    """
    return max(10, math.ceil(seconds / _seconds_per_slow_round()))
