"""The worker framing round-trips every datatype and shape, and says so when a peer vanishes."""

from __future__ import annotations

import socket
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtimes.datatypes import decode_bytes, encode_bytes
from runtimes.ipc import HEADER, ChannelClosed, recv_frame, send_frame
from runtimes.raw_tensors import RawTensor, array_of, raw_of
from runtimes.worker_protocol import Kind, requested_outputs, send_batch
from tests.support.tensor_strategies import batch_parts


def raw_parts(parts: dict[str, list[np.ndarray]]) -> dict[str, list[RawTensor]]:
    return {name: [raw_of(part) for part in arrays] for name, arrays in parts.items()}


def round_trip(parts: dict[str, list[np.ndarray]]) -> dict[str, np.ndarray]:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        # Send from a thread: a frame may be larger than the socket buffer.
        sender = threading.Thread(target=send_batch, args=(ours, raw_parts(parts), ()))
        sender.start()
        frame = recv_frame(theirs)
        sender.join()
    assert frame.kind == Kind.INFER and frame.meta == {} and requested_outputs(frame) == []
    assert list(frame.tensors) == list(parts), "tensors keep their order"
    return {name: array_of(tensor) for name, tensor in frame.tensors.items()}


@settings(max_examples=80, deadline=None)
@given(batch_parts(max_parts=4, max_side=4))
def test_numeric_parts_arrive_concatenated_and_exact(parts: list[np.ndarray]) -> None:
    received = round_trip({"x": parts})["x"]
    expected = np.concatenate(parts)
    assert received.dtype == expected.dtype and received.shape == expected.shape
    assert received.tobytes() == expected.tobytes(), "bit for bit, NaNs included"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.binary(max_size=40), min_size=0, max_size=5), min_size=1, max_size=3))
def test_bytes_parts_arrive_concatenated(rows: list[list[bytes]]) -> None:
    parts = [np.array(row, dtype=np.object_).reshape(len(row), 1) for row in rows]
    received = round_trip({"s": parts})["s"]
    assert received.reshape(-1).tolist() == [item for row in rows for item in row]


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_bytes_encoding_round_trips(items: list[bytes]) -> None:
    array = np.array(items, dtype=np.object_)
    assert decode_bytes(encode_bytes(array), len(items)).tolist() == items


def test_a_scalar_tensor_keeps_its_empty_shape() -> None:
    assert round_trip({"x": [np.array(2.5, np.float32)]})["x"].shape == ()


def test_several_tensors_and_control_fields_travel_together() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        tensors = {"first": [np.arange(6, dtype=np.int64).reshape(2, 3)], "zweite-é": [np.array([b"a", b""], object)]}
        send_frame(ours, Kind.RESULT, {"note": "both", "n": [1, 2]}, raw_parts(tensors))
        frame = recv_frame(theirs)
    assert frame.kind == Kind.RESULT and frame.meta == {"note": "both", "n": [1, 2]}
    assert array_of(frame.tensors["first"]).tolist() == [[0, 1, 2], [3, 4, 5]]
    assert frame.tensors["zweite-é"].datatype == "BYTES" and frame.tensors["zweite-é"].shape == (2,)
    assert array_of(frame.tensors["zweite-é"]).tolist() == [b"a", b""]


def test_a_batch_names_the_outputs_it_wants() -> None:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        send_batch(ours, raw_parts({"x": [np.zeros((1, 2), np.float32)]}), ["probabilities"])
        assert requested_outputs(recv_frame(theirs)) == ["probabilities"]


def test_a_peer_that_dies_mid_frame_is_reported() -> None:
    ours, theirs = socket.socketpair()
    with theirs:
        ours.sendall(HEADER.pack(Kind.RESULT, 0, 0, 10, 0) + b'{"tensor')  # promises 10 bytes, sends 8
        ours.close()
        with pytest.raises(ChannelClosed):
            recv_frame(theirs)
