"""End to end with the real ``tritonclient.grpc``: every call a Triton client makes, against a live gateway.

Each test runs once against a gateway with worker processes and once against one running models
in-process. Outputs are compared with ``onnxruntime`` run directly on the same model file.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import queue
import re
import shutil
from collections.abc import Iterator
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import WORKER_MODES
from tests.support.gateway_process import REPOSITORY_KEY, REPOSITORY_KEY_FLAG, GatewayProcess
from tests.support.model_repository import EXAMPLES, SETTINGS_FORMATS, copy_digits, use_settings_format

Pixels = npt.NDArray[np.float32]
Expected = dict[str, np.ndarray[Any, Any]]

MODEL = "digits"
# A second copy of digits (version 1 only) that the load/unload test may take down and bring back.
SPARE = "spare"
TIMEOUT_S = 20.0
# Rows may be batched with other requests, which can move the last bits of a float sum.
RTOL, ATOL = 1e-5, 1e-6  # probabilities: onnxruntime in the worker vs here, batched vs alone


@pytest.fixture(scope="module", params=SETTINGS_FORMATS)
def settings_format(request: pytest.FixtureRequest) -> str:
    """Each test runs against models described by Turnout's model.yaml and by Triton's config.pbtxt."""
    return str(request.param)


@pytest.fixture(scope="module", params=WORKER_MODES)
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, settings_format: str
) -> Iterator[GatewayProcess]:
    repository = tmp_path_factory.mktemp(f"e2e-{request.param}-{settings_format.replace('.', '-')}")
    copy_digits(repository)
    shutil.copytree(EXAMPLES / "digits", repository / SPARE, ignore=shutil.ignore_patterns("2", "README.md"))
    use_settings_format(repository, settings_format)
    flags = ("--worker-mode", request.param, "--poll-interval-s", "0", REPOSITORY_KEY_FLAG)
    with GatewayProcess(repository, *flags) as running:
        yield running


def test_the_repository_describes_its_models_in_one_format(gateway: GatewayProcess, settings_format: str) -> None:
    files = {path.name for path in gateway.repository.glob("*/*") if path.is_file()}
    assert files == {settings_format}


@pytest.fixture(scope="module")
def direct(gateway: GatewayProcess) -> dict[str, ort.InferenceSession]:
    """onnxruntime sessions on the very files the gateway serves, by version."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return {
        version: ort.InferenceSession(
            str(gateway.repository / MODEL / version / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        for version in ("1", "2")
    }


def digits_inputs(pixels: Pixels) -> list[triton.InferInput]:
    tensor = triton.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    return [tensor]


def run_direct(direct: dict[str, ort.InferenceSession], version: str, pixels: Pixels) -> Expected:
    label, probabilities = direct[version].run(["label", "probabilities"], {"input": pixels})
    return {"label": label, "probabilities": probabilities}


def assert_matches(result: triton.InferResult, expected: Expected) -> None:
    np.testing.assert_array_equal(result.as_numpy("label"), expected["label"])
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected["probabilities"], rtol=RTOL, atol=ATOL)


def status_of(error: InferenceServerException) -> str:
    return str(error.status())


# --- health and metadata ---------------------------------------------------------------------


def test_server_is_live_and_ready(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()


def test_model_readiness_by_version(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, "1")
    assert client.is_model_ready(MODEL, "2")
    assert not client.is_model_ready(MODEL, "3")
    assert not client.is_model_ready("no-such-model")


def test_server_metadata_names_turnout_and_its_extensions(client: triton.InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata.name == "turnout"
    assert metadata.version == importlib.metadata.version("turnout")  # the installed package's, not a literal
    assert {"model_repository", "model_configuration", "statistics"} <= set(metadata.extensions)


def test_model_metadata_matches_the_onnx_signature(
    client: triton.InferenceServerClient, direct: dict[str, ort.InferenceSession]
) -> None:
    metadata = client.get_model_metadata(MODEL)
    assert metadata.name == MODEL
    assert list(metadata.versions) == ["1", "2"]
    assert metadata.platform == "onnxruntime_onnx"
    inputs = [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs]
    outputs = [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs]
    assert inputs == [("input", "FP32", [-1, 64])]
    assert outputs == [("label", "INT64", [-1]), ("probabilities", "FP32", [-1, 10])]
    assert [t.name for t in metadata.inputs] == [arg.name for arg in direct["2"].get_inputs()]
    assert [t.name for t in metadata.outputs] == [arg.name for arg in direct["2"].get_outputs()]


@pytest.mark.parametrize("version", ["1", "2"])
def test_model_config_is_triton_shaped(
    client: triton.InferenceServerClient, gateway: GatewayProcess, version: str
) -> None:
    config = client.get_model_config(MODEL, version).config
    artifact = gateway.repository / MODEL / version / "model.onnx"
    assert config.name == MODEL
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == 64
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("input", model_config_pb2.TYPE_FP32, [64])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("label", model_config_pb2.TYPE_INT64, []),
        ("probabilities", model_config_pb2.TYPE_FP32, [10]),
    ]
    assert config.HasField("dynamic_batching")
    assert config.dynamic_batching.max_queue_delay_microseconds == 0
    assert config.dynamic_batching.default_queue_policy.max_queue_size == 1024
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    assert config.parameters["artifact_sha256"].string_value == hashlib.sha256(artifact.read_bytes()).hexdigest()


def test_repository_index_lists_every_version_ready(client: triton.InferenceServerClient) -> None:
    index = client.get_model_repository_index()
    states = {(m.name, m.version): m.state for m in index.models}
    assert states == {(MODEL, "1"): "READY", (MODEL, "2"): "READY", (SPARE, "1"): "READY"}


# --- inference ---------------------------------------------------------------------------------


@pytest.mark.parametrize("rows", [1, 32])
@pytest.mark.parametrize(("pinned", "answering"), [("", "2"), ("1", "1")])
def test_infer_matches_onnxruntime(
    client: triton.InferenceServerClient,
    direct: dict[str, ort.InferenceSession],
    digits_pixels: Pixels,
    rows: int,
    pinned: str,
    answering: str,
) -> None:
    pixels = digits_pixels[7 : 7 + rows]
    result = client.infer(
        MODEL, digits_inputs(pixels), model_version=pinned, request_id=f"req-{rows}", client_timeout=TIMEOUT_S
    )
    response = result.get_response()
    assert response.model_name == MODEL
    assert response.model_version == answering
    assert response.id == f"req-{rows}"
    assert [o.name for o in response.outputs] == ["label", "probabilities"]
    assert result.as_numpy("label").shape == (rows,)
    assert result.as_numpy("probabilities").shape == (rows, 10)
    assert_matches(result, run_direct(direct, answering, pixels))


def test_infer_returns_only_the_requested_output(
    client: triton.InferenceServerClient, direct: dict[str, ort.InferenceSession], digits_pixels: Pixels
) -> None:
    pixels = digits_pixels[:4]
    result = client.infer(
        MODEL,
        digits_inputs(pixels),
        outputs=[triton.InferRequestedOutput("probabilities")],
        client_timeout=TIMEOUT_S,
    )
    assert [o.name for o in result.get_response().outputs] == ["probabilities"]
    assert result.as_numpy("label") is None
    expected = run_direct(direct, "2", pixels)["probabilities"]
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, rtol=RTOL, atol=ATOL)


def test_async_infer_answers_every_callback(
    client: triton.InferenceServerClient, direct: dict[str, ort.InferenceSession], digits_pixels: Pixels
) -> None:
    answers: queue.Queue[tuple[int, Any, Any]] = queue.Queue()
    slices = {index: digits_pixels[index * 5 : index * 5 + 1 + index % 4] for index in range(12)}
    for index, pixels in slices.items():
        client.async_infer(
            MODEL,
            digits_inputs(pixels),
            callback=lambda result, error, index=index: answers.put((index, result, error)),
            request_id=str(index),
            client_timeout=TIMEOUT_S,
        )
    received = [answers.get(timeout=TIMEOUT_S) for _ in slices]
    assert sorted(index for index, _, _ in received) == sorted(slices)
    for index, result, error in received:
        assert error is None, error
        assert result.get_response().id == str(index)
        assert_matches(result, run_direct(direct, "2", slices[index]))


def test_stream_answers_each_request_with_its_id(
    gateway: GatewayProcess, direct: dict[str, ort.InferenceSession], digits_pixels: Pixels
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    requests = {
        f"stream-{index}": ("1" if index % 3 == 0 else "", digits_pixels[index : index + 1 + index % 5])
        for index in range(60)
    }
    with triton.InferenceServerClient(gateway.address) as streaming:
        streaming.start_stream(callback=lambda result, error: answers.put((result, error)))
        for request_id, (version, pixels) in requests.items():
            streaming.async_stream_infer(MODEL, digits_inputs(pixels), model_version=version, request_id=request_id)
        received = [answers.get(timeout=TIMEOUT_S) for _ in requests]
        streaming.stop_stream()
    seen = set()
    for result, error in received:
        assert error is None, error
        response = result.get_response()
        version, pixels = requests[response.id]
        assert response.model_version == (version or "2")
        assert_matches(result, run_direct(direct, version or "2", pixels))
        seen.add(response.id)
    assert seen == set(requests)


def test_statistics_count_what_was_sent(client: triton.InferenceServerClient, digits_pixels: Pixels) -> None:
    def snapshot() -> Any:
        (stats,) = client.get_inference_statistics(MODEL, "2").model_stats
        return stats

    before = snapshot()
    batch_sizes = [1, 3, 32, 2]
    for rows in batch_sizes:
        client.infer(MODEL, digits_inputs(digits_pixels[:rows]), client_timeout=TIMEOUT_S)
    after = snapshot()
    assert (after.name, after.version) == (MODEL, "2")
    assert after.inference_stats.success.count - before.inference_stats.success.count == len(batch_sizes)
    assert after.inference_stats.fail.count == before.inference_stats.fail.count
    assert after.inference_count - before.inference_count == sum(batch_sizes)
    assert after.execution_count - before.execution_count == len(batch_sizes)  # sent one at a time
    assert after.inference_stats.success.ns > before.inference_stats.success.ns
    assert after.last_inference >= before.last_inference > 0


# --- errors and the repository --------------------------------------------------------------


def test_unknown_model_or_version_is_not_found(client: triton.InferenceServerClient, digits_pixels: Pixels) -> None:
    for model, version in (("no-such-model", ""), (MODEL, "9")):
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, digits_inputs(digits_pixels[:1]), model_version=version, client_timeout=TIMEOUT_S)
        assert status_of(caught.value) == "StatusCode.NOT_FOUND", caught.value.message()


def test_unload_then_load_model(
    client: triton.InferenceServerClient, direct: dict[str, ort.InferenceSession], digits_pixels: Pixels
) -> None:
    pixels = digits_pixels[:2]
    assert client.is_model_ready(SPARE)
    client.unload_model(SPARE, headers=REPOSITORY_KEY)

    assert not client.is_model_ready(SPARE)
    assert not client.is_model_ready(SPARE, "1")
    for version in ("", "1"):
        with pytest.raises(InferenceServerException) as caught:
            client.infer(SPARE, digits_inputs(pixels), model_version=version, client_timeout=TIMEOUT_S)
        assert status_of(caught.value) == "StatusCode.UNAVAILABLE", caught.value.message()
    index = {(m.name, m.version): m.state for m in client.get_model_repository_index().models}
    assert index[(SPARE, "1")] == "UNAVAILABLE"
    assert index[(MODEL, "2")] == "READY"
    assert client.is_model_ready(MODEL)  # the other model never noticed

    client.load_model(SPARE, headers=REPOSITORY_KEY)
    assert client.is_model_ready(SPARE)
    assert client.is_model_ready(SPARE, "1")
    result = client.infer(SPARE, digits_inputs(pixels), client_timeout=TIMEOUT_S)
    assert result.get_response().model_version == "1"
    assert_matches(result, run_direct(direct, "1", pixels))


def test_load_of_a_model_not_in_the_repository_fails(client: triton.InferenceServerClient) -> None:
    with pytest.raises(InferenceServerException) as caught:
        client.load_model("no-such-model", headers=REPOSITORY_KEY)
    assert status_of(caught.value) == "StatusCode.NOT_FOUND", caught.value.message()


def test_gateway_logs_no_errors(gateway: GatewayProcess) -> None:
    assert " ERROR " not in gateway.log(), gateway.log()


def test_the_start_up_heap_is_frozen_once_serving(gateway: GatewayProcess) -> None:
    """Full garbage collections must not walk the modules and models loaded at start-up."""
    frozen = re.search(r"(\d+) start-up objects frozen out of garbage collection", gateway.log())
    assert frozen is not None and int(frozen[1]) > 10_000, gateway.log()
