"""Bodies that are not protobuf messages: INVALID_ARGUMENT naming the message type, on a call and in-band
on a stream, one log line a minute, no memory kept, and the gateway serving on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.support.gateway_process import GatewayProcess
from tests.support.model_repository import copy_digits

TIMEOUT_S = 20.0
# Field 1 (a string) claiming 100 bytes where 3 follow, and a varint that never ends.
NOT_MESSAGES = (b"\x0a\x64abc", b"\x08" + b"\xff" * 12, b"\xff\xff\xff\xff")


def identity(data: bytes) -> bytes:
    return data


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    repository = copy_digits(tmp_path_factory.mktemp("undecodable") / "repository").parent
    with GatewayProcess(repository, "--worker-mode", "inprocess") as running:
        yield running


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def good_request(pixels: npt.NDArray[np.float32], request_id: str = "") -> service_pb2.ModelInferRequest:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=[1, 64])
    return service_pb2.ModelInferRequest(
        model_name="digits", id=request_id, inputs=[tensor], raw_input_contents=[pixels.tobytes()]
    )


@pytest.mark.parametrize(
    ("method", "on_control_listener"),
    [
        ("/inference.GRPCInferenceService/ModelInfer", False),
        ("/inference.GRPCInferenceService/ModelMetadata", False),
        ("/turnout.v1.Rollouts/Rollback", True),
        ("/inference.GRPCInferenceService/RepositoryModelLoad", True),
    ],
)
def test_a_body_that_is_no_message_is_invalid_argument(
    gateway: GatewayProcess, method: str, on_control_listener: bool
) -> None:
    with grpc.insecure_channel(gateway.control_address if on_control_listener else gateway.address) as channel:
        call = channel.unary_unary(method, request_serializer=identity, response_deserializer=identity)
        for body in NOT_MESSAGES:
            with pytest.raises(grpc.RpcError) as refused:
                call(body, timeout=TIMEOUT_S)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert "is not a valid" in refused.value.details() and f"({len(body)} bytes)" in refused.value.details()


def test_on_a_stream_it_is_answered_in_band_and_the_stream_serves_on(
    gateway: GatewayProcess, digits_pixels: npt.NDArray[np.float32]
) -> None:
    with grpc.insecure_channel(gateway.address) as channel:
        stream = channel.stream_stream(
            "/inference.GRPCInferenceService/ModelStreamInfer",
            request_serializer=identity,
            response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
        )
        bodies = [NOT_MESSAGES[0], good_request(digits_pixels[:1], "after").SerializeToString()]
        refused, answered = list(stream(iter(bodies), timeout=TIMEOUT_S))
    assert "is not a valid inference.ModelInferRequest message" in refused.error_message
    assert (answered.error_message, answered.infer_response.id) == ("", "after")


def test_ten_thousand_keep_no_memory_and_log_one_line(
    gateway: GatewayProcess, digits_pixels: npt.NDArray[np.float32]
) -> None:
    assert gateway.process is not None
    pid = gateway.process.pid
    with grpc.insecure_channel(gateway.address) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer", request_serializer=identity, response_deserializer=identity
        )

        def refuse(count: int) -> None:
            for index in range(count):
                with pytest.raises(grpc.RpcError):
                    call(NOT_MESSAGES[index % len(NOT_MESSAGES)], timeout=TIMEOUT_S)

        refuse(1_000)  # warm: thread pools, allocator arenas
        before = rss_kib(pid)
        refuse(10_000)
        grown_kib = rss_kib(pid) - before
        infer = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer
        assert infer(good_request(digits_pixels[:1]), timeout=TIMEOUT_S).model_name == "digits"
    # grpcio's own failed-deserialization path kept about 19 KB a request: 190 MB here.
    assert grown_kib < 8 * 1024, f"RSS grew {grown_kib} KiB over 10,000 undecodable requests"
    said = [line for line in gateway.log().splitlines() if "refused a request that does not decode" in line]
    assert len([line for line in said if "inference.Model" in line]) == 1, "once a minute for the service"
    assert "Traceback" not in gateway.log() and "Exception deserializing" not in gateway.log()
    assert os.path.exists(f"/proc/{pid}")
