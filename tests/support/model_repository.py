"""Builds small, real ONNX model repositories in a temporary directory for tests."""

from __future__ import annotations

import functools
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import yaml
from google.protobuf import text_format
from onnx import TensorProto, helper
from tritonclient.grpc import model_config_pb2

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


def add_broken_model(repository: Path, name: str = "broken") -> Path:
    """A model whose only version is not ONNX, so it is never READY (digits' model.yaml beside it)."""
    (repository / name / "1").mkdir(parents=True)
    (repository / name / "1" / "model.onnx").write_bytes(b"not an onnx model")
    shutil.copy(EXAMPLES / "digits" / "model.yaml", repository / name / "model.yaml")
    return repository / name


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


# The formats a model directory's settings may take: Turnout's model.yaml or Triton's config.pbtxt.
SETTINGS_FORMATS = ("model.yaml", "config.pbtxt")


def config_pbtxt_for(model_yaml: str, name: str) -> str:
    """Triton's config.pbtxt saying what ``model_yaml`` says, written with Triton's own schema (tritonclient's).

    Covers the settings both files have; Turnout-only ones (feature_names, runtime_options) are left out.
    """
    settings: dict[str, Any] = yaml.safe_load(model_yaml) or {}
    config = model_config_pb2.ModelConfig(name=name, platform="onnxruntime_onnx")
    config.max_batch_size = settings.get("max_batch_size") or 0
    if "dynamic_batching" in settings:
        batching = settings["dynamic_batching"]
        config.dynamic_batching.max_queue_delay_microseconds = batching.get("max_queue_delay_microseconds", 0)
        queue = config.dynamic_batching.default_queue_policy
        queue.max_queue_size = batching.get("max_queue_size", 0)
        queue.default_timeout_microseconds = batching.get("default_queue_timeout_microseconds", 0)
    policy = settings.get("version_policy", {})
    if "all" in policy:
        config.version_policy.all.SetInParent()
    elif "specific" in policy:
        config.version_policy.specific.versions.extend(policy["specific"]["versions"])
    elif "latest" in policy:
        config.version_policy.latest.num_versions = policy["latest"].get("num_versions", 1)
    cpu = model_config_pb2.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(count=settings.get("instance_count", 1), kind=cpu)
    for kind, target in (("inputs", config.input), ("outputs", config.output)):
        for item in settings.get(kind) or []:
            tensor = target.add(name=item["name"], data_type=_config_type(item["datatype"]), dims=item.get("dims", []))
            if item.get("reshape") is not None:
                tensor.reshape.shape.extend(item["reshape"])
    return str(text_format.MessageToString(config))


def _config_type(datatype: str) -> int:
    return int(model_config_pb2.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"))


def use_config_pbtxt(model_dir: Path) -> Path:
    """Replace the model directory's model.yaml with the equivalent config.pbtxt; return its path."""
    yaml_file = model_dir / "model.yaml"
    target = model_dir / "config.pbtxt"
    target.write_text(config_pbtxt_for(yaml_file.read_text(), model_dir.name))
    yaml_file.unlink()
    return target


def use_settings_format(repository: Path, settings_format: str) -> None:
    """Give every model in ``repository`` its settings in ``settings_format`` (one of SETTINGS_FORMATS)."""
    if settings_format == "config.pbtxt":
        for model_yaml in sorted(repository.glob("*/model.yaml")):
            use_config_pbtxt(model_yaml.parent)
