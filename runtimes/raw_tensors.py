"""Tensors in the protocol's raw form, and their conversion to and from numpy arrays.

Between the wire and a model, a tensor is a datatype, a shape and its bytes: row-major and
little-endian, BYTES as length-prefixed elements, exactly as ``raw_input_contents`` and
``raw_output_contents`` carry them. The gateway never computes on values. It checks shapes, joins
requests into batches, cuts batches back into requests and forwards bytes, so it keeps tensors in
this form: joining is one ``bytes.join``, cutting is a slice of a memoryview, and numpy is left to
the process that runs the model. At one request in flight, decoding into arrays and encoding back
cost a lone request more CPU than everything else the gateway adds to a bare gRPC server
(docs/benchmarks-log.md, "the lone request, taken apart").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtimes.datatypes import BYTES, BYTES_LENGTH, DATATYPES, datatype_of, decode_bytes, encode_bytes, numpy_dtype

# Every batch's outputs pass through raw_of: one dict lookup instead of datatype_of's checks.
_DATATYPE_BY_DTYPE = {numpy_dtype(name): name for name in DATATYPES if name != BYTES}


@dataclass(frozen=True, slots=True)
class RawTensor:
    """One tensor's datatype, shape and raw bytes (a memoryview when it is a view into a larger buffer)."""

    datatype: str
    shape: tuple[int, ...]
    data: bytes | memoryview


RawTensors = dict[str, RawTensor]


class RowsMismatch(ValueError):
    """A tensor cannot be cut into the rows asked for: no batch axis, or a different row count."""


def raw_of(array: np.ndarray[Any, Any]) -> RawTensor:
    """The raw form of an array; a C-contiguous array's data is shared, not copied."""
    datatype = _DATATYPE_BY_DTYPE.get(array.dtype)
    if datatype is None:
        datatype = datatype_of(array.dtype)
        if datatype != BYTES and array.dtype.byteorder == ">":  # the raw form is little-endian
            array = array.astype(array.dtype.newbyteorder("<"))
    if datatype == BYTES:
        return RawTensor(datatype, array.shape, encode_bytes(array))
    if array.ndim == 0 or array.size == 0:  # a memoryview of these cannot be cast to bytes
        return RawTensor(datatype, array.shape, array.tobytes())
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return RawTensor(datatype, array.shape, array.data.cast("B"))


def array_of(tensor: RawTensor) -> np.ndarray[Any, Any]:
    """The tensor as an array: a view of its bytes, or for BYTES an object array of ``bytes``."""
    if tensor.datatype == BYTES:
        return decode_bytes(tensor.data).reshape(tensor.shape)
    return np.frombuffer(tensor.data, dtype=numpy_dtype(tensor.datatype)).reshape(tensor.shape)


def joined(parts: Sequence[RawTensor]) -> RawTensor:
    """Parts stacked along the first axis; a single part is passed through uncopied."""
    first = parts[0]
    if len(parts) == 1:
        return first
    rows = sum(part.shape[0] for part in parts)
    return RawTensor(first.datatype, (rows, *first.shape[1:]), b"".join([part.data for part in parts]))


def cut_rows(tensor: RawTensor, rows: Sequence[int]) -> list[RawTensor]:
    """The tensor cut along its first axis into consecutive pieces of ``rows`` rows, as views.

    One piece is the tensor itself. Raises RowsMismatch when the tensor has no first axis or its
    first axis is not ``sum(rows)``.
    """
    shape = tensor.shape
    total = sum(rows)
    if not shape or shape[0] != total:
        raise RowsMismatch(f"has shape {list(shape)}; expected a first axis of {total}")
    if len(rows) == 1:  # one piece, the whole tensor: a batch of one request
        return [tensor]
    tail = shape[1:]
    view = memoryview(tensor.data)
    if tensor.datatype == BYTES:
        bounds = _bytes_row_bounds(view, math.prod(tail), rows)
    else:
        row_bytes = len(view) // total if total else 0
        bounds = [0]
        for count in rows:
            bounds.append(bounds[-1] + count * row_bytes)
    return [
        RawTensor(tensor.datatype, (count, *tail), view[start:end])
        for count, start, end in zip(rows, bounds, bounds[1:], strict=False)
    ]


def _bytes_row_bounds(view: memoryview, elements_per_row: int, rows: Sequence[int]) -> list[int]:
    # BYTES elements vary in length: walk the length prefixes to find where each piece ends.
    bounds = [0]
    offset = 0
    for count in rows:
        for _ in range(count * elements_per_row):
            (length,) = BYTES_LENGTH.unpack_from(view, offset)
            offset += 4 + length
        bounds.append(offset)
    return bounds
