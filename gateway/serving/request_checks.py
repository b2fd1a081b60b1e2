"""Checks a request against the model version that will serve it, naming what does not fit."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.errors import InvalidArgument, echoed
from gateway.serving.inference_types import InferRequest
from runtimes.contract import Signature, TensorSpec
from runtimes.raw_tensors import RawTensor


def _shape_fits(shape: Sequence[int], expected: Sequence[int]) -> bool:
    return len(shape) == len(expected) and all(e in (-1, s) for s, e in zip(shape, expected, strict=True))


def _describe(shape: Sequence[int]) -> str:
    return "[" + ", ".join("-1" if d == -1 else str(d) for d in shape) + "]"


def checked_inputs(
    request: InferRequest, signature: Signature, max_batch_size: int
) -> tuple[dict[str, RawTensor], int]:
    """The request's inputs by name, in the model's order, and its batch size (rows).

    Raises InvalidArgument for an unknown, missing or repeated input, a datatype that is not the
    model's, a shape the model does not accept, or a batch larger than ``max_batch_size``.
    """
    expected = {spec.name: spec for spec in signature.inputs}
    given: dict[str, RawTensor] = {}
    rows = 1
    for tensor in request.inputs:
        raw = tensor.raw
        spec = expected.get(tensor.name)
        if spec is None:
            raise InvalidArgument(
                f"model {echoed(request.model_name)} has no input {echoed(tensor.name)};"
                f" its inputs are {sorted(expected)}"
            )
        if tensor.name in given:
            raise InvalidArgument(f"input {echoed(tensor.name)} is given more than once")
        if raw.datatype != spec.datatype:
            raise InvalidArgument(f"input {echoed(tensor.name)} has datatype {raw.datatype}, expected {spec.datatype}")
        rows = _check_shape(tensor.name, raw.shape, spec, max_batch_size, rows if given else None)
        given[tensor.name] = raw
    missing = [name for name in expected if name not in given]
    if missing:
        raise InvalidArgument(f"model {echoed(request.model_name)} needs inputs {missing} that the request lacks")
    return {name: given[name] for name in expected}, rows


def _check_shape(
    name: str, shape: tuple[int, ...], spec: TensorSpec, max_batch_size: int, rows: int | None
) -> int:
    if max_batch_size == 0:
        if not _shape_fits(shape, spec.shape):
            raise InvalidArgument(f"input {echoed(name)} has shape {list(shape)}, expected {_describe(spec.shape)}")
        return 1
    tail = shape[1:]
    # Equal tails (no -1 to match) are the common case: one tuple comparison, no per-dimension loop.
    if len(shape) != len(spec.shape) or (tail != spec.shape[1:] and not _shape_fits(tail, spec.shape[1:])):
        raise InvalidArgument(
            f"input {echoed(name)} has shape {list(shape)}, expected {_describe(spec.shape)} "
            f"(first dimension is the batch, 1 to {max_batch_size})"
        )
    batch = shape[0]
    if not 1 <= batch <= max_batch_size:
        raise InvalidArgument(f"input {echoed(name)} has batch size {batch}; this model takes 1 to {max_batch_size}")
    if rows is not None and batch != rows:
        raise InvalidArgument(f"input {echoed(name)} has batch size {batch} but another input has {rows}")
    return batch


def checked_outputs(request: InferRequest, signature: Signature) -> list[str]:
    """The requested output names, each checked to exist; empty means all."""
    if not request.output_names:
        return []
    known = {spec.name for spec in signature.outputs}
    for name in request.output_names:
        if name not in known:
            raise InvalidArgument(
                f"model {echoed(request.model_name)} has no output {echoed(name)}; its outputs are {sorted(known)}"
            )
    if len(set(request.output_names)) != len(request.output_names):
        raise InvalidArgument(f"requested outputs {request.output_names} name an output twice")
    return list(request.output_names)
