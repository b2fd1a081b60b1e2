"""Tensors as the gateway sees them (raw, named), and their decoding from the protocol's two encodings.

The gateway keeps every tensor in raw form (:mod:`runtimes.raw_tensors`): the raw encoding is taken
as it arrives, its byte count checked against its shape, with no copy and no numpy. The typed
encoding (``InferTensorContents``) arrives as Python sequences and is converted to raw bytes once.

Work that grows with a tensor's elements (converting typed values, walking raw BYTES elements) is
left for later: the tensor carries a ``finish`` step that the dataplane runs only once the name,
datatype and shape have passed the model's checks. A 200 MiB typed request for a model that takes
32 floats used to be converted for 11 s, holding the GIL, before its shape was refused.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.errors import InvalidArgument, ResourceExhausted, echoed
from runtimes.datatypes import BYTES, UnknownDatatype, decode_bytes, encode_bytes, numpy_dtype
from runtimes.raw_tensors import RawTensor, RawTensors

# Every raw BYTES element starts with its 4-byte length, so a buffer shorter than this per element
# cannot hold the shape's elements: refused without walking them.
_BYTES_PREFIX = 4
_NOTHING_YET = b""


@dataclass(slots=True)
class Tensor:
    """A named tensor in raw form.

    ``finish``, when set, makes or verifies the bytes (typed contents, raw BYTES): until it has run,
    ``raw`` holds the datatype and shape as sent, with bytes not yet made or not yet verified.
    """

    name: str
    raw: RawTensor
    finish: Callable[[], RawTensor] | None = None


def _checked_dtype(name: str, datatype: str) -> np.dtype[Any]:
    try:
        return numpy_dtype(datatype)
    except UnknownDatatype as error:
        raise InvalidArgument(f"input {echoed(name)}: {error}") from None


def _checked_count(name: str, shape: Sequence[int], max_elements: int) -> int:
    if shape and min(shape) < 0:
        raise InvalidArgument(f"input {echoed(name)}: shape {list(shape)} has a negative dimension")
    count = math.prod(shape)
    if count > max_elements:
        raise ResourceExhausted(
            f"input {echoed(name)}: shape {list(shape)} has {count} elements, more than this gateway's limit"
            f" of {max_elements} per tensor (--max-tensor-elements)"
        )
    return count


def tensor_from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes, max_elements: int) -> Tensor:
    """Take one input sent in ``raw_input_contents``; its bytes must fit the shape exactly."""
    dtype = _checked_dtype(name, datatype)
    count = _checked_count(name, shape, max_elements)
    if datatype == BYTES:
        if len(raw) < _BYTES_PREFIX * count:
            raise InvalidArgument(
                f"input {echoed(name)}: shape {list(shape)} of BYTES needs at least {_BYTES_PREFIX * count} bytes"
                f" (a length before each element), got {len(raw)}"
            )
        tensor = RawTensor(datatype, shape, raw)
        return Tensor(name, tensor, functools.partial(_verified_bytes, name, tensor, count))
    if len(raw) != count * dtype.itemsize:
        raise InvalidArgument(
            f"input {echoed(name)}: shape {list(shape)} of {datatype} needs {count * dtype.itemsize} bytes,"
            f" got {len(raw)}"
        )
    return Tensor(name, RawTensor(datatype, shape, raw))


def _verified_bytes(name: str, tensor: RawTensor, count: int) -> RawTensor:
    try:
        decode_bytes(tensor.data, count)  # only to check it: the elements travel on in raw form
    except ValueError as error:
        raise InvalidArgument(f"input {echoed(name)}: BYTES raw contents {error}") from None
    return tensor


def tensor_from_values(
    name: str, datatype: str, shape: Sequence[int], values: Sequence[Any], max_elements: int
) -> Tensor:
    """Take one input sent as typed ``contents``; the element count must match the shape.

    The values are converted by the tensor's ``finish`` step, raising InvalidArgument for values
    that do not fit the datatype.
    """
    dtype = _checked_dtype(name, datatype)
    count = _checked_count(name, shape, max_elements)
    if len(values) != count:
        raise InvalidArgument(f"input {echoed(name)}: shape {list(shape)} needs {count} values, got {len(values)}")
    placeholder = RawTensor(datatype, tuple(shape), _NOTHING_YET)
    return Tensor(name, placeholder, functools.partial(_converted, name, placeholder, dtype, values))


def _converted(name: str, placeholder: RawTensor, dtype: np.dtype[Any], values: Sequence[Any]) -> RawTensor:
    datatype = placeholder.datatype
    try:
        if datatype == BYTES:
            elements = np.empty(len(values), dtype=np.object_)
            elements[:] = list(values)
            data = encode_bytes(elements)
        else:
            # Convert straight to the target dtype: going through numpy's own guess turns UINT64 values
            # above 2**63 into float64 (losing their low bits), and would wrap out-of-range ints silently.
            data = np.asarray(values, dtype=dtype).tobytes()
    except (OverflowError, ValueError) as error:
        raise InvalidArgument(f"input {echoed(name)}: values do not fit {datatype}: {error}") from None
    return RawTensor(datatype, placeholder.shape, data)


def finished_inputs(tensors: Sequence[Tensor], checked: RawTensors) -> RawTensors:
    """``checked`` (a request's inputs that passed the model's checks) with every unfinished tensor's
    bytes made; each tensor keeps its finished form, so the work is done once."""
    made: RawTensors = {}
    for tensor in tensors:
        if tensor.finish is not None:
            tensor.raw = tensor.finish()
            tensor.finish = None
            made[tensor.name] = tensor.raw
    return {name: made.get(name, raw) for name, raw in checked.items()}
