"""A dependency-free runtime that answers each input with itself: a yardstick for the transport.

Its artifact is a JSON file (``model.echo.json``) declaring the inputs; every output mirrors the
input of the same name, so a request's bytes come back untouched. Optional keys make it a
stand-in for a misbehaving model in tests and benchmarks: ``delay_ms`` (sleep per batch),
``fail`` (a message every inference fails with) and ``offset`` (added to every numeric output: a
version with the same signature that answers differently).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from runtimes.contract import Arrays, ArtifactInvalid, InferenceFailed, Signature, TensorSpec

PLATFORM = "echo"


class EchoRuntime:
    """Returns its inputs as outputs."""

    def __init__(self, artifact: Path) -> None:
        try:
            declared = json.loads(artifact.read_text())
            inputs = tuple(TensorSpec.from_json(item) for item in declared["inputs"])
            self._delay_s = float(declared.get("delay_ms", 0)) / 1000
            self._failure = str(declared["fail"]) if "fail" in declared else None
            self._offset = float(declared.get("offset", 0))
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ArtifactInvalid(f"{artifact.name} is not a valid echo declaration: {error}") from error
        self.signature = Signature(inputs, inputs, PLATFORM)

    def infer(self, inputs: Arrays, output_names: Sequence[str]) -> Arrays:
        if self._delay_s:
            time.sleep(self._delay_s)
        if self._failure is not None:
            raise InferenceFailed(self._failure)
        names = list(output_names) or [spec.name for spec in self.signature.outputs]
        try:
            answers = {name: inputs[name] for name in names}
        except KeyError as error:
            raise InferenceFailed(f"echo has no input named {error.args[0]!r} to return") from None
        if not self._offset:
            return answers
        return {name: (array + self._offset).astype(array.dtype) if array.dtype.kind in "iuf" else array
                for name, array in answers.items()}  # fmt: skip

    def close(self) -> None:
        pass
