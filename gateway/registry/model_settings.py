"""Per-model settings read from ``<repo>/<model>/model.yaml``, validated so a typo is an error.

The knobs mirror Triton's model configuration (``max_batch_size``, ``dynamic_batching``,
``version_policy``, ``instance_group`` count) so a Triton user finds them where expected. A model
directory that holds Triton's own ``config.pbtxt`` instead is converted into the same settings by
``gateway.registry.triton_config``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runtimes.datatypes import DATATYPES

MODEL_SETTINGS_FILE: Final = "model.yaml"
SettingsSource = Literal["model.yaml", "config.pbtxt"]
DEFAULT_MAX_QUEUE_SIZE = 1024
MAX_INSTANCE_COUNT = 64


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DynamicBatching(_Strict):
    """How requests wait to be merged into a batch (Triton's ``dynamic_batching``)."""

    max_queue_delay_microseconds: int = Field(0, ge=0)
    # Bounded on purpose: a full queue answers UNAVAILABLE instead of growing without limit.
    max_queue_size: int = Field(DEFAULT_MAX_QUEUE_SIZE, ge=1)
    default_queue_timeout_microseconds: int = Field(0, ge=0)
    # A batch whose queued rows reach one of these sizes runs at once, without waiting out the delay.
    preferred_batch_sizes: tuple[int, ...] = ()

    @model_validator(mode="after")
    def _preferred_sizes_positive(self) -> DynamicBatching:
        if any(size < 1 for size in self.preferred_batch_sizes):
            raise ValueError(f"preferred_batch_sizes must be positive, got {list(self.preferred_batch_sizes)}")
        return self


class LatestPolicy(_Strict):
    num_versions: int = Field(1, ge=1)


class SpecificPolicy(_Strict):
    versions: tuple[int, ...] = Field(min_length=1)


class VersionPolicy(_Strict):
    """Which versions in the repository are served: exactly one of latest, all, specific."""

    latest: LatestPolicy | None = None
    all: dict[str, object] | None = None
    specific: SpecificPolicy | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        chosen = [name for name in ("latest", "all", "specific") if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise ValueError(f"version_policy takes one of latest, all, specific; got {', '.join(chosen)}")
        return self

    @property
    def kind(self) -> Literal["latest", "all", "specific"]:
        if self.all is not None:
            return "all"
        return "specific" if self.specific is not None else "latest"

    def select(self, available: set[int]) -> set[int]:
        """The versions to serve out of those present in the repository."""
        if self.all is not None:
            return set(available)
        if self.specific is not None:
            return available & set(self.specific.versions)
        count = self.latest.num_versions if self.latest else 1
        return set(sorted(available)[-count:])


class TensorDeclaration(_Strict):
    """An input or output as the configuration declares it; dims exclude the batch dimension.

    With ``reshape``, clients send and receive ``dims`` while the model sees the ``reshape`` shape
    (same elements, same bytes; the batch dimension, if any, is kept in front of both).
    """

    name: str
    datatype: Literal[DATATYPES]  # type: ignore[valid-type]
    dims: tuple[int, ...] = ()
    reshape: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _reshape_keeps_the_elements(self) -> TensorDeclaration:
        if self.reshape is None:
            return self
        if any(d < -1 for d in self.reshape) or self.reshape.count(-1) > 1:
            raise ValueError(f"reshape {list(self.reshape)}: dimensions are sizes or -1, at most one -1")
        if -1 not in self.dims and -1 not in self.reshape and math.prod(self.dims) != math.prod(self.reshape):
            raise ValueError(
                f"reshape {list(self.reshape)} holds {math.prod(self.reshape)} elements "
                f"but dims {list(self.dims)} hold {math.prod(self.dims)}"
            )
        return self


class RuntimeSettings(_Strict):
    intra_op_threads: int = Field(1, ge=0)
    inter_op_threads: int = Field(1, ge=0)


class ModelSettings(_Strict):
    """Everything ``model.yaml`` may say about a model; every field has a sensible default."""

    # None: 64 when every input and output has a free first dimension, else 0 (no batching).
    max_batch_size: int | None = Field(None, ge=0)
    dynamic_batching: DynamicBatching = DynamicBatching()
    version_policy: VersionPolicy = VersionPolicy()
    instance_count: int = Field(1, ge=1, le=MAX_INSTANCE_COUNT)
    runtime: Literal["onnxruntime", "echo"] | None = None
    runtime_options: RuntimeSettings | None = None
    inputs: tuple[TensorDeclaration, ...] | None = None
    outputs: tuple[TensorDeclaration, ...] | None = None
    feature_names: tuple[str, ...] | None = None
    # The artifact's file name inside each version directory; None: the names runtimes.catalog knows.
    model_filename: str | None = Field(None, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    # Which file these settings came from, for messages; set by the reader, never by the file.
    source: SettingsSource = MODEL_SETTINGS_FILE


class SettingsInvalid(ValueError):
    """``model.yaml`` could not be read or does not validate; the message says where."""


def read_model_settings(model_dir: Path) -> ModelSettings:
    """Settings for the model in ``model_dir``; defaults when it has no ``model.yaml``."""
    path = model_dir / MODEL_SETTINGS_FILE
    if not path.is_file():
        return ModelSettings()
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise SettingsInvalid(f"{path.name}: cannot be read: {error}") from None
    if not isinstance(document, dict):
        raise SettingsInvalid(f"{path.name}: expected a mapping at the top level")
    if "source" in document:
        raise SettingsInvalid(f"{path.name}: source: Extra inputs are not permitted")
    try:
        return ModelSettings.model_validate(document)
    except ValidationError as error:
        raise SettingsInvalid(f"{path.name}: {describe_problems(error)}") from None


def describe_problems(error: ValidationError) -> str:
    """Every validation problem as ``where: what``, joined with semicolons."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'top level'}: {item['msg']}" for item in error.errors()
    )
