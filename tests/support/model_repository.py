"""Builds small, real ONNX model repositories in a temporary directory for tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
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
