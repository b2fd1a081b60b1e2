"""The runtime contract: what every model runtime offers, and the errors it may raise.

A runtime loads one artifact and then answers ``infer`` calls on named numpy arrays. The gateway
never sees a runtime directly: it talks to a :class:`ModelHost`, which runs the runtime either in a
worker process or in-process, behind the same interface.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from runtimes.raw_tensors import RawTensor, RawTensors

Arrays = dict[str, np.ndarray[Any, Any]]


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output as the model declares it; -1 marks a dimension of any size."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(str(data["name"]), str(data["datatype"]), tuple(int(d) for d in data["shape"]))


@dataclass(frozen=True, slots=True)
class Signature:
    """The inputs and outputs of a loaded model, in the model's own order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    platform: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [spec.to_json() for spec in self.inputs],
            "outputs": [spec.to_json() for spec in self.outputs],
            "platform": self.platform,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Signature:
        return cls(
            tuple(TensorSpec.from_json(item) for item in data["inputs"]),
            tuple(TensorSpec.from_json(item) for item in data["outputs"]),
            str(data.get("platform", "")),
        )


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """Knobs a runtime may honour; unknown ones are ignored."""

    intra_op_threads: int = 1
    inter_op_threads: int = 1
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RuntimeOptions:
        return cls(int(data["intra_op_threads"]), int(data["inter_op_threads"]), dict(data.get("extra", {})))


class Runtime(Protocol):
    """A model loaded into memory, ready to run."""

    signature: Signature

    def infer(self, inputs: Arrays, output_names: Sequence[str]) -> Arrays:
        """Run the model; returns the requested outputs (all when ``output_names`` is empty)."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...


class ModelHost(Protocol):
    """Where a loaded model runs: a worker process or the calling process.

    ``infer`` takes each input as a list of parts in raw form that are joined along the first axis,
    and answers in raw form too (:mod:`runtimes.raw_tensors`); a host may join the parts without
    copying (a worker gathers them straight into the socket).
    """

    signature: Signature

    def infer(self, inputs: Mapping[str, Sequence[RawTensor]], output_names: Sequence[str]) -> RawTensors:
        ...

    def close(self) -> None:
        ...

    def watch_failure(self, callback: FailureCallback) -> None:
        """Have ``callback(reason)`` called when the host can no longer serve and cannot recover by
        itself (its worker died and cannot be restarted), and ``callback(None)`` once it serves again."""
        ...


# A host's failure, or None when it serves again; called on a thread of the host's.
FailureCallback = Callable[[str | None], None]


class RuntimeFailure(Exception):
    """Base of the errors a runtime or host raises."""


class ArtifactInvalid(RuntimeFailure):
    """The artifact could not be loaded: not valid for this runtime, or unreadable."""


class InferenceFailed(RuntimeFailure):
    """The runtime rejected or failed a batch; the model stays loaded."""


class HostUnavailable(RuntimeFailure):
    """The host cannot run anything right now: its worker died or is restarting."""
