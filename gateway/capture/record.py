"""One captured request as a record, and its byte encoding inside the write-ahead log.

A record's encoding is a little-endian ``uint32`` length of a JSON metadata object, the metadata,
then every tensor's raw bytes back to back in the order the metadata lists them. JSON keeps the
format readable by anything; the tensors stay raw (no base64, no pickle), so a record costs one
``json.dumps`` plus one ``bytes.join`` on the writer thread, never on a dispatcher's.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

from runtimes.raw_tensors import RawTensor

_META_LENGTH = struct.Struct("<I")


class RecordCorrupt(ValueError):
    """Bytes that passed the log's checksum yet do not decode as a record (a writer's bug, not a disk's)."""


@dataclass(frozen=True, slots=True)
class CaptureRecord:
    """Everything kept of one request: who asked, where it went, what came back, and how fast."""

    request_id: str
    time_unix_ns: int
    model: str
    version: str  # the version that answered, or the one asked for when routing never chose one
    arm: str  # stable, canary, pinned, shadow; empty when routing never ran
    generation: int
    reason: str  # pin, sticky, random, no-canary, or shadow; empty when routing never ran
    status: str  # the gRPC status code name
    latency_ms: float
    rows: int
    inputs: dict[str, RawTensor] = field(default_factory=dict)  # data is bytes: records own their copies
    outputs: dict[str, RawTensor] = field(default_factory=dict)
    # False when the request failed before its inputs were checked against the model: they are kept
    # as sent, and may fit no column the model's own records make.
    inputs_checked: bool = True


def encode(record: CaptureRecord) -> bytes:
    """The record's bytes, as the write-ahead log stores them (inside its checksummed frame)."""
    tensors = [("i", name, tensor) for name, tensor in record.inputs.items()]
    tensors += [("o", name, tensor) for name, tensor in record.outputs.items()]
    meta = {
        "id": record.request_id,
        "t": record.time_unix_ns,
        "m": record.model,
        "v": record.version,
        "a": record.arm,
        "g": record.generation,
        "r": record.reason,
        "s": record.status,
        "l": record.latency_ms,
        "n": record.rows,
        "c": record.inputs_checked,
        "x": [[role, name, tensor.datatype, list(tensor.shape), len(tensor.data)] for role, name, tensor in tensors],
    }
    head = json.dumps(meta, separators=(",", ":")).encode()
    return b"".join([_META_LENGTH.pack(len(head)), head, *(tensor.data for _, _, tensor in tensors)])


def decode(data: bytes | memoryview) -> CaptureRecord:
    """The record :func:`encode` made; raises RecordCorrupt for anything else."""
    view = memoryview(data)
    try:
        (length,) = _META_LENGTH.unpack_from(view, 0)
        meta = json.loads(bytes(view[4 : 4 + length]))
        offset = 4 + length
        inputs: dict[str, RawTensor] = {}
        outputs: dict[str, RawTensor] = {}
        for role, name, datatype, shape, size in meta["x"]:
            chunk = bytes(view[offset : offset + size])
            if len(chunk) != size:
                raise RecordCorrupt(f"tensor {name!r} is cut short")
            offset += size
            (inputs if role == "i" else outputs)[name] = RawTensor(datatype, tuple(shape), chunk)
        if offset != len(view):
            raise RecordCorrupt(f"{len(view) - offset} bytes after the last tensor")
        return CaptureRecord(
            meta["id"], meta["t"], meta["m"], meta["v"], meta["a"], meta["g"], meta["r"], meta["s"], meta["l"],
            meta["n"], inputs, outputs, meta["c"],
        )  # fmt: skip
    except (struct.error, ValueError, KeyError, TypeError) as error:
        if isinstance(error, RecordCorrupt):
            raise
        raise RecordCorrupt(f"not a capture record: {error}") from None
