"""A model host that runs the runtime in the gateway's own process: the smallest deployment, and
the yardstick that shows what the process boundary costs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.catalog import open_runtime
from runtimes.contract import Arrays, InferenceFailed, RuntimeFailure, RuntimeOptions


def join_parts(parts: Sequence[np.ndarray[Any, Any]]) -> np.ndarray[Any, Any]:
    """One array from parts stacked along the first axis; a single part is passed through uncopied."""
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


class InProcessHost:
    """Runs the model on the calling thread (ONNX Runtime releases the GIL while it computes)."""

    restarts = 0

    def __init__(self, kind: str, artifact: Path, options: RuntimeOptions) -> None:
        self._runtime = open_runtime(kind, artifact, options)
        self.signature = self._runtime.signature

    def infer(self, inputs: Mapping[str, Sequence[np.ndarray[Any, Any]]], output_names: Sequence[str]) -> Arrays:
        try:
            return self._runtime.infer({name: join_parts(parts) for name, parts in inputs.items()}, output_names)
        except RuntimeFailure:
            raise
        except Exception as error:  # as in a worker: a bug must fail one batch, not the model's dispatcher
            raise InferenceFailed(f"{type(error).__name__}: {error}") from error

    def close(self) -> None:
        self._runtime.close()
