"""Which runtime serves which artifact: the one place that maps artifact files to runtimes."""

from __future__ import annotations

from pathlib import Path

from runtimes.contract import ArtifactInvalid, Runtime, RuntimeOptions

# File names a version directory may hold, in order of preference, and the runtime each selects.
ARTIFACT_FILES: dict[str, str] = {"model.onnx": "onnxruntime", "model.echo.json": "echo"}
RUNTIME_KINDS = ("onnxruntime", "echo")


def find_artifact(version_dir: Path, filename: str | None = None) -> Path | None:
    """The artifact file in a version directory, or None when it holds none we know.

    With ``filename`` (a model's configured artifact name), only that file counts.
    """
    if filename is not None:
        named = version_dir / filename
        return named if named.is_file() else None
    for filename in ARTIFACT_FILES:
        candidate = version_dir / filename
        if candidate.is_file():
            return candidate
    return None


def runtime_kind_for(artifact: Path) -> str:
    if artifact.name in ARTIFACT_FILES:
        return ARTIFACT_FILES[artifact.name]
    # A configured file name (config.pbtxt's default_model_filename) still says what it holds.
    if artifact.suffix == ".onnx":
        return "onnxruntime"
    raise ArtifactInvalid(f"no runtime serves {artifact.name}")


def open_runtime(kind: str, artifact: Path, options: RuntimeOptions) -> Runtime:
    """Load ``artifact`` into a runtime of the given kind (imports the runtime lazily)."""
    if kind == "onnxruntime":
        from runtimes.onnxrt import OnnxRuntime

        return OnnxRuntime(artifact, options)
    if kind == "echo":
        from runtimes.echo import EchoRuntime

        return EchoRuntime(artifact)
    raise ArtifactInvalid(f"unknown runtime {kind!r}; expected one of {', '.join(RUNTIME_KINDS)}")
