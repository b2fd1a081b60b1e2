"""Reads Triton's ``config.pbtxt`` into :class:`ModelSettings`, naming every field Turnout does not act on.

The file is protobuf text format of Triton's ModelConfig; ``protos/model_config.proto``, compiled
under the package ``turnout.triton``, is its schema (Triton's field numbers, and the same source as
the ModelConfig RPC's), so any real config parses and ``text_format`` reports a mistake with its
line and column. This is the one module of the registry that touches protobuf:
it turns the message into plain settings, and nothing past it sees the message.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import text_format
from pydantic import ValidationError

from gateway.registry.model_settings import (
    DEFAULT_MAX_QUEUE_SIZE,
    MAX_INSTANCE_COUNT,
    ModelSettings,
    SettingsInvalid,
    TensorDeclaration,
    describe_problems,
)
from gateway.wire.turnout.triton import model_config_pb2 as pb

CONFIG_FILE = "config.pbtxt"
# Triton's file name for an onnxruntime model when default_model_filename is not set.
ONNX_DEFAULT_FILENAME = "model.onnx"
ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"

_DATATYPES: dict[str, str] = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
}

# The fields Turnout acts on, as a tree: True for a field read whole, a mapping for a message of
# which only some fields are read. Every other field that is set is named as not acted on.
_TENSOR_FIELDS: Mapping[str, Any] = {"name": True, "data_type": True, "dims": True, "reshape": True}
_ACTED_ON: Mapping[str, Any] = {
    "name": True,
    "platform": True,
    "backend": True,
    "max_batch_size": True,
    "input": _TENSOR_FIELDS,
    "output": _TENSOR_FIELDS,
    "version_policy": True,
    "default_model_filename": True,
    # kind is looked at separately: CPU and AUTO are what Turnout does anyway.
    "instance_group": {"name": True, "count": True, "kind": True},
    "dynamic_batching": {
        "max_queue_delay_microseconds": True,
        "preferred_batch_size": True,
        "default_queue_policy": {"max_queue_size": True, "default_timeout_microseconds": True},
    },
}
_CPU_KINDS = ("KIND_CPU", "KIND_AUTO")


@dataclass(frozen=True, slots=True)
class TritonSettings:
    """The settings a config.pbtxt gives, and the fields in it that Turnout leaves alone."""

    settings: ModelSettings
    not_acted_on: tuple[str, ...]


def parse_config(text: str, model_name: str) -> TritonSettings:
    """Settings for ``model_name`` from the text of its config.pbtxt.

    Raises SettingsInvalid, its message starting ``config.pbtxt:``, for a file that does not parse,
    a platform or backend Turnout cannot run, or a value out of range.
    """
    config = pb.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise SettingsInvalid(f"{CONFIG_FILE}: line {error}") from None
    try:
        return TritonSettings(_settings_of(config, model_name), tuple(_not_acted_on(config)))
    except (ValueError, ValidationError) as error:
        detail = describe_problems(error) if isinstance(error, ValidationError) else str(error)
        raise SettingsInvalid(f"{CONFIG_FILE}: {detail}") from None


def _settings_of(config: Any, model_name: str) -> ModelSettings:
    if config.name and config.name != model_name:
        raise ValueError(f"name {config.name!r} does not match the model directory {model_name!r}")
    _check_runtime(config)
    if config.max_batch_size < 0:
        raise ValueError(f"max_batch_size must be 0 (no batch dimension) or more, got {config.max_batch_size}")
    document: dict[str, Any] = {
        "source": CONFIG_FILE,
        "max_batch_size": config.max_batch_size,
        "runtime": ONNX_BACKEND,
        "instance_count": _instance_count(config),
        "model_filename": config.default_model_filename or ONNX_DEFAULT_FILENAME,
    }
    if config.HasField("version_policy"):
        document["version_policy"] = _version_policy(config.version_policy)
    if config.HasField("dynamic_batching"):
        document["dynamic_batching"] = _dynamic_batching(config.dynamic_batching, config.max_batch_size)
    # Triton requires the tensors to be declared; Turnout lets the artifact speak when none are.
    if config.input:
        document["inputs"] = [_tensor(item, "input") for item in config.input]
    if config.output:
        document["outputs"] = [_tensor(item, "output") for item in config.output]
    return ModelSettings.model_validate(document)


def _check_runtime(config: Any) -> None:
    """Refuse a platform or backend other than onnxruntime; with neither set, onnxruntime is assumed.

    (Triton would fill the platform in from the model file; the only file a config.pbtxt model may
    hold here is an ONNX one.)
    """
    if config.platform and config.platform != ONNX_PLATFORM:
        raise ValueError(f"platform {config.platform!r} is not served by Turnout (it serves {ONNX_PLATFORM!r})")
    if config.backend and config.backend != ONNX_BACKEND:
        raise ValueError(f"backend {config.backend!r} is not served by Turnout (it serves {ONNX_BACKEND!r})")


def _instance_count(config: Any) -> int:
    total = 0
    for group in config.instance_group:
        if group.count < 0:
            raise ValueError(f"instance_group count must not be negative, got {group.count}")
        total += group.count or 1  # Triton's count defaults to one instance
    if total > MAX_INSTANCE_COUNT:
        raise ValueError(f"instance_group counts add up to {total}; Turnout runs at most {MAX_INSTANCE_COUNT}")
    return total or 1


def _version_policy(policy: Any) -> dict[str, Any]:
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return {"all": {}}
    if choice == "specific":
        if not policy.specific.versions:
            raise ValueError("version_policy specific names no versions")
        return {"specific": {"versions": list(policy.specific.versions)}}
    if choice == "latest":
        if policy.latest.num_versions < 1:
            raise ValueError("version_policy latest num_versions must be at least 1")
        return {"latest": {"num_versions": policy.latest.num_versions}}
    return {}


def _dynamic_batching(batching: Any, max_batch_size: int) -> dict[str, Any]:
    preferred = list(batching.preferred_batch_size)
    out_of_range = [size for size in preferred if not 1 <= size <= max(max_batch_size, 1)]
    if out_of_range:
        raise ValueError(
            f"dynamic_batching preferred_batch_size {out_of_range} must lie between 1 and max_batch_size "
            f"({max_batch_size})"
        )
    queue = batching.default_queue_policy
    return {
        "max_queue_delay_microseconds": batching.max_queue_delay_microseconds,
        "preferred_batch_sizes": preferred,
        # Triton's 0 is an unbounded queue; Turnout keeps its bound (named in the log line).
        "max_queue_size": queue.max_queue_size or DEFAULT_MAX_QUEUE_SIZE,
        "default_queue_timeout_microseconds": queue.default_timeout_microseconds,
    }


def _tensor(item: Any, kind: str) -> TensorDeclaration:
    type_name = pb.DataType.Name(item.data_type)
    datatype = _DATATYPES.get(type_name)
    if datatype is None:
        raise ValueError(f"{kind} {item.name!r}: data_type {type_name} is not one Turnout serves")
    if any(d < -1 for d in item.dims):
        raise ValueError(f"{kind} {item.name!r}: dims {list(item.dims)} must be sizes or -1")
    declared: dict[str, Any] = {"name": item.name, "datatype": datatype, "dims": list(item.dims)}
    if item.HasField("reshape"):
        declared["reshape"] = list(item.reshape.shape)
    try:
        # Validated here, one tensor at a time, so that a bad reshape names its tensor.
        return TensorDeclaration.model_validate(declared)
    except ValidationError as error:
        problems = "; ".join(str(problem["msg"]).removeprefix("Value error, ") for problem in error.errors())
        raise ValueError(f"{kind} {item.name!r}: {problems}") from None


def _not_acted_on(config: Any) -> Iterator[str]:
    """Each field set in ``config`` that Turnout does not act on, named once, in file order."""
    seen: dict[str, None] = {}
    for name in _unread(config, _ACTED_ON, ""):
        seen.setdefault(name)
    for group in config.instance_group:
        kind = pb.ModelInstanceGroup.Kind.Name(group.kind)
        if kind not in _CPU_KINDS:
            seen.setdefault(f"instance_group kind {kind} (runs on CPU)")
    if config.HasField("dynamic_batching") and config.dynamic_batching.default_queue_policy.max_queue_size == 0:
        bound = DEFAULT_MAX_QUEUE_SIZE
        seen.setdefault(f"dynamic_batching.default_queue_policy.max_queue_size 0 (unbounded; Turnout keeps {bound})")
    yield from seen


def _unread(message: Any, acted_on: Mapping[str, Any], prefix: str) -> Iterator[str]:
    for field, value in message.ListFields():
        rule = acted_on.get(field.name)
        path = f"{prefix}{field.name}"
        if rule is None:
            yield path
        elif isinstance(rule, Mapping):
            items = value if field.is_repeated else [value]
            for item in items:
                yield from _unread(item, rule, f"{path}.")
