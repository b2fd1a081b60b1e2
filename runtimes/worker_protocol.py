"""The worker protocol: what the frames between gateways, workers and the broker say, in one module.

:mod:`runtimes.ipc` moves frames (a kind, JSON control fields, raw tensors); this module gives the
kinds their meaning and owns every message built on them:

==============  =====================  ==============================================================
kind            sent by                fields
==============  =====================  ==============================================================
LOAD            host -> worker         runtime, artifact, options: load (or reuse) the model
LOADED          worker -> host         signature
INFER           host -> worker         the batch's tensors; ``outputs`` when not all are wanted
RESULT          worker -> host         the output tensors
ERROR           worker or broker       error (a code of :data:`ERROR_CODES`), message
SHUTDOWN        host -> worker         (none): finish and exit
ATTACH          gateway -> broker      kind, artifact, options, label, size, mtime_ns (:class:`Attach`)
ATTACHED        broker -> gateway      path: the shared worker's socket
DETACH          gateway -> broker      the same fields as ATTACH
DETACHED        broker -> gateway      (none)
==============  =====================  ==============================================================

A failure travels as an ERROR frame whose code names the :class:`runtimes.contract.RuntimeFailure`
it stands for (:data:`ERROR_CODES`); the receiver raises that class again (:func:`raise_if_error`).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

from runtimes.contract import (
    ArtifactInvalid,
    HostUnavailable,
    InferenceFailed,
    RuntimeFailure,
    RuntimeOptions,
    Signature,
)
from runtimes.ipc import Frame, send_frame
from runtimes.raw_tensors import RawTensor


class Kind(IntEnum):
    """What a frame asks or answers; the numbers travel in the frame header."""

    LOAD = 1
    LOADED = 2
    INFER = 3
    RESULT = 4
    ERROR = 5
    SHUTDOWN = 6
    ATTACH = 7
    ATTACHED = 8
    DETACH = 9
    DETACHED = 10


# The one table of failures a frame can carry: code on the wire <-> the failure it stands for.
ERROR_CODES: dict[str, type[RuntimeFailure]] = {
    "artifact_invalid": ArtifactInvalid,
    "inference_failed": InferenceFailed,
    "host_unavailable": HostUnavailable,
    "runtime_failure": RuntimeFailure,
}
_CODE_BY_ERROR = {failure: code for code, failure in ERROR_CODES.items()}


def kind_name(frame: Frame) -> str:
    """The frame's kind by name, for messages (a number when it is no kind we know)."""
    try:
        return Kind(frame.kind).name
    except ValueError:
        return f"kind {frame.kind}"


# --- loading ------------------------------------------------------------------------------------


def send_load(sock: socket.socket, runtime: str, artifact: str, options: RuntimeOptions) -> None:
    send_frame(sock, Kind.LOAD, {"runtime": runtime, "artifact": artifact, "options": options.to_json()})


def load_fields(frame: Frame) -> tuple[str, str, RuntimeOptions]:
    """A LOAD frame's runtime kind, artifact path and options."""
    meta = frame.meta
    return str(meta["runtime"]), str(meta["artifact"]), RuntimeOptions.from_json(meta["options"])


def send_loaded(sock: socket.socket, signature: Signature) -> None:
    send_frame(sock, Kind.LOADED, {"signature": signature.to_json()})


def loaded_signature(frame: Frame) -> Signature:
    """The signature a LOADED frame reports; a failure the worker reported is raised instead."""
    raise_if_error(frame)
    return Signature.from_json(frame.meta["signature"])


# --- inference ----------------------------------------------------------------------------------


def send_batch(sock: socket.socket, inputs: Mapping[str, Sequence[RawTensor]], output_names: Sequence[str]) -> None:
    """Send a batch to a worker: an INFER frame, with JSON only when specific outputs are asked for."""
    send_frame(sock, Kind.INFER, {"outputs": list(output_names)} if output_names else None, inputs)


def requested_outputs(frame: Frame) -> list[str]:
    """The outputs an INFER frame asks for; empty means all of them."""
    return [str(name) for name in frame.meta.get("outputs", ())]


def send_result(sock: socket.socket, outputs: Mapping[str, RawTensor]) -> None:
    send_frame(sock, Kind.RESULT, None, {name: [tensor] for name, tensor in outputs.items()})


def result_tensors(frame: Frame) -> dict[str, RawTensor]:
    """A RESULT frame's outputs; a failure the worker reported is raised instead."""
    raise_if_error(frame)
    return frame.tensors


# --- the broker ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attach:
    """One model instance a gateway process asks the broker for; equal fields mean the same worker."""

    kind: str
    artifact: str  # resolved, so every gateway process names the same file the same way
    options: str  # the options as canonical JSON, comparable as a string
    label: str
    size: int  # with mtime_ns: a file replaced in place is a different model
    mtime_ns: int

    @classmethod
    def of(cls, kind: str, artifact: Path, options: RuntimeOptions, label: str) -> Attach:
        stat = artifact.stat()
        resolved = str(artifact.resolve())
        canonical = json.dumps(options.to_json(), sort_keys=True)
        return cls(kind, resolved, canonical, label, stat.st_size, stat.st_mtime_ns)

    @classmethod
    def from_frame(cls, frame: Frame) -> Attach:
        meta = frame.meta
        return cls(
            str(meta["kind"]),
            str(meta["artifact"]),
            str(meta["options"]),
            str(meta["label"]),
            int(meta["size"]),
            int(meta["mtime_ns"]),
        )

    @property
    def runtime_options(self) -> RuntimeOptions:
        return RuntimeOptions.from_json(json.loads(self.options))

    def fields(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "artifact": self.artifact,
            "options": self.options,
            "label": self.label,
            "size": self.size,
            "mtime_ns": self.mtime_ns,
        }


def send_attached(sock: socket.socket, path: Path) -> None:
    send_frame(sock, Kind.ATTACHED, {"path": str(path)})


def attached_path(frame: Frame) -> Path:
    raise_if_error(frame)
    return Path(str(frame.meta["path"]))


# --- failures -----------------------------------------------------------------------------------


def send_error(sock: socket.socket, error: BaseException) -> None:
    """Report a failure; anything that is not a RuntimeFailure is a bug that fails the batch it met."""
    if isinstance(error, RuntimeFailure):
        code = next(_CODE_BY_ERROR[kind] for kind in type(error).__mro__ if kind in _CODE_BY_ERROR)
        message = str(error)
    else:
        code, message = _CODE_BY_ERROR[InferenceFailed], f"{type(error).__name__}: {error}"
    send_frame(sock, Kind.ERROR, {"error": code, "message": message})


def raise_if_error(frame: Frame) -> None:
    """Raise the failure an ERROR frame reports, as its own class (ArtifactInvalid, ...)."""
    if frame.kind == Kind.ERROR:
        failure = ERROR_CODES.get(str(frame.meta.get("error")), RuntimeFailure)
        raise failure(str(frame.meta.get("message", "worker failed")))
