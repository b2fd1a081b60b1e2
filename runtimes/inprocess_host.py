"""A model host that runs the runtime in the gateway's own process: the smallest deployment, and
the yardstick that shows what the process boundary costs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from runtimes.catalog import open_runtime
from runtimes.contract import FailureCallback, InferenceFailed, RuntimeFailure, RuntimeOptions
from runtimes.raw_tensors import RawTensor, RawTensors, array_of, joined, raw_of


class InProcessHost:
    """Runs the model on the calling thread (ONNX Runtime releases the GIL while it computes)."""

    restarts = 0

    def __init__(self, kind: str, artifact: Path, options: RuntimeOptions) -> None:
        self._runtime = open_runtime(kind, artifact, options)
        self.signature = self._runtime.signature

    def watch_failure(self, callback: FailureCallback) -> None:
        """Nothing to watch: the model runs in this process, which cannot outlive it."""

    def infer(self, inputs: Mapping[str, Sequence[RawTensor]], output_names: Sequence[str]) -> RawTensors:
        try:
            arrays = {name: array_of(joined(parts)) for name, parts in inputs.items()}
            outputs = self._runtime.infer(arrays, output_names)
            return {name: raw_of(array) for name, array in outputs.items()}
        except RuntimeFailure:
            raise
        except Exception as error:  # as in a worker: a bug must fail one batch, not the model's dispatcher
            raise InferenceFailed(f"{type(error).__name__}: {error}") from error

    def close(self) -> None:
        self._runtime.close()
