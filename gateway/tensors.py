"""Tensors as the gateway sees them, and their conversion from the protocol's two encodings.

The raw encoding is decoded with ``np.frombuffer``: no copy, no per-element Python work. The typed
encoding (``InferTensorContents``) arrives as Python sequences and is converted once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.errors import InvalidArgument
from runtimes.datatypes import BYTES, UnknownDatatype, decode_bytes, encode_bytes, numpy_dtype


@dataclass(slots=True)
class Tensor:
    """A named array with its protocol datatype; BYTES data is an object array of ``bytes``."""

    name: str
    datatype: str
    data: np.ndarray[Any, Any]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


def _checked_dtype(name: str, datatype: str) -> np.dtype[Any]:
    try:
        return numpy_dtype(datatype)
    except UnknownDatatype as error:
        raise InvalidArgument(f"input {name!r}: {error}") from None


def _checked_count(name: str, shape: Sequence[int]) -> int:
    if shape and min(shape) < 0:
        raise InvalidArgument(f"input {name!r}: shape {list(shape)} has a negative dimension")
    return math.prod(shape)


def tensor_from_raw(name: str, datatype: str, shape: Sequence[int], raw: bytes) -> Tensor:
    """Decode one input sent in ``raw_input_contents``; the byte count must match the shape."""
    dtype = _checked_dtype(name, datatype)
    count = _checked_count(name, shape)
    if datatype == BYTES:
        try:
            flat = decode_bytes(raw, count)
        except ValueError as error:
            raise InvalidArgument(f"input {name!r}: BYTES raw contents {error}") from None
        return Tensor(name, datatype, flat.reshape(shape))
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input {name!r}: shape {list(shape)} of {datatype} needs {expected} bytes, got {len(raw)}"
        )
    return Tensor(name, datatype, np.frombuffer(raw, dtype=dtype).reshape(shape))


def tensor_from_values(name: str, datatype: str, shape: Sequence[int], values: Sequence[Any]) -> Tensor:
    """Convert one input sent as typed ``contents``; the element count must match the shape."""
    dtype = _checked_dtype(name, datatype)
    count = _checked_count(name, shape)
    if len(values) != count:
        raise InvalidArgument(f"input {name!r}: shape {list(shape)} needs {count} values, got {len(values)}")
    if datatype == BYTES:
        data = np.empty(count, dtype=np.object_)
        data[:] = list(values)
    else:
        # Convert straight to the target dtype: going through numpy's own guess turns UINT64 values
        # above 2**63 into float64 (losing their low bits), and would wrap out-of-range ints silently.
        data = np.asarray(values, dtype=dtype)
    return Tensor(name, datatype, data.reshape(shape))


def raw_bytes(tensor: Tensor) -> bytes:
    """The raw encoding of an output: little-endian row-major bytes, or length-prefixed BYTES."""
    if tensor.datatype == BYTES:
        return encode_bytes(tensor.data)
    return tensor.data.tobytes()
