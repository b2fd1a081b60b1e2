"""Build the example ``digits`` model repository: two ONNX versions trained on scikit-learn's digits.

Version 1 is a scaled logistic regression, version 2 a small scaled MLP. Both are trained on the same
fixed, stratified 75/25 split of the bundled 8x8 ``digits`` data set (no download), converted with
skl2onnx to one ``input`` FP32 [N, 64] tensor in, ``label`` INT64 [N] and ``probabilities`` FP32 [N, 10]
out, and checked against scikit-learn with onnxruntime. Next to each ``model.onnx`` the training split
is written as ``reference.parquet`` (the drift baseline); ``model.yaml`` holds the per-model settings.

Run ``python examples/build_models.py`` (needs ``pip install -e '.[examples]'``); it prints a JSON
summary and exits non-zero if onnxruntime disagrees with scikit-learn.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pyarrow as pa
import pyarrow.parquet as pq
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType, Int64TensorType
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

MODEL_NAME = "digits"
N_FEATURES = 64
N_CLASSES = 10
RANDOM_STATE = 0
TEST_SIZE = 0.25
# ai.onnx 17 / ai.onnx.ml 3 are supported by every onnxruntime the project allows (>= 1.20).
TARGET_OPSET: dict[str, int] = {"": 17, "ai.onnx.ml": 3}
# IR version 8 is what ONNX 1.12-1.13 (opset 17) wrote; old enough for any onnxruntime >= 1.20 to load.
IR_VERSION = 8
INPUT_NAME = "input"
LABEL_NAME = "label"
PROBABILITIES_NAME = "probabilities"
PROBABILITY_TOLERANCE = 1e-4
FEATURE_NAMES: list[str] = [f"px_{i}" for i in range(N_FEATURES)]
DEFAULT_OUT = Path(__file__).resolve().parent / "models"

Float32Array = npt.NDArray[np.float32]
Int64Array = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Split:
    """The fixed train/test split every version is fit and scored on."""

    x_train: Float32Array
    x_test: Float32Array
    y_train: Int64Array
    y_test: Int64Array


def load_split() -> Split:
    """Load the bundled digits data (pixels 0..16) as float32 and split it 75/25, stratified."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        x.astype(np.float32),
        y.astype(np.int64),
        test_size=TEST_SIZE,
        stratify=y,
        random_state=RANDOM_STATE,
    )
    return Split(x_train, x_test, y_train, y_test)


def make_linear() -> Pipeline:
    """Version 1: standardised pixels into a multinomial logistic regression."""
    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("classify", LogisticRegression(max_iter=5000, random_state=RANDOM_STATE)),
        ]
    )


def make_mlp() -> Pipeline:
    """Version 2: standardised pixels into a one-hidden-layer (32 units) MLP."""
    return Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "classify",
                MLPClassifier(hidden_layer_sizes=(32,), max_iter=2000, random_state=RANDOM_STATE),
            ),
        ]
    )


# Version number -> (description, factory). The order is the order versions are built in.
VERSIONS: dict[int, tuple[str, Callable[[], Pipeline]]] = {
    1: ("StandardScaler + LogisticRegression", make_linear),
    2: ("StandardScaler + MLPClassifier(hidden_layer_sizes=(32,))", make_mlp),
}


def fit(model: Pipeline, split: Split) -> Pipeline:
    """Fit on the training split; a ConvergenceWarning is an error, not something to ship."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model.fit(split.x_train, split.y_train)
    return model


def to_onnx(model: Pipeline) -> onnx.ModelProto:
    """Convert a fitted pipeline to ONNX with the gateway's fixed input/output signature."""
    onx: onnx.ModelProto = convert_sklearn(
        model,
        name=MODEL_NAME,
        initial_types=[(INPUT_NAME, FloatTensorType([None, N_FEATURES]))],
        final_types=[
            (LABEL_NAME, Int64TensorType([None])),
            (PROBABILITIES_NAME, FloatTensorType([None, N_CLASSES])),
        ],
        options={id(model.steps[-1][1]): {"zipmap": False}},
        target_opset=TARGET_OPSET,
    )
    onx.ir_version = IR_VERSION
    # skl2onnx collects the opset imports in a set, so their order follows PYTHONHASHSEED; sort them
    # so the file (and its sha256) is the same on every run.
    opsets = sorted(onx.opset_import, key=lambda o: o.domain)
    del onx.opset_import[:]
    onx.opset_import.extend(opsets)
    check_signature(onx)
    onnx.checker.check_model(onx, full_check=True)
    return onx


def check_signature(onx: onnx.ModelProto) -> None:
    """Fail loudly if the converter did not produce exactly the input/output names the config promises."""
    inputs = [i.name for i in onx.graph.input]
    outputs = [o.name for o in onx.graph.output]
    if inputs != [INPUT_NAME] or outputs != [LABEL_NAME, PROBABILITIES_NAME]:
        raise RuntimeError(f"unexpected ONNX signature: inputs={inputs} outputs={outputs}")


def compare_with_ort(model: Pipeline, onnx_bytes: bytes, x: Float32Array) -> dict[str, Any]:
    """Run the ONNX model in onnxruntime and compare it with scikit-learn on the same rows."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    label, probabilities = session.run([LABEL_NAME, PROBABILITIES_NAME], {INPUT_NAME: x})
    expected_label = model.predict(x)
    expected_probabilities = model.predict_proba(x)
    labels_equal = bool(np.array_equal(label, expected_label))
    max_diff = float(np.max(np.abs(probabilities - expected_probabilities)))
    return {
        "rows": int(x.shape[0]),
        "label_dtype": str(label.dtype),
        "label_shape": list(label.shape),
        "probabilities_dtype": str(probabilities.dtype),
        "probabilities_shape": list(probabilities.shape),
        "labels_equal": labels_equal,
        "max_abs_probability_diff": max_diff,
        "passed": labels_equal
        and max_diff <= PROBABILITY_TOLERANCE
        and label.dtype == np.int64
        and probabilities.dtype == np.float32,
    }


def reference_table(x: Float32Array, y: Int64Array) -> pa.Table:
    """The training sample as a table: px_0..px_63 float32 and the true class as int64 ``label``."""
    columns = {name: pa.array(x[:, i], type=pa.float32()) for i, name in enumerate(FEATURE_NAMES)}
    columns[LABEL_NAME] = pa.array(y, type=pa.int64())
    return pa.table(columns)


def write_version(version_dir: Path, onnx_bytes: bytes, split: Split) -> None:
    """Write one version's model.onnx and reference.parquet (its training split)."""
    version_dir.mkdir(parents=True, exist_ok=True)
    (version_dir / "model.onnx").write_bytes(onnx_bytes)
    pq.write_table(
        reference_table(split.x_train, split.y_train),
        version_dir / "reference.parquet",
        compression="zstd",
    )


def model_yaml() -> str:
    """Per-model settings shared by every version, in the repository's model.yaml format."""
    rows = [FEATURE_NAMES[i : i + 8] for i in range(0, N_FEATURES, 8)]
    names = ",\n  ".join(", ".join(row) for row in rows)
    return f"""\
# Settings for every version of this model; see docs/architecture.md.
# Largest batch the runtime is handed at once (the batch dimension is not part of dims below).
max_batch_size: 64
dynamic_batching:
  # How long a request may wait for others to join its batch; 0 = batch only what is already queued.
  max_queue_delay_microseconds: 0
  # Requests waiting beyond this many are rejected instead of queued.
  max_queue_size: 1024
  # How long a queued request may wait before it times out; 0 = no timeout.
  default_queue_timeout_microseconds: 0
# Which versions under this directory are served: all of them.
version_policy:
  all: {{}}
# Model instances (sessions) per served version.
instance_count: 1
# Tensor signature; dims exclude the batch dimension, as in Triton's config.pbtxt.
inputs:
  - {{name: {INPUT_NAME}, datatype: FP32, dims: [{N_FEATURES}]}}
outputs:
  - {{name: {LABEL_NAME}, datatype: INT64, dims: []}}
  - {{name: {PROBABILITIES_NAME}, datatype: FP32, dims: [{N_CLASSES}]}}
# Column names for the {N_FEATURES} input features, in order (row-major 8x8 pixels, values 0..16).
feature_names: [
  {names}]
"""


def build_version(version: int, split: Split, model_dir: Path) -> dict[str, Any]:
    """Train, convert, verify and write one version; return its summary."""
    description, factory = VERSIONS[version]
    model = fit(factory(), split)
    onnx_bytes = to_onnx(model).SerializeToString()
    check = compare_with_ort(model, onnx_bytes, split.x_test)
    write_version(model_dir / str(version), onnx_bytes, split)
    return {
        "model": description,
        "test_accuracy": float(model.score(split.x_test, split.y_test)),
        "onnx_bytes": len(onnx_bytes),
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "ort_check": check,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"model repository root to write into (default: {DEFAULT_OUT})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir: Path = args.out / MODEL_NAME
    split = load_split()
    versions = {str(v): build_version(v, split, model_dir) for v in VERSIONS}
    (model_dir / "model.yaml").write_text(model_yaml(), encoding="utf-8")
    summary = {
        "model": MODEL_NAME,
        "out": str(model_dir),
        "train_rows": int(split.x_train.shape[0]),
        "test_rows": int(split.x_test.shape[0]),
        "target_opset": TARGET_OPSET,
        "versions": versions,
    }
    print(json.dumps(summary, indent=2))
    failed = [v for v, s in versions.items() if not s["ort_check"]["passed"]]
    if failed:
        print(f"onnxruntime disagrees with scikit-learn for version(s) {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
