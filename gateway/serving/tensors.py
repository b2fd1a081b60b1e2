"""Tensors as the gateway sees them (raw, named), and their decoding from the protocol's two encodings.

The gateway keeps every tensor in raw form (:mod:`runtimes.raw_tensors`): the raw encoding is taken
as it arrives, its byte count checked against its shape, with no copy and no numpy. The typed
encoding (``InferTensorContents``) arrives as Python sequences and is converted to raw bytes once.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.errors import InvalidArgument, echoed
from runtimes.datatypes import BYTES, UnknownDatatype, decode_bytes, encode_bytes, numpy_dtype
from runtimes.raw_tensors import RawTensor


@dataclass(slots=True)
class Tensor:
    """A named tensor in raw form."""

    name: str
    raw: RawTensor


def _checked_dtype(name: str, datatype: str) -> np.dtype[Any]:
    try:
        return numpy_dtype(datatype)
    except UnknownDatatype as error:
        raise InvalidArgument(f"input {echoed(name)}: {error}") from None


def _checked_count(name: str, shape: Sequence[int]) -> int:
    if shape and min(shape) < 0:
        raise InvalidArgument(f"input {echoed(name)}: shape {list(shape)} has a negative dimension")
    return math.prod(shape)


def tensor_from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes) -> Tensor:
    """Take one input sent in ``raw_input_contents``; its bytes must fit the shape exactly."""
    dtype = _checked_dtype(name, datatype)
    count = _checked_count(name, shape)
    if datatype == BYTES:
        try:
            decode_bytes(raw, count)  # only to check it: the elements travel on in raw form
        except ValueError as error:
            raise InvalidArgument(f"input {echoed(name)}: BYTES raw contents {error}") from None
    elif len(raw) != count * dtype.itemsize:
        raise InvalidArgument(
            f"input {echoed(name)}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes,"
            f" got {len(raw)}"
        )
    return Tensor(name, RawTensor(datatype, shape, raw))


def tensor_from_values(name: str, datatype: str, shape: Sequence[int], values: Sequence[Any]) -> Tensor:
    """Convert one input sent as typed ``contents``; the element count must match the shape."""
    dtype = _checked_dtype(name, datatype)
    count = _checked_count(name, shape)
    if len(values) != count:
        raise InvalidArgument(f"input {echoed(name)}: shape {list(shape)} needs {count} values, got {len(values)}")
    if datatype == BYTES:
        elements = np.empty(count, dtype=np.object_)
        elements[:] = list(values)
        data = encode_bytes(elements)
    else:
        # Convert straight to the target dtype: going through numpy's own guess turns UINT64 values
        # above 2**63 into float64 (losing their low bits), and would wrap out-of-range ints silently.
        data = np.asarray(values, dtype=dtype).tobytes()
    return Tensor(name, RawTensor(datatype, tuple(shape), data))
