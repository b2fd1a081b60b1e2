"""Tensors whose declared dims differ from the model's own shape (config ``reshape``): the two views of each.

Clients send and receive a tensor in its declared ``dims``; the model sees the ``reshape`` shape. A raw
tensor is a datatype, a shape and its bytes in row-major order, so moving between the two views is
only a new shape tuple over the same bytes. The mapping is worked out once when a version loads;
the dispatcher applies it to a batch's inputs on their way to the host and to its outputs on their
way back, so every other part of the request path sees the declared shapes only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.errors import Internal
from gateway.registry.model_settings import ModelSettings, TensorDeclaration
from runtimes.contract import Signature, TensorSpec
from runtimes.raw_tensors import RawTensor, RawTensors


class ReshapeInvalid(ValueError):
    """A tensor cannot be taken from one of its shapes to the other."""


def resolved(tail: Sequence[int], target: Sequence[int]) -> tuple[int, ...]:
    """``target`` with its one free dimension (-1), if any, sized to hold the elements of ``tail``."""
    if -1 not in target:
        if math.prod(tail) != math.prod(target):
            raise ReshapeInvalid(f"{list(tail)} does not hold the {math.prod(target)} elements of {list(target)}")
        return tuple(target)
    known = math.prod(d for d in target if d != -1)
    elements = math.prod(tail)
    if known == 0 or elements % known:
        raise ReshapeInvalid(f"{list(tail)} cannot be viewed as {list(target)}")
    return tuple(elements // known if d == -1 else d for d in target)


@dataclass(frozen=True, slots=True)
class Reshapes:
    """Per tensor name, the shape (without the batch dimension) the other side expects."""

    to_model: Mapping[str, tuple[int, ...]]  # input name -> the model's shape (reshape)
    to_client: Mapping[str, tuple[int, ...]]  # output name -> the declared dims
    batched: bool  # the first axis is the batch, kept as it is

    def model_inputs(self, parts: Mapping[str, list[RawTensor]]) -> dict[str, list[RawTensor]]:
        """A batch's inputs, each part viewed in the shape the model takes."""
        viewed = dict(parts)
        for name, target in self.to_model.items():
            viewed[name] = [self._viewed(part, target, "input", name) for part in parts[name]]
        return viewed

    def client_outputs(self, outputs: RawTensors) -> RawTensors:
        """A batch's outputs, each viewed in its declared dims."""
        viewed = dict(outputs)
        for name, target in self.to_client.items():
            if name in outputs:
                viewed[name] = self._viewed(outputs[name], target, "output", name)
        return viewed

    def _viewed(self, tensor: RawTensor, target: tuple[int, ...], kind: str, name: str) -> RawTensor:
        shape = tensor.shape
        head, tail = (shape[:1], shape[1:]) if self.batched else ((), shape)
        try:
            return RawTensor(tensor.datatype, (*head, *resolved(tail, target)), tensor.data)
        except ReshapeInvalid as error:
            raise Internal(f"{kind} {name!r} of shape {list(shape)} cannot be reshaped: {error}") from None


def reshapes_of(settings: ModelSettings, max_batch_size: int) -> Reshapes | None:
    """The reshapes the settings declare, or None when no tensor has one (the usual case)."""
    inputs = {item.name: item.reshape for item in settings.inputs or () if item.reshape is not None}
    outputs = {item.name: item.dims for item in settings.outputs or () if item.reshape is not None}
    if not inputs and not outputs:
        return None
    return Reshapes(inputs, outputs, max_batch_size > 0)


def declared_signature(signature: Signature, settings: ModelSettings, max_batch_size: int) -> Signature:
    """The model's signature as clients see it: reshaped tensors take their declared dims."""
    head = (-1,) if max_batch_size > 0 else ()

    def as_declared(specs: tuple[TensorSpec, ...], declarations: Sequence[TensorDeclaration]) -> tuple[TensorSpec, ...]:
        dims = {item.name: item.dims for item in declarations if item.reshape is not None}
        return tuple(
            TensorSpec(spec.name, spec.datatype, (*head, *dims[spec.name])) if spec.name in dims else spec
            for spec in specs
        )

    return Signature(
        as_declared(signature.inputs, settings.inputs or ()),
        as_declared(signature.outputs, settings.outputs or ()),
        signature.platform,
    )
