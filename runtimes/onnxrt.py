"""The ONNX Runtime implementation of the runtime contract (CPU execution provider)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from runtimes.contract import Arrays, ArtifactInvalid, InferenceFailed, RuntimeOptions, Signature, TensorSpec

PLATFORM = "onnxruntime_onnx"

_DATATYPE_BY_ORT_TYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def _spec(arg: Any) -> TensorSpec:
    try:
        datatype = _DATATYPE_BY_ORT_TYPE[arg.type]
    except KeyError:
        raise ArtifactInvalid(f"tensor {arg.name!r} has type {arg.type}, which Turnout cannot serve") from None
    # ORT reports a symbolic or unknown dimension as a string or None: both mean "any size".
    shape = tuple(dim if isinstance(dim, int) and dim >= 0 else -1 for dim in (arg.shape or []))
    return TensorSpec(arg.name, datatype, shape)


def _to_ort(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    # ORT string tensors want Python str; the wire carries bytes.
    if array.dtype.kind == "O":
        return np.vectorize(_as_text, otypes=[np.object_])(array) if array.size else array
    return array


def _as_text(element: object) -> str:
    return element.decode("utf-8") if isinstance(element, bytes) else str(element)


def _from_ort(array: Any) -> np.ndarray[Any, Any]:
    result = np.asarray(array)
    if result.dtype.kind in ("O", "U", "S"):
        encoded = np.empty(result.shape, dtype=np.object_)
        encoded.reshape(-1)[:] = [_as_bytes(item) for item in result.reshape(-1)]
        return encoded
    return result


def _as_bytes(element: object) -> bytes:
    return element.encode("utf-8") if isinstance(element, str) else bytes(element)  # type: ignore[call-overload]


class OnnxRuntime:
    """One ONNX model in an ``onnxruntime.InferenceSession``."""

    def __init__(self, artifact: Path, options: RuntimeOptions) -> None:
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = options.intra_op_threads
        session_options.inter_op_num_threads = options.inter_op_threads
        session_options.log_severity_level = 3
        try:
            self._session = ort.InferenceSession(
                str(artifact), sess_options=session_options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # ORT raises several unrelated types for a bad file.
            raise ArtifactInvalid(f"{artifact.name} is not a loadable ONNX model: {error}") from error
        self.signature = Signature(
            tuple(_spec(arg) for arg in self._session.get_inputs()),
            tuple(_spec(arg) for arg in self._session.get_outputs()),
            PLATFORM,
        )
        self._all_outputs = [spec.name for spec in self.signature.outputs]

    def infer(self, inputs: Arrays, output_names: Sequence[str]) -> Arrays:
        names = list(output_names) or self._all_outputs
        try:
            feed = {name: _to_ort(array) for name, array in inputs.items()}
        except UnicodeDecodeError as error:
            raise InferenceFailed(
                f"a BYTES input holds an element that is not UTF-8 ({error}); "
                "ONNX Runtime string tensors carry UTF-8 text only"
            ) from None
        try:
            results = self._session.run(names, feed)
        except Exception as error:
            raise InferenceFailed(f"onnxruntime failed: {error}") from error
        return {name: _from_ort(value) for name, value in zip(names, results, strict=True)}

    def close(self) -> None:
        del self._session
