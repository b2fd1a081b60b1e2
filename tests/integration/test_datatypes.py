"""Every Open Inference Protocol datatype round-trips through a live gateway, edge values included.

Each datatype has its own ONNX Identity model. Values go in raw (tritonclient) and typed
(``contents`` on a plain gRPC stub); the answer is always raw, decoded here by hand. The echo
runtime, which carries bytes ONNX Runtime cannot (non-UTF-8 strings), is checked the same way.
"""

from __future__ import annotations

import json
import queue
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import WORKER_MODES
from tests.support.gateway_process import GatewayProcess
from tests.support.model_repository import ONNX_TYPES, identity_model, save_version

DATATYPES = tuple(ONNX_TYPES)
ROWS, WIDTH = 3, 4
TIMEOUT_S = 20.0
ECHO = "echo"
# Long enough that requests sent together meet in one batch, short enough for sequential tests.
MODEL_YAML = "dynamic_batching:\n  max_queue_delay_microseconds: 20000\n"

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(np.object_),
}

# Where typed values travel in InferTensorContents; FP16 has no field and must go raw.
TYPED_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}

# UTF-8 only: ONNX Runtime string tensors hold text (non-UTF-8 bytes are the echo runtime's test).
TEXT_EDGES = [b"", b"a", "h\u00e9llo w\u00f6rld".encode(), "\u6570\u5b57\U0001f600".encode(), b"x" * 1000,
              b"nul\x00inside", b" padded ", b"\t\n", b"", b"0", b"last", b"\x7f"]  # fmt: skip
RAW_EDGES = [b"\xff\xfe\x00\x80", b"", b"\xc3", b"plain", b"\x00" * 5, b"\xed\xa0\x80"]


def model_name(datatype: str) -> str:
    return f"identity_{datatype.lower()}"


def edge_values(datatype: str) -> np.ndarray[Any, Any]:
    """ROWS x WIDTH values of ``datatype`` that include its extremes."""
    dtype = NUMPY_DTYPES[datatype]
    if datatype == "BOOL":
        flat: list[Any] = [True, False, False, True, True, True, False, False, True, False, True, False]
    elif datatype == "BYTES":
        flat = TEXT_EDGES
    elif dtype.kind == "i":
        info = np.iinfo(dtype)
        flat = [info.min, info.max, 0, -1, 1, info.min + 1, info.max - 1, 42, -42, 7, 100, -100]
    elif dtype.kind == "u":
        info = np.iinfo(dtype)
        flat = [0, info.max, 1, info.max - 1, 1 << (info.bits - 1), 42, 7, 100, 2, 3, 255, 128]
    else:
        finfo = np.finfo(dtype)
        flat = [np.nan, np.inf, -np.inf, -0.0, 0.0, finfo.max, finfo.min, finfo.tiny,
                finfo.smallest_subnormal, finfo.eps, 1.5, -2.25]  # fmt: skip
    values = np.empty(len(flat), dtype=dtype)
    values[:] = flat
    return values.reshape(ROWS, WIDTH)


def decode_raw(datatype: str, shape: list[int], raw: bytes) -> np.ndarray[Any, Any]:
    """Decode one raw output: little-endian elements, or BYTES with 4-byte little-endian lengths."""
    if datatype != "BYTES":
        return np.frombuffer(raw, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
    elements: list[bytes] = []
    offset = 0
    while offset < len(raw):
        (length,) = struct.unpack_from("<I", raw, offset)
        elements.append(raw[offset + 4 : offset + 4 + length])
        offset += 4 + length
    decoded = np.empty(len(elements), dtype=np.object_)
    decoded[:] = elements
    return decoded.reshape(shape)


def assert_same(actual: np.ndarray[Any, Any], expected: np.ndarray[Any, Any]) -> None:
    """Equal shape, dtype and values; fixed-size types bit for bit (NaN, -0.0 included)."""
    assert actual.shape == expected.shape
    assert actual.dtype == expected.dtype
    if expected.dtype == np.object_:
        assert [bytes(item) for item in actual.reshape(-1)] == list(expected.reshape(-1))
    else:
        assert actual.tobytes() == expected.tobytes(), f"{actual!r} != {expected!r}"


def write_echo_model(repository: Path) -> None:
    declaration = {
        "inputs": [
            {"name": "blob", "datatype": "BYTES", "shape": [-1, 3]},
            {"name": "count", "datatype": "UINT64", "shape": [-1, 2]},
        ]
    }
    version_dir = repository / ECHO / "1"
    version_dir.mkdir(parents=True)
    (version_dir / "model.echo.json").write_text(json.dumps(declaration))


@pytest.fixture(scope="module", params=WORKER_MODES)
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    repository = tmp_path_factory.mktemp(f"datatypes-{request.param}")
    for datatype in DATATYPES:
        save_version(repository, model_name(datatype), 1, identity_model(datatype, WIDTH))
        (repository / model_name(datatype) / "model.yaml").write_text(MODEL_YAML)
    write_echo_model(repository)
    with GatewayProcess(repository, "--worker-mode", request.param, "--poll-interval-s", "0") as running:
        yield running


def raw_input(name: str, datatype: str, values: np.ndarray[Any, Any]) -> triton.InferInput:
    tensor = triton.InferInput(name, list(values.shape), datatype)
    tensor.set_data_from_numpy(values)
    return tensor


def typed_request(model: str, tensors: dict[str, tuple[str, np.ndarray[Any, Any]]]) -> Any:
    """A ModelInferRequest with every input in typed ``contents`` (no raw_input_contents)."""
    request = service_pb2.ModelInferRequest(model_name=model, id="typed")
    for name, (datatype, values) in tensors.items():
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(values.shape))
        getattr(tensor.contents, TYPED_FIELDS[datatype]).extend(values.reshape(-1).tolist())
    return request


def decoded_outputs(response: Any) -> dict[str, np.ndarray[Any, Any]]:
    assert len(response.raw_output_contents) == len(response.outputs), "outputs must all travel raw"
    assert all(not output.HasField("contents") for output in response.outputs)
    return {
        output.name: decode_raw(output.datatype, list(output.shape), raw)
        for output, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }


# --- ONNX Identity, one model per datatype ------------------------------------------------------


@pytest.mark.parametrize("datatype", DATATYPES)
def test_raw_round_trip_with_tritonclient(client: triton.InferenceServerClient, datatype: str) -> None:
    values = edge_values(datatype)
    result = client.infer(model_name(datatype), [raw_input("x", datatype, values)], client_timeout=TIMEOUT_S)
    (output,) = result.get_response().outputs
    assert (output.name, output.datatype, list(output.shape)) == ("y", datatype, [ROWS, WIDTH])
    returned = result.as_numpy("y")
    if datatype == "BYTES":
        returned = returned.astype(np.object_)
    assert_same(returned, values)


@pytest.mark.parametrize("datatype", [d for d in DATATYPES if d in TYPED_FIELDS])
def test_typed_contents_come_back_raw(stub: service_pb2_grpc.GRPCInferenceServiceStub, datatype: str) -> None:
    values = edge_values(datatype)
    response = stub.ModelInfer(typed_request(model_name(datatype), {"x": (datatype, values)}), timeout=TIMEOUT_S)
    assert response.id == "typed"
    assert response.model_version == "1"
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("y", datatype, [ROWS, WIDTH])
    assert_same(decoded_outputs(response)["y"], values)


def test_fp16_in_typed_contents_is_refused(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    request = service_pb2.ModelInferRequest(model_name=model_name("FP16"))
    tensor = request.inputs.add(name="x", datatype="FP16", shape=[1, WIDTH])
    tensor.contents.fp32_contents.extend([1.0] * WIDTH)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=TIMEOUT_S)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents" in (caught.value.details() or "")


@pytest.mark.parametrize(("datatype", "value"), [("INT8", 128), ("INT16", -32769), ("UINT8", 256), ("UINT16", 65536)])
def test_typed_values_outside_the_datatype_are_refused(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, datatype: str, value: int
) -> None:
    request = service_pb2.ModelInferRequest(model_name=model_name(datatype))
    tensor = request.inputs.add(name="x", datatype=datatype, shape=[1, WIDTH])
    getattr(tensor.contents, TYPED_FIELDS[datatype]).extend([0, 1, 2, value])
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=TIMEOUT_S)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "'x'" in (caught.value.details() or "")


@pytest.mark.parametrize("datatype", DATATYPES)
def test_requests_batched_together_each_get_their_own_rows(client: triton.InferenceServerClient, datatype: str) -> None:
    model = model_name(datatype)
    edges = edge_values(datatype)
    # Different row counts, and rows in a different order each time, so a mix-up cannot pass.
    requests = {index: np.roll(edges, index, axis=0)[: 1 + index % ROWS] for index in range(6)}
    before = client.get_inference_statistics(model, "1").model_stats[0]
    answers: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    for index, values in requests.items():
        client.async_infer(
            model,
            [raw_input("x", datatype, values)],
            callback=lambda result, error, index=index: answers.put((index, result, error)),
            client_timeout=TIMEOUT_S,
        )
    for _ in requests:
        index, result, error = answers.get(timeout=TIMEOUT_S)
        assert error is None, error
        returned = result.as_numpy("y")
        assert_same(returned.astype(np.object_) if datatype == "BYTES" else returned, requests[index])
    after = client.get_inference_statistics(model, "1").model_stats[0]
    assert after.inference_count - before.inference_count == sum(len(v) for v in requests.values())
    # Sent together within the 20 ms queue delay, they share batches.
    assert after.execution_count - before.execution_count < len(requests)


def test_non_utf8_bytes_fail_in_onnxruntime_and_the_model_keeps_serving(client: triton.InferenceServerClient) -> None:
    model = model_name("BYTES")
    bad = np.array([[b"\xff\xfe", b"a", b"b", b"c"]], dtype=np.object_)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(model, [raw_input("x", "BYTES", bad)], client_timeout=TIMEOUT_S)
    assert str(caught.value.status()) == "StatusCode.INTERNAL"
    assert "UTF-8" in str(caught.value.message())
    good = edge_values("BYTES")
    result = client.infer(model, [raw_input("x", "BYTES", good)], client_timeout=TIMEOUT_S)
    assert_same(result.as_numpy("y").astype(np.object_), good)


# --- the echo runtime -------------------------------------------------------------------------------


def echo_values() -> dict[str, tuple[str, np.ndarray[Any, Any]]]:
    blob = np.empty(len(RAW_EDGES), dtype=np.object_)
    blob[:] = RAW_EDGES
    count = np.array([[0, np.iinfo(np.uint64).max], [1, 1 << 63]], dtype=np.uint64)
    return {"blob": ("BYTES", blob.reshape(2, 3)), "count": ("UINT64", count)}


def test_echo_model_reports_its_runtime(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata(ECHO)
    assert metadata.platform == "echo"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("blob", "BYTES", [-1, 3]),
        ("count", "UINT64", [-1, 2]),
    ]


def test_echo_round_trips_raw_with_tritonclient(client: triton.InferenceServerClient) -> None:
    values = echo_values()
    inputs = [raw_input(name, datatype, array) for name, (datatype, array) in values.items()]
    result = client.infer(ECHO, inputs, client_timeout=TIMEOUT_S)
    assert [o.name for o in result.get_response().outputs] == list(values)
    assert_same(result.as_numpy("blob").astype(np.object_), values["blob"][1])
    assert_same(result.as_numpy("count"), values["count"][1])


def test_echo_round_trips_typed_contents(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    values = echo_values()
    request = typed_request(ECHO, values)
    request.outputs.add(name="count")
    request.outputs.add(name="blob")
    response = stub.ModelInfer(request, timeout=TIMEOUT_S)
    assert [o.name for o in response.outputs] == ["count", "blob"]  # requested order
    outputs = decoded_outputs(response)
    assert_same(outputs["blob"], values["blob"][1])
    assert_same(outputs["count"], values["count"][1])
