"""Every error a caller or a bad repository can cause: its gRPC status, a message naming the problem,
and a gateway that still serves a good request right after.

One gateway (per worker mode) serves a repository holding the good digits model next to
deliberately broken ones; the size-limit test starts its own gateway with a small
``--max-message-bytes``.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from gateway.headers import PIN
from gateway.wire.turnout.v1 import rollouts_pb2 as pb
from gateway.wire.turnout.v1 import rollouts_pb2_grpc as pb_grpc
from tests.integration.conftest import WORKER_MODES
from tests.support.gateway_process import REPOSITORY_KEY, REPOSITORY_KEY_FLAG, GatewayProcess
from tests.support.model_repository import (
    EXAMPLES,
    copy_digits,
    identity_model,
    save_version,
    slow_model,
    slow_rounds_for,
)
from tests.support.rpc_errors import expect_client_error, expect_rpc_error

Pixels = npt.NDArray[np.float32]

MODEL = "digits"
TIMEOUT_S = 20.0
# digits version 1 good, version 2 random bytes: one version fails, the other serves.
BROKEN = "broken"
# Only a corrupted artifact.
CORRUPT = "corrupt"
# An artifact whose input is `x` FP32 [-1, 4] while model.yaml declares `input` FP32 [64].
MISMATCH = "mismatch"
# A model.yaml that is not YAML, and one that is YAML with a misspelt and an out-of-range setting.
BAD_YAML = "bad_yaml"
BAD_SETTINGS = "bad_settings"
# A copy of digits version 1 that a test unloads and loads again.
SPARE = "spare"
# The slow model with room for one queued request.
SLOW = "slow"
SLOW_S = 0.3  # how long each slow request computes, so that the next ones find the queue full

DIGITS_YAML = (EXAMPLES / "digits" / "model.yaml").read_text()
MISMATCH_YAML = """
max_batch_size: 8
inputs:
  - {name: input, datatype: FP32, dims: [64]}
"""
SLOW_YAML = """
max_batch_size: 8
dynamic_batching:
  max_queue_delay_microseconds: 0
  max_queue_size: 1
"""


def _build_repository(root: Path) -> Path:
    copy_digits(root)
    shutil.copytree(EXAMPLES / "digits", root / BROKEN)
    (root / BROKEN / "2" / "model.onnx").write_bytes(np.random.default_rng(2).bytes(4096))
    corrupt = root / CORRUPT / "1"
    corrupt.mkdir(parents=True)
    (corrupt / "model.onnx").write_bytes(np.random.default_rng(1).bytes(4096))
    save_version(root, MISMATCH, 1, identity_model("FP32"))
    (root / MISMATCH / "model.yaml").write_text(MISMATCH_YAML)
    shutil.copytree(EXAMPLES / "digits" / "1", root / BAD_YAML / "1")
    (root / BAD_YAML / "model.yaml").write_text("max_batch_size: [64\ndynamic_batching: {")
    shutil.copytree(EXAMPLES / "digits" / "1", root / BAD_SETTINGS / "1")
    (root / BAD_SETTINGS / "model.yaml").write_text("max_batch_sise: 8\ninstance_count: 0\n")
    shutil.copytree(EXAMPLES / "digits" / "1", root / SPARE / "1")
    (root / SPARE / "model.yaml").write_text(DIGITS_YAML)
    save_version(root, SLOW, 1, slow_model())
    (root / SLOW / "model.yaml").write_text(SLOW_YAML)
    return root


@pytest.fixture(scope="module", params=WORKER_MODES)
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    repository = _build_repository(tmp_path_factory.mktemp(f"errors-{request.param}"))
    flags = ("--worker-mode", request.param, "--poll-interval-s", "0", REPOSITORY_KEY_FLAG)
    with GatewayProcess(repository, *flags) as running:
        yield running


# --- helpers -------------------------------------------------------------------------------------


def tensor(name: str, array: np.ndarray[Any, Any], datatype: str) -> triton.InferInput:
    item = triton.InferInput(name, list(array.shape), datatype)
    item.set_data_from_numpy(array)
    return item


def assert_serves(client: triton.InferenceServerClient, pixels: Pixels, model: str = MODEL) -> None:
    """A good request right after an error: the digits answer for real rows."""
    rows = pixels[:3]
    result = client.infer(model, [tensor("input", rows, "FP32")], client_timeout=TIMEOUT_S)
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None and probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)
    labels = result.as_numpy("label")
    assert labels is not None and labels.shape == (3,) and set(labels.tolist()) <= set(range(10))


def raw_request(model: str = MODEL, **fields: Any) -> Any:
    return service_pb2.ModelInferRequest(model_name=model, **fields)


def raw_input(name: str, shape: Sequence[int], datatype: str = "FP32", **fields: Any) -> Any:
    return service_pb2.ModelInferRequest.InferInputTensor(name=name, datatype=datatype, shape=shape, **fields)


def index_by_version(client: triton.InferenceServerClient, model: str) -> dict[str, Any]:
    index = client.get_model_repository_index()
    return {entry.version: entry for entry in index.models if entry.name == model}


# --- unknown model or version, version not ready ---------------------------------------------------


def test_unknown_model_is_not_found(client: triton.InferenceServerClient, digits_pixels: Pixels) -> None:
    expect_client_error(
        grpc.StatusCode.NOT_FOUND,
        lambda: client.infer("no_such_model", [tensor("input", digits_pixels[:1], "FP32")]),
        "'no_such_model'",
    )
    assert_serves(client, digits_pixels)


def test_unknown_model_is_not_found_before_its_inputs_are_examined(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, client: triton.InferenceServerClient, digits_pixels: Pixels
) -> None:
    # A typed input with no values would be INVALID_ARGUMENT for a known model; Triton answers
    # NOT_FOUND for an unknown one first, on a unary call and on a stream alike.
    request = raw_request("no_such_model", inputs=[raw_input("input", [1, 64])])
    expect_rpc_error(grpc.StatusCode.NOT_FOUND, lambda: stub.ModelInfer(request, timeout=TIMEOUT_S), "'no_such_model'")
    [answer] = list(stub.ModelStreamInfer(iter([request]), timeout=TIMEOUT_S))
    assert "'no_such_model'" in answer.error_message and "unknown model" in answer.error_message
    known = raw_request(MODEL, inputs=[raw_input("input", [1, 64])])
    expect_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.ModelInfer(known, timeout=TIMEOUT_S), "'input'")
    assert_serves(client, digits_pixels)


def test_unknown_version_is_not_found(client: triton.InferenceServerClient, digits_pixels: Pixels) -> None:
    expect_client_error(
        grpc.StatusCode.NOT_FOUND,
        lambda: client.infer(MODEL, [tensor("input", digits_pixels[:1], "FP32")], model_version="9"),
        "no version 9",
        "[1, 2]",
    )
    assert_serves(client, digits_pixels)


def test_version_that_is_not_a_number_is_invalid(client: triton.InferenceServerClient, digits_pixels: Pixels) -> None:
    expect_client_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: client.infer(MODEL, [tensor("input", digits_pixels[:1], "FP32")], model_version="latest"),
        "'latest'",
        "positive integer",
    )
    assert_serves(client, digits_pixels)


# Digits that str.isdigit accepts and int refuses, and more digits than int reads (4,300).
NOT_NUMBERS = ("\u00b2", "\u0663", "9" * 5_000)


@pytest.mark.parametrize("version", NOT_NUMBERS, ids=["superscript-two", "arabic-indic-three", "5000-digits"])
def test_a_version_of_digits_that_is_no_number_is_invalid_on_a_call_and_on_a_stream(
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    client: triton.InferenceServerClient,
    digits_pixels: Pixels,
    version: str,
) -> None:
    pixels = digits_pixels[:1]
    bad = raw_request(MODEL, model_version=version, inputs=[raw_input("input", [1, 64])], raw_input_contents=[
        pixels.tobytes()])  # fmt: skip
    message = expect_rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: stub.ModelInfer(bad, timeout=TIMEOUT_S), "positive integer"
    )
    assert len(message) < 300, "the caller's string is echoed cut, not in full"
    good = raw_request(MODEL, id="after", inputs=[raw_input("input", [1, 64])], raw_input_contents=[pixels.tobytes()])
    # On a stream the bad request is answered in-band and the stream goes on serving.
    first, second = list(stub.ModelStreamInfer(iter([bad, good]), timeout=TIMEOUT_S))
    assert "positive integer" in first.error_message
    assert (second.error_message, second.infer_response.id) == ("", "after")
    assert_serves(client, digits_pixels)


def test_a_pin_header_of_digits_that_is_no_number_is_invalid_under_a_policy(
    gateway: GatewayProcess,
    stub: service_pb2_grpc.GRPCInferenceServiceStub,
    client: triton.InferenceServerClient,
    digits_pixels: Pixels,
) -> None:
    # The pin header is read by routing, which applies it under a policy: set one (the version that
    # serves anyway), so the header takes that path.
    with grpc.insecure_channel(gateway.control_address) as channel:
        rollouts = pb_grpc.RolloutsStub(channel)
        rollouts.SetPolicy(pb.SetPolicyRequest(model=MODEL, policy=pb.Policy(stable=2)), timeout=TIMEOUT_S)
    request = raw_request(MODEL, inputs=[raw_input("input", [1, 64])], raw_input_contents=[
        digits_pixels[:1].tobytes()])  # fmt: skip
    for version in ("9" * 5_000, "0x10"):  # metadata is ASCII: "²" cannot travel as a header
        call = lambda version=version: stub.ModelInfer(request, timeout=TIMEOUT_S, metadata=((PIN, version),))  # noqa: E731
        expect_rpc_error(grpc.StatusCode.INVALID_ARGUMENT, call, "positive integer")
    assert_serves(client, digits_pixels)


def test_a_long_model_name_is_echoed_cut(stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    # Echoed in full, 10 KB would overflow the client's 8 KiB metadata limit: RESOURCE_EXHAUSTED.
    request = raw_request("m" * 10_000, inputs=[raw_input("input", [1, 64])])
    message = expect_rpc_error(grpc.StatusCode.NOT_FOUND, lambda: stub.ModelInfer(request, timeout=TIMEOUT_S))
    assert "10000 characters" in message and len(message) < 300


def test_failed_version_is_unavailable_with_its_reason(
    client: triton.InferenceServerClient, digits_pixels: Pixels
) -> None:
    expect_client_error(
        grpc.StatusCode.UNAVAILABLE,
        lambda: client.infer(BROKEN, [tensor("input", digits_pixels[:1], "FP32")], model_version="2"),
        "version 2",
        "UNAVAILABLE",
        "not a loadable ONNX model",
    )
    # The model's good version still answers requests that name no version.
    assert_serves(client, digits_pixels, model=BROKEN)
    assert_serves(client, digits_pixels)


def test_unloaded_version_is_unavailable(client: triton.InferenceServerClient, digits_pixels: Pixels) -> None:
    client.unload_model(SPARE, headers=REPOSITORY_KEY)
    try:
        assert not client.is_model_ready(SPARE, "1")
        expect_client_error(
            grpc.StatusCode.UNAVAILABLE,
            lambda: client.infer(SPARE, [tensor("input", digits_pixels[:1], "FP32")], model_version="1"),
            "version 1",
            "unloaded",
        )
        expect_client_error(
            grpc.StatusCode.UNAVAILABLE,
            lambda: client.infer(SPARE, [tensor("input", digits_pixels[:1], "FP32")]),
            "no READY version",
        )
        assert_serves(client, digits_pixels)
    finally:
        client.load_model(SPARE, headers=REPOSITORY_KEY)
    assert_serves(client, digits_pixels, model=SPARE)


# --- requests that do not fit the model -----------------------------------------------------------


def _wrong_name(pixels: Pixels) -> dict[str, Any]:
    return {"inputs": [tensor("pixels", pixels[:1], "FP32")]}


def _wrong_shape(pixels: Pixels) -> dict[str, Any]:
    return {"inputs": [tensor("input", pixels[:1, :63], "FP32")]}


def _wrong_datatype(pixels: Pixels) -> dict[str, Any]:
    return {"inputs": [tensor("input", pixels[:1].astype(np.float64), "FP64")]}


def _missing_input(pixels: Pixels) -> dict[str, Any]:
    return {"inputs": []}


def _unknown_output(pixels: Pixels) -> dict[str, Any]:
    return {"inputs": [tensor("input", pixels[:1], "FP32")], "outputs": [triton.InferRequestedOutput("logits")]}


def _batch_too_large(pixels: Pixels) -> dict[str, Any]:
    # 5 MiB: also shows the default message limit is well above gRPC's 4 MiB.
    rows = np.resize(pixels, (20480, 64)).astype(np.float32)
    return {"inputs": [tensor("input", rows, "FP32")]}


INVALID_REQUESTS: dict[str, tuple[Callable[[Pixels], dict[str, Any]], tuple[str, ...]]] = {
    "wrong input name": (_wrong_name, ("'pixels'", "['input']")),
    "wrong shape": (_wrong_shape, ("'input'", "[1, 63]", "expected [-1, 64]")),
    "wrong datatype": (_wrong_datatype, ("'input'", "FP64", "expected FP32")),
    "missing input": (_missing_input, ("['input']", "lacks")),
    "unknown requested output": (_unknown_output, ("'logits'", "'label'", "'probabilities'")),
    "batch larger than max_batch_size": (_batch_too_large, ("'input'", "batch size 20480", "1 to 64")),
}


@pytest.mark.parametrize("case", list(INVALID_REQUESTS))
def test_request_that_does_not_fit_is_invalid(
    case: str, client: triton.InferenceServerClient, digits_pixels: Pixels
) -> None:
    build, fragments = INVALID_REQUESTS[case]
    arguments = build(digits_pixels)
    expect_client_error(
        grpc.StatusCode.INVALID_ARGUMENT, lambda: client.infer(MODEL, client_timeout=TIMEOUT_S, **arguments), *fragments
    )
    assert_serves(client, digits_pixels)


def test_raw_byte_count_that_does_not_match_the_shape_is_invalid(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, client: triton.InferenceServerClient, digits_pixels: Pixels
) -> None:
    request = raw_request(inputs=[raw_input("input", [1, 64])], raw_input_contents=[bytes(255)])
    expect_rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: stub.ModelInfer(request, timeout=TIMEOUT_S),
        "'input'",
        "[1, 64]",
        "needs 256 bytes, got 255",
    )
    assert_serves(client, digits_pixels)


def test_mixed_raw_and_typed_contents_are_invalid(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, client: triton.InferenceServerClient, digits_pixels: Pixels
) -> None:
    typed = service_pb2.InferTensorContents(fp32_contents=digits_pixels[0].tolist())
    request = raw_request(
        inputs=[raw_input("input", [1, 64], contents=typed)], raw_input_contents=[digits_pixels[:1].tobytes()]
    )
    expect_rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: stub.ModelInfer(request, timeout=TIMEOUT_S),
        "'input'",
        "raw_input_contents",
        "one or the other",
    )
    assert_serves(client, digits_pixels)


def test_raw_contents_count_that_does_not_match_the_inputs_is_invalid(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, client: triton.InferenceServerClient, digits_pixels: Pixels
) -> None:
    request = raw_request(
        inputs=[raw_input("input", [1, 64])], raw_input_contents=[digits_pixels[:1].tobytes(), b"extra"]
    )
    expect_rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: stub.ModelInfer(request, timeout=TIMEOUT_S),
        "2 entries for 1 inputs",
    )
    assert_serves(client, digits_pixels)


def test_typed_value_count_that_does_not_match_the_shape_is_invalid(
    stub: service_pb2_grpc.GRPCInferenceServiceStub, client: triton.InferenceServerClient, digits_pixels: Pixels
) -> None:
    typed = service_pb2.InferTensorContents(fp32_contents=digits_pixels[0, :60].tolist())
    request = raw_request(inputs=[raw_input("input", [1, 64], contents=typed)])
    expect_rpc_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        lambda: stub.ModelInfer(request, timeout=TIMEOUT_S),
        "'input'",
        "needs 64 values, got 60",
    )
    assert_serves(client, digits_pixels)


def test_oversized_message_is_resource_exhausted(tmp_path: Path, digits_pixels: Pixels) -> None:
    copy_digits(tmp_path, versions=(2,))
    two_mib = np.resize(digits_pixels, (8192, 64)).astype(np.float32)
    with (
        GatewayProcess(tmp_path, "--max-message-bytes", str(1 << 20), "--poll-interval-s", "0") as small,
        triton.InferenceServerClient(small.address) as client,
    ):
        expect_client_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            lambda: client.infer(MODEL, [tensor("input", two_mib, "FP32")], client_timeout=TIMEOUT_S),
            str(1 << 20),
        )
        assert_serves(client, digits_pixels)


# --- broken repository content ---------------------------------------------------------------------


def test_corrupted_artifact_fails_its_version_with_a_reason(
    client: triton.InferenceServerClient, digits_pixels: Pixels
) -> None:
    entry = index_by_version(client, CORRUPT)["1"]
    assert entry.state == "UNAVAILABLE"
    assert "model.onnx is not a loadable ONNX model" in entry.reason
    broken = index_by_version(client, BROKEN)
    assert broken["1"].state == "READY" and broken["2"].state == "UNAVAILABLE"
    assert "not a loadable ONNX model" in broken["2"].reason
    assert not client.is_model_ready(CORRUPT)
    expect_client_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda: client.load_model(CORRUPT, headers=REPOSITORY_KEY),
        f"'{CORRUPT}'",
        "version 1",
        "not a loadable ONNX model",
    )
    assert_serves(client, digits_pixels)


def test_artifact_that_contradicts_model_yaml_fails_with_a_reason(
    client: triton.InferenceServerClient, digits_pixels: Pixels
) -> None:
    entry = index_by_version(client, MISMATCH)["1"]
    assert entry.state == "UNAVAILABLE"
    assert "model.yaml declares inputs ['input'] but the artifact has ['x']" in entry.reason
    expect_client_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        lambda: client.load_model(MISMATCH, headers=REPOSITORY_KEY),
        "model.yaml declares inputs ['input']",
    )
    assert_serves(client, digits_pixels)


MALFORMED_SETTINGS = {
    BAD_YAML: ("model.yaml: cannot be read", "line 1"),
    BAD_SETTINGS: ("max_batch_sise: Extra inputs are not permitted", "instance_count: Input should be greater than"),
}


@pytest.mark.parametrize("model", list(MALFORMED_SETTINGS))
def test_malformed_model_yaml_fails_with_a_reason(
    model: str, client: triton.InferenceServerClient, digits_pixels: Pixels
) -> None:
    fragments = MALFORMED_SETTINGS[model]
    entries = index_by_version(client, model)
    assert [entry.state for entry in entries.values()] == ["UNAVAILABLE"], entries
    assert all(fragment in entries[""].reason for fragment in fragments), entries[""].reason
    expect_client_error(
        grpc.StatusCode.UNAVAILABLE,
        lambda: client.infer(model, [tensor("input", digits_pixels[:1], "FP32")]),
        f"'{model}'",
        *fragments,
    )
    load = lambda: client.load_model(model, headers=REPOSITORY_KEY)  # noqa: E731
    expect_client_error(grpc.StatusCode.FAILED_PRECONDITION, load, f"'{model}'", *fragments)
    assert_serves(client, digits_pixels)


# --- a full queue ----------------------------------------------------------------------------------


def test_full_queue_is_unavailable_with_a_message(client: triton.InferenceServerClient, digits_pixels: Pixels) -> None:
    answers: list[tuple[Any, InferenceServerException | None]] = []
    all_answered = threading.Event()
    sent = 8

    def collect(result: Any, error: InferenceServerException | None) -> None:
        answers.append((result, error))
        if len(answers) == sent:
            all_answered.set()

    slow_rows = np.full((1, 1), slow_rounds_for(SLOW_S), np.float32)
    for _ in range(sent):
        client.async_infer(SLOW, [tensor("x", slow_rows, "FP32")], collect, client_timeout=TIMEOUT_S)
    assert all_answered.wait(TIMEOUT_S)
    errors = [error for _, error in answers if error is not None]
    assert errors, "no request was refused although the queue holds one"
    for error in errors:
        assert error.status() == str(grpc.StatusCode.UNAVAILABLE), error
        assert "max_queue_size" in str(error.message()), error
    served = [result for result, error in answers if error is None]
    assert served, "the queue refused every request"
    for result in served:
        np.testing.assert_array_equal(result.as_numpy("y"), slow_rows)
    assert_serves(client, digits_pixels)
    quick = client.infer(SLOW, [tensor("x", np.zeros((1, 1), np.float32), "FP32")], client_timeout=TIMEOUT_S)
    np.testing.assert_array_equal(quick.as_numpy("y"), np.zeros((1, 1), np.float32))
