"""The framing between the gateway and a worker process: a binary tensor table, raw tensor bytes, JSON for control.

What the frames say (their kinds and messages) is :mod:`runtimes.worker_protocol`'s; this module only
moves them.

One frame on the stream socket::

    header  <B x H I I Q>  kind, (pad), tensor count, table length, meta length, body length
    table   per tensor     <B B H Q> datatype code, rank, name length, byte count; the name (UTF-8);
                           then one <q> per dimension
    meta    JSON           control fields (load requests, errors, requested outputs); absent when empty
    body    bytes          each tensor's bytes, in table order, row-major

Tensors are never pickled, and the hot frames (a batch and its result) carry no JSON at all: the
tensor table is fixed binary, so neither side runs an encoder per batch. The sender hands the kernel
a list of buffers (``sendmsg``), so a batch made of many requests is gathered into one contiguous
frame without a copy in Python; the receiver reads everything after the header into one buffer and
hands each tensor on as a view of it (:class:`runtimes.raw_tensors.RawTensor`). BYTES tensors travel
in their length-prefixed raw form, so they concatenate like any other.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runtimes.datatypes import DATATYPES
from runtimes.raw_tensors import RawTensor

HEADER = struct.Struct("<BxHIIQ")
_ENTRY = struct.Struct("<BBHQ")
_DIMS: dict[int, struct.Struct] = {}
_CODE_BY_DATATYPE = {datatype: code for code, datatype in enumerate(DATATYPES)}
# Linux accepts at most 1024 buffers per sendmsg; stay well below it.
_MAX_BUFFERS_PER_SEND = 512


@dataclass(slots=True)
class Frame:
    kind: int  # a runtimes.worker_protocol.Kind
    meta: dict[str, Any]
    tensors: dict[str, RawTensor]


class ChannelClosed(EOFError):
    """The peer closed the socket, or died, before a whole frame arrived."""


def _dims(rank: int) -> struct.Struct:
    dims = _DIMS.get(rank)
    if dims is None:
        dims = _DIMS[rank] = struct.Struct(f"<{rank}q")
    return dims


def send_frame(
    sock: socket.socket,
    kind: int,
    meta: Mapping[str, Any] | None = None,
    tensors: Mapping[str, Sequence[RawTensor]] | None = None,
) -> None:
    """Write one frame. Each tensor is given as parts joined along the first axis."""
    table: list[bytes] = []
    buffers: list[memoryview | bytes] = []
    body_len = 0
    for name, parts in (tensors or {}).items():
        first = parts[0]
        if len(parts) == 1:
            shape, nbytes = first.shape, len(first.data)
            buffers.append(first.data)
        else:
            shape = (sum(part.shape[0] for part in parts), *first.shape[1:])
            nbytes = 0
            for part in parts:
                buffers.append(part.data)
                nbytes += len(part.data)
        encoded_name = name.encode()
        table.append(_ENTRY.pack(_CODE_BY_DATATYPE[first.datatype], len(shape), len(encoded_name), nbytes))
        table.append(encoded_name)
        table.append(_dims(len(shape)).pack(*shape))
        body_len += nbytes
    encoded_table = b"".join(table)
    encoded_meta = json.dumps(meta, separators=(",", ":")).encode() if meta else b""
    header = HEADER.pack(kind, len(tensors or ()), len(encoded_table), len(encoded_meta), body_len)
    _send_all(sock, [header, encoded_table, encoded_meta, *buffers])


def _send_all(sock: socket.socket, buffers: list[memoryview | bytes]) -> None:
    pending = [buffer for buffer in buffers if len(buffer)]
    sent = sock.sendmsg(pending[:_MAX_BUFFERS_PER_SEND])
    # One call almost always takes the whole frame; a large one continues where the kernel stopped.
    while pending:
        while sent:
            head = pending[0]
            if sent >= len(head):
                sent -= len(head)
                pending.pop(0)
            else:
                pending[0] = memoryview(head).cast("B")[sent:]
                sent = 0
        if pending:
            sent = sock.sendmsg(pending[:_MAX_BUFFERS_PER_SEND])


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
    """Read one frame; tensors are raw views into one buffer received for the whole frame."""
    kind, count, table_len, meta_len, body_len = HEADER.unpack(_recv_exact(sock, HEADER.size))
    data = memoryview(_recv_exact(sock, table_len + meta_len + body_len))
    meta = json.loads(bytes(data[table_len : table_len + meta_len])) if meta_len else {}
    tensors: dict[str, RawTensor] = {}
    position, offset = 0, table_len + meta_len
    for _ in range(count):
        code, rank, name_len, nbytes = _ENTRY.unpack_from(data, position)
        position += _ENTRY.size
        name = bytes(data[position : position + name_len]).decode()
        position += name_len
        dims = _dims(rank)
        shape = dims.unpack_from(data, position)
        position += dims.size
        tensors[name] = RawTensor(DATATYPES[code], shape, data[offset : offset + nbytes])
        offset += nbytes
    return Frame(kind, meta, tensors)


def channel_pair() -> tuple[socket.socket, socket.socket]:
    """A connected pair of stream sockets with buffers large enough for typical batches."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for sock in (parent, child):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return parent, child
