"""The pure parts of the limits: stream slots, the in-flight bound, elements per tensor, and typed or
BYTES inputs whose per-element work waits for the model's checks."""

from __future__ import annotations

import struct
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.edge.stream_slots import StreamSlots
from gateway.errors import InvalidArgument, ResourceExhausted
from gateway.serving.admission import InFlightLimit
from gateway.serving.inference_types import InferRequest
from gateway.serving.request_checks import checked_inputs
from gateway.serving.tensors import finished_inputs, tensor_from_raw, tensor_from_values
from gateway.settings import Settings
from runtimes.contract import Signature, TensorSpec

NO_CAP = 1 << 40
SIGNATURE = Signature(inputs=(TensorSpec("x", "FP32", (-1, 4)),), outputs=(TensorSpec("y", "FP32", (-1, 4)),))
TEXT = Signature(inputs=(TensorSpec("s", "BYTES", (-1, 2)),), outputs=(TensorSpec("y", "BYTES", (-1, 2)),))


# --- streams -------------------------------------------------------------------------------------


def test_streams_beyond_the_total_are_refused_naming_the_flag() -> None:
    slots = StreamSlots(total=2, per_connection=8)
    slots.take("ipv4:127.0.0.1:1000")
    slots.take("ipv4:127.0.0.1:1001")
    with pytest.raises(ResourceExhausted, match=r"2 streams are open .*--max-streams 2"):
        slots.take("ipv4:127.0.0.1:1002")
    slots.give_back("ipv4:127.0.0.1:1000")
    slots.take("ipv4:127.0.0.1:1002")
    assert slots.open == 2


def test_one_connection_is_bounded_while_others_still_open_streams() -> None:
    slots = StreamSlots(total=8, per_connection=2)
    for _ in range(2):
        slots.take("ipv6:[::1]:5000")
    with pytest.raises(ResourceExhausted, match=r"--max-streams-per-connection 2"):
        slots.take("ipv6:[::1]:5000")
    slots.take("ipv6:[::1]:5001")
    assert slots.open == 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), max_size=60))
def test_open_streams_never_exceed_either_bound(steps: list[tuple[bool, int]]) -> None:
    slots = StreamSlots(total=5, per_connection=2)
    held: list[str] = []
    for opening, connection in steps:
        peer = f"ipv4:127.0.0.1:{connection}"
        if opening:
            try:
                slots.take(peer)
                held.append(peer)
            except ResourceExhausted:
                assert len(held) == 5 or held.count(peer) == 2, "refused only at a bound"
        elif peer in held:
            slots.give_back(peer)
            held.remove(peer)
        assert slots.open == len(held) <= 5
        assert all(held.count(p) <= 2 for p in held)


# --- requests in flight --------------------------------------------------------------------------


def test_requests_beyond_the_in_flight_limit_are_refused_until_one_leaves() -> None:
    limit = InFlightLimit(3)
    for _ in range(3):
        limit.enter()
    with pytest.raises(ResourceExhausted, match=r"3 requests are in flight .*--max-in-flight"):
        limit.enter()
    assert limit.count == 3
    limit.leave()
    limit.enter()
    assert limit.count == 3


def test_threads_entering_and_leaving_never_hold_more_than_the_limit() -> None:
    limit = InFlightLimit(4)
    held, most, refused = [0], [0], [0]
    lock = threading.Lock()

    def churn() -> None:
        for _ in range(2000):
            try:
                limit.enter()
            except ResourceExhausted:
                with lock:
                    refused[0] += 1
                continue
            with lock:
                held[0] += 1
                most[0] = max(most[0], held[0])
            with lock:
                held[0] -= 1
            limit.leave()

    threads = [threading.Thread(target=churn) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] <= 4 and limit.count == 0


def test_an_in_flight_limit_is_at_least_one_as_0_means_none_to_the_dataplane() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        InFlightLimit(0)


# --- elements per tensor, and the per-element work after the checks -------------------------------


def test_a_tensor_with_more_elements_than_the_cap_is_refused_before_its_bytes_are_looked_at() -> None:
    with pytest.raises(ResourceExhausted, match=r"has 1000000 elements, .* limit of 999999 .*--max-tensor-elements"):
        tensor_from_values("x", "FP32", [1000, 1000], [0.0], 999_999)
    with pytest.raises(ResourceExhausted, match="--max-tensor-elements"):
        tensor_from_raw("x", "FP32", (1000, 1000), b"", 999_999)


class CountingValues(list[float]):
    """Typed contents that count how often their values are read one by one."""

    reads = 0

    def __iter__(self) -> Any:
        CountingValues.reads += 1
        return super().__iter__()


def request_of(*tensors: Any) -> InferRequest:
    request = InferRequest("m", "", "id", list(tensors))
    request.unfinished = any(tensor.finish is not None for tensor in tensors)
    return request


def test_typed_values_of_a_shape_the_model_refuses_are_never_converted() -> None:
    values = CountingValues([1.0] * 32)
    CountingValues.reads = 0
    request = request_of(tensor_from_values("x", "FP32", [1, 32], values, NO_CAP))
    with pytest.raises(InvalidArgument, match=r"shape \[1, 32\], expected \[-1, 4\]"):
        checked_inputs(request, SIGNATURE, 8)
    assert CountingValues.reads == 0


def test_typed_values_that_fit_are_converted_once_after_the_checks() -> None:
    request = request_of(tensor_from_values("x", "FP32", [2, 4], list(range(8)), NO_CAP))
    inputs, rows = checked_inputs(request, SIGNATURE, 8)
    inputs = finished_inputs(request.inputs, inputs)
    assert rows == 2 and bytes(inputs["x"].data) == struct.pack("<8f", *range(8))
    assert request.inputs[0].finish is None and request.inputs[0].raw is inputs["x"]


def test_values_that_do_not_fit_the_datatype_are_refused_when_converted() -> None:
    request = request_of(tensor_from_values("x", "INT8", [1, 2], [1, 300], NO_CAP))
    with pytest.raises(InvalidArgument, match="values do not fit INT8"):
        finished_inputs(request.inputs, {"x": request.inputs[0].raw})


def length_prefixed(*elements: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(element)) + element for element in elements)


def test_raw_bytes_too_short_for_their_shape_are_refused_without_walking_them() -> None:
    with pytest.raises(InvalidArgument, match="needs at least 40 bytes"):
        tensor_from_raw("s", "BYTES", (5, 2), length_prefixed(b"a", b"b"), NO_CAP)


def test_raw_bytes_are_walked_only_once_the_shape_fits() -> None:
    broken = b"\xff\xff\xff\xff" * 2  # each element claims 4 GiB
    refused = request_of(tensor_from_raw("s", "BYTES", (1, 2), broken, NO_CAP))
    assert refused.unfinished
    inputs, _ = checked_inputs(refused, TEXT, 8)  # the shape fits: only now are the elements walked
    with pytest.raises(InvalidArgument, match="BYTES raw contents element 0 claims"):
        finished_inputs(refused.inputs, inputs)
    good = request_of(tensor_from_raw("s", "BYTES", (1, 2), length_prefixed(b"ab", b""), NO_CAP))
    inputs, _ = checked_inputs(good, TEXT, 8)
    assert bytes(finished_inputs(good.inputs, inputs)["s"].data) == length_prefixed(b"ab", b"")


# --- settings --------------------------------------------------------------------------------------


def test_streams_default_to_half_the_server_threads() -> None:
    assert Settings().stream_limit == 64
    assert Settings(grpc_threads=10).stream_limit == 5
    assert Settings(grpc_threads=10, max_streams=9).stream_limit == 9


def test_streams_may_not_take_every_server_thread() -> None:
    with pytest.raises(ValidationError, match=r"max_streams \(16\) must be below grpc_threads \(16\)"):
        Settings(grpc_threads=16, max_streams=16)
