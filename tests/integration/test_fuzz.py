"""A live gateway fed random and mutated requests: it never answers UNKNOWN or INTERNAL, never hangs,
keeps no memory, and the valid requests sent between them keep succeeding.

Hypothesis builds ``ModelInferRequest`` messages from the pieces a client controls (model name and
version, tensor names, datatypes, shapes, typed and raw contents, outputs, parameters, the pin
header), flips and cuts the bytes of valid requests, and makes up whole bodies; each goes through a
unary ``ModelInfer`` and, for some, a ``ModelStreamInfer`` stream. Derandomized, so a failure
reproduces; bounded to about half a minute on two cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2

from tests.support.gateway_process import GatewayProcess
from tests.support.model_repository import copy_digits

TIMEOUT_S = 10.0
# What a gateway may answer to a request it cannot serve; anything else (UNKNOWN, INTERNAL, a deadline
# that a small request should never meet) is a defect.
ACCEPTABLE = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
}
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
             "FP64", "BYTES", "BF16", "fp32", "", "FP32\x00"]  # fmt: skip
TYPED_FIELDS = ["bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                "fp32_contents", "fp64_contents", "bytes_contents"]  # fmt: skip


# Stream answers come as their batches finish, not in order: the valid ones are found by id.
_VALID_ID = "\x00valid-"


def identity(data: bytes) -> bytes:
    return data


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    repository = copy_digits(tmp_path_factory.mktemp("fuzz") / "repository").parent
    with GatewayProcess(repository, "--max-message-bytes", str(1 << 20)) as running:
        yield running


@pytest.fixture(scope="module")
def channel(gateway: GatewayProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(gateway.address) as opened:
        yield opened


texts = st.one_of(
    st.sampled_from(["digits", "input", "label", "probabilities", "1", "2", "", "²", "9" * 30]),
    st.text(max_size=40),
)
shapes = st.lists(st.one_of(st.integers(-3, 70), st.sampled_from([2**31, 2**62, -(2**63)])), max_size=4)


@st.composite
def infer_requests(draw: st.DrawFn) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(
        model_name=draw(st.one_of(st.just("digits"), texts)),
        model_version=draw(st.one_of(st.sampled_from(["", "1", "2", "3"]), texts)),
        id=draw(texts),
    )
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 3))):
        tensor = request.inputs.add(
            name=draw(st.one_of(st.just("input"), texts)), datatype=draw(st.sampled_from(DATATYPES))
        )
        tensor.shape.extend(draw(shapes))
        if raw:
            request.raw_input_contents.append(draw(st.binary(max_size=600)))
        else:
            field = draw(st.sampled_from(TYPED_FIELDS))
            if field == "bytes_contents":
                values: list[object] = draw(st.lists(st.binary(max_size=8), max_size=70))
            elif field == "bool_contents":
                values = draw(st.lists(st.booleans(), max_size=70))
            elif field.startswith(("fp", "float")):
                values = draw(st.lists(st.floats(width=32), max_size=70))
            else:
                unsigned = field.startswith("uint")
                bits = 64 if "64" in field else 32
                low, high = (0, 2**bits - 1) if unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
                values = draw(st.lists(st.integers(low, high), max_size=70))
            getattr(tensor.contents, field).extend(values)
    if draw(st.booleans()) and raw:  # a count of raw contents that does not match the inputs
        request.raw_input_contents.append(draw(st.binary(max_size=16)))
    for name in draw(st.lists(st.one_of(st.sampled_from(["label", "probabilities"]), texts), max_size=2)):
        output = request.outputs.add(name=name)
        if draw(st.booleans()):
            output.parameters["classification"].int64_param = draw(st.integers(-5, 5))
    if draw(st.booleans()):
        request.parameters[draw(texts)].string_param = draw(texts)
    return request


def mutated(body: bytes, data: st.DataObject) -> bytes:
    """A valid body with bytes flipped, cut short or spliced: what a broken client or proxy sends."""
    kind = data.draw(st.sampled_from(["flip", "cut", "splice"]))
    if kind == "cut":
        return body[: data.draw(st.integers(0, max(len(body) - 1, 0)))]
    position = data.draw(st.integers(0, max(len(body) - 1, 0)))
    if kind == "flip":
        return body[:position] + bytes([body[position] ^ data.draw(st.integers(1, 255))]) + body[position + 1 :]
    return body[:position] + data.draw(st.binary(min_size=1, max_size=32)) + body[position:]


def valid_body(pixels: npt.NDArray[np.float32], request_id: str = "") -> bytes:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 64])
    request = service_pb2.ModelInferRequest(
        model_name="digits", id=request_id, inputs=[tensor], raw_input_contents=[pixels.tobytes()]
    )
    return bytes(request.SerializeToString())


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


class Fuzzer:
    def __init__(self, channel: grpc.Channel, pixels: npt.NDArray[np.float32], pin: str = "turnout-pin") -> None:
        self.unary = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", request_serializer=identity, response_deserializer=identity
        )
        self.stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=identity,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )
        self.valid = valid_body(pixels)
        self._pixels = pixels
        self.pin = pin
        self.sent = 0

    def valid_with_id(self, suffix: str) -> bytes:
        return valid_body(self._pixels, f"{_VALID_ID}{suffix}")

    def send(self, body: bytes, header: str | None = None, on_stream: bool = False) -> None:
        metadata = ((self.pin, header),) if header is not None else None
        try:
            self.unary(body, timeout=TIMEOUT_S, metadata=metadata)
        except grpc.RpcError as error:
            assert error.code() in ACCEPTABLE, (error.code(), error.details(), body[:200])
        if on_stream:  # the odd body between two valid ones: all three answered; the valid ones served
            bodies = [self.valid_with_id("before"), body, self.valid_with_id("after")]
            answers = list(self.stream(iter(bodies), timeout=TIMEOUT_S, metadata=metadata))
            assert len(answers) == 3, answers
            by_id = {answer.infer_response.id: answer.error_message for answer in answers}
            assert by_id.get(f"{_VALID_ID}before") == "" and by_id.get(f"{_VALID_ID}after") == "", answers
        self.sent += 1
        if self.sent % 10 == 0:  # valid requests between them keep succeeding
            self.unary(self.valid, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def fuzzer(channel: grpc.Channel, digits_pixels: npt.NDArray[np.float32]) -> Fuzzer:
    return Fuzzer(channel, digits_pixels[:1])


FUZZ = settings(
    max_examples=1000,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(request=infer_requests(), on_stream=st.booleans())
def test_random_requests(fuzzer: Fuzzer, request: service_pb2.ModelInferRequest, on_stream: bool) -> None:
    fuzzer.send(bytes(request.SerializeToString()), on_stream=on_stream)


@FUZZ
@given(data=st.data())
def test_mutated_valid_requests(fuzzer: Fuzzer, data: st.DataObject) -> None:
    fuzzer.send(mutated(fuzzer.valid, data), on_stream=data.draw(st.booleans()))


@FUZZ
@given(
    body=st.binary(max_size=300),
    header=st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)),
)
def test_random_bodies_and_pin_headers(fuzzer: Fuzzer, body: bytes, header: str | None) -> None:
    fuzzer.send(body, header=header)


def test_memory_is_back_where_it_started_and_the_gateway_serves(
    gateway: GatewayProcess, channel: grpc.Channel, digits_pixels: npt.NDArray[np.float32]
) -> None:
    # Runs after the fuzzing above (file order): send the same mix again and compare.
    assert gateway.process is not None
    fuzzer = Fuzzer(channel, digits_pixels[:1])
    rng = np.random.default_rng(7)
    before = rss_kib(gateway.process.pid)
    for index in range(3_000):
        body = bytes(rng.integers(0, 256, size=int(rng.integers(0, 200)), dtype=np.uint8).tobytes())
        fuzzer.send(body if index % 2 else fuzzer.valid[: int(rng.integers(0, len(fuzzer.valid)))])
    grown_kib = rss_kib(gateway.process.pid) - before
    assert grown_kib < 8 * 1024, f"RSS grew {grown_kib} KiB over 3,000 bad requests"
    assert "Traceback" not in gateway.log(), gateway.log()[-3000:]
