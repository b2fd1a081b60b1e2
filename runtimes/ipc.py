"""The framing between the gateway and a worker process: JSON for control, raw buffers for tensors.

One frame on the stream socket::

    header  <B x H I Q>  kind, (pad), tensor count, meta length, body length
    meta    JSON         control fields, plus [name, datatype, shape, nbytes] for each tensor
    body    bytes        each tensor's bytes, in table order, row-major

Tensors are never pickled. The sender hands the kernel a list of buffers (``sendmsg``), so a batch
made of many requests is gathered into one contiguous frame without a copy in Python; the receiver
reads the body into one buffer and wraps each tensor with ``np.frombuffer``. BYTES tensors travel in
their length-prefixed raw form, so they concatenate like any other.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from runtimes.contract import ArtifactInvalid, InferenceFailed, RuntimeFailure
from runtimes.datatypes import BYTES, datatype_of, decode_bytes, encode_bytes, numpy_dtype

HEADER = struct.Struct("<BxHIQ")
# Linux accepts at most 1024 buffers per sendmsg; stay well below it.
_MAX_BUFFERS_PER_SEND = 512


class Kind(IntEnum):
    """What a frame asks or answers."""

    LOAD = 1
    LOADED = 2
    INFER = 3
    RESULT = 4
    ERROR = 5
    SHUTDOWN = 6
    # Between a gateway process and the worker broker (runtimes.broker).
    ATTACH = 7
    ATTACHED = 8
    DETACH = 9
    DETACHED = 10


@dataclass(slots=True)
class Frame:
    kind: Kind
    meta: dict[str, Any]
    tensors: dict[str, np.ndarray[Any, Any]]


class ChannelClosed(EOFError):
    """The peer closed the socket, or died, before a whole frame arrived."""


def _payload(array: np.ndarray[Any, Any]) -> tuple[str, memoryview | bytes]:
    datatype = datatype_of(array.dtype)
    if datatype == BYTES:
        return datatype, encode_bytes(array)
    if array.size == 0:  # memoryview cannot cast a view with a zero in its shape
        return datatype, b""
    return datatype, np.ascontiguousarray(array).data.cast("B")


def send_frame(
    sock: socket.socket,
    kind: Kind,
    meta: Mapping[str, Any] | None = None,
    tensors: Mapping[str, Sequence[np.ndarray[Any, Any]]] | None = None,
) -> None:
    """Write one frame. Each tensor is given as parts joined along the first axis."""
    table: list[list[Any]] = []
    buffers: list[memoryview | bytes] = []
    for name, parts in (tensors or {}).items():
        nbytes, rows, datatype = 0, 0, ""
        for part in parts:
            datatype, buffer = _payload(part)
            buffers.append(buffer)
            nbytes += len(buffer)
            rows += part.shape[0] if part.ndim else 1
        first = parts[0]
        shape = [rows, *first.shape[1:]] if first.ndim else []
        table.append([name, datatype, shape, nbytes])
    body = dict(meta or {})
    body["tensors"] = table
    encoded_meta = json.dumps(body, separators=(",", ":")).encode()
    body_len = sum(len(buffer) for buffer in buffers)
    header = HEADER.pack(kind, len(table), len(encoded_meta), body_len)
    _send_all(sock, [header, encoded_meta, *buffers])


def _send_all(sock: socket.socket, buffers: list[memoryview | bytes]) -> None:
    pending = [memoryview(buffer).cast("B") for buffer in buffers if len(buffer)]
    while pending:
        sent = sock.sendmsg(pending[:_MAX_BUFFERS_PER_SEND])
        while sent:
            head = pending[0]
            if sent >= len(head):
                sent -= len(head)
                pending.pop(0)
            else:
                pending[0] = head[sent:]
                sent = 0


def _recv_exact(sock: socket.socket, size: int) -> bytearray:
    buffer = bytearray(size)
    view = memoryview(buffer)
    received = 0
    while received < size:
        count = sock.recv_into(view[received:], size - received)
        if count == 0:
            raise ChannelClosed("peer closed the channel")
        received += count
    return buffer


def recv_frame(sock: socket.socket) -> Frame:
    """Read one frame; tensors are views into one buffer received for the whole body."""
    kind, _count, meta_len, body_len = HEADER.unpack(_recv_exact(sock, HEADER.size))
    data = _recv_exact(sock, meta_len + body_len)
    meta = json.loads(bytes(data[:meta_len]))
    body = memoryview(data)[meta_len:]
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    offset = 0
    for name, datatype, shape, nbytes in meta.pop("tensors"):
        chunk = body[offset : offset + nbytes]
        offset += nbytes
        if datatype == BYTES:
            tensors[name] = decode_bytes(chunk).reshape(shape)
        else:
            tensors[name] = np.frombuffer(chunk, dtype=numpy_dtype(datatype)).reshape(shape)
    return Frame(Kind(kind), meta, tensors)


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of stream sockets with buffers large enough for typical batches."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for sock in (parent, child):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return parent, child


def raise_if_error(frame: Frame) -> None:
    """Re-raise an ERROR frame as the runtime failure the worker reported (ArtifactInvalid, ...)."""
    if frame.kind is Kind.ERROR:
        kinds: dict[str, type[RuntimeFailure]] = {
            "ArtifactInvalid": ArtifactInvalid,
            "InferenceFailed": InferenceFailed,
        }
        failure = kinds.get(str(frame.meta.get("error")), RuntimeFailure)
        raise failure(str(frame.meta.get("message", "worker failed")))
