"""A dependency-free runtime that answers each input with itself: a yardstick for the transport.

Its artifact is a JSON file (``model.echo.json``) declaring the inputs; every output mirrors the
input of the same name, so a request's bytes come back untouched.
"""

from __future__ import annotations

import json
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
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ArtifactInvalid(f"{artifact.name} is not a valid echo declaration: {error}") from error
        self.signature = Signature(inputs, inputs, PLATFORM)

    def infer(self, inputs: Arrays, output_names: Sequence[str]) -> Arrays:
        names = list(output_names) or [spec.name for spec in self.signature.outputs]
        try:
            return {name: inputs[name] for name in names}
        except KeyError as error:
            raise InferenceFailed(f"echo has no input named {error.args[0]!r} to return") from None

    def close(self) -> None:
        pass
