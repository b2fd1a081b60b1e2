"""A Triton model repository as it is: models described by config.pbtxt alone, against a live gateway.

One gateway (per worker mode) serves digits from its config.pbtxt next to a model whose tensors are
reshaped, a model with both settings files, and three that cannot serve: a platform Turnout does not
run, a file that does not parse, and tensors that contradict the ONNX file. Each broken one fails with
a reason naming the field while the rest answer. The repository is polled, so the tests also see
that the notes about a config.pbtxt are logged once, not on every pass.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from tests.integration.conftest import WORKER_MODES
from tests.support.gateway_process import GatewayProcess
from tests.support.model_repository import (
    EXAMPLES,
    config_pbtxt_for,
    copy_digits,
    identity_model,
    save_version,
    use_config_pbtxt,
)

TIMEOUT_S = 20.0
POLL_S = 0.2
MODEL = "digits"
RESHAPED = "reshaped"
BOTH = "both"
TENSORRT = "tensorrt"
MALFORMED = "malformed"
DISAGREES = "disagrees"

# The ONNX file takes x FP32 [-1, 8] and answers y FP32 [-1, 8] (identity); clients speak [2, 4] and [4, 2].
# The fields after instance_group are ones Turnout does not act on: the log names each.
RESHAPED_CONFIG = """
name: "reshaped"
backend: "onnxruntime"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 2, 4 ] reshape: { shape: [ 8 ] } } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4, 2 ] reshape: { shape: [ 8 ] } } ]
dynamic_batching { max_queue_delay_microseconds: 20000 preferred_batch_size: [ 4 ] }
instance_group [ { count: 1 kind: KIND_GPU } ]
optimization { execution_accelerators { gpu_execution_accelerator: [ { name: "tensorrt" } ] } }
model_warmup [ {
  name: "zeros" batch_size: 1
  inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 2, 4 ] zero_data: true } }
} ]
"""
TENSORRT_CONFIG = """
name: "tensorrt"
platform: "tensorrt_plan"
max_batch_size: 8
"""
MALFORMED_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dimz: [ 4 ] } ]
"""
DISAGREES_CONFIG = """
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 5 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""
# What BOTH's config.pbtxt would say if it were read: a platform that would fail the model.
IGNORED_CONFIG = 'name: "both"\nplatform: "pytorch_libtorch"\n'


def _build_repository(root: Path) -> Path:
    copy_digits(root)
    use_config_pbtxt(root / MODEL)
    save_version(root, RESHAPED, 1, identity_model("FP32", width=8))
    (root / RESHAPED / "config.pbtxt").write_text(RESHAPED_CONFIG)
    shutil.copytree(EXAMPLES / "digits" / "1", root / BOTH / "1")
    (root / BOTH / "model.yaml").write_text((EXAMPLES / "digits" / "model.yaml").read_text())
    (root / BOTH / "config.pbtxt").write_text(IGNORED_CONFIG)
    plan = root / TENSORRT / "1" / "model.plan"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(b"not an engine")
    save_version(root, MALFORMED, 1, identity_model("FP32"))
    (root / MALFORMED / "config.pbtxt").write_text(MALFORMED_CONFIG)
    save_version(root, DISAGREES, 1, identity_model("FP32"))
    (root / DISAGREES / "config.pbtxt").write_text(DISAGREES_CONFIG)
    (root / TENSORRT / "config.pbtxt").write_text(TENSORRT_CONFIG)
    return root


@pytest.fixture(scope="module", params=WORKER_MODES)
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    repository = _build_repository(tmp_path_factory.mktemp(f"triton-config-{request.param}"))
    with GatewayProcess(repository, "--worker-mode", request.param, "--poll-interval-s", str(POLL_S)) as running:
        yield running


@pytest.fixture(scope="module")
def client(gateway: GatewayProcess) -> Iterator[triton.InferenceServerClient]:
    with triton.InferenceServerClient(gateway.address) as connected:
        yield connected


def index_of(client: triton.InferenceServerClient, model: str) -> dict[str, Any]:
    return {entry.version: entry for entry in client.get_model_repository_index().models if entry.name == model}


def fp32_input(name: str, array: np.ndarray[Any, Any]) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def assert_digits_serve(client: triton.InferenceServerClient, model: str = MODEL) -> None:
    pixels = np.random.default_rng(0).uniform(0, 16, (3, 64)).astype(np.float32)
    result = client.infer(model, [fp32_input("input", pixels)], client_timeout=TIMEOUT_S)
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None and probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-4)


def expect_unavailable(call: Any, *fragments: str) -> None:
    with pytest.raises(InferenceServerException) as raised:
        call()
    message = str(raised.value.message())
    assert raised.value.status() == "StatusCode.UNAVAILABLE", message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --- a model served from its config.pbtxt ----------------------------------------------------------


def test_digits_serves_from_config_pbtxt_with_its_settings(client: triton.InferenceServerClient) -> None:
    assert client.is_model_ready(MODEL, "1") and client.is_model_ready(MODEL, "2")
    config = client.get_model_config(MODEL).config
    assert config.max_batch_size == 64
    assert config.version_policy.WhichOneof("policy_choice") == "all"
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [("input", model_config_pb2.TYPE_FP32, [64])]
    assert_digits_serve(client)


def test_the_config_written_for_a_model_yaml_says_the_same() -> None:
    text = config_pbtxt_for((EXAMPLES / "digits" / "model.yaml").read_text(), MODEL)
    parsed = model_config_pb2.ModelConfig()
    text_format.Parse(text, parsed)
    assert parsed.max_batch_size == 64 and parsed.dynamic_batching.default_queue_policy.max_queue_size == 1024


# --- reshape -----------------------------------------------------------------------------------------


def test_reshaped_tensors_are_sent_and_answered_in_their_declared_dims(client: triton.InferenceServerClient) -> None:
    metadata = client.get_model_metadata(RESHAPED)
    assert [(t.name, list(t.shape)) for t in metadata.inputs] == [("x", [-1, 2, 4])]
    assert [(t.name, list(t.shape)) for t in metadata.outputs] == [("y", [-1, 4, 2])]
    values = np.arange(3 * 8, dtype=np.float32).reshape(3, 2, 4)
    result = client.infer(RESHAPED, [fp32_input("x", values)], client_timeout=TIMEOUT_S)
    answer = result.as_numpy("y")
    assert answer is not None and answer.shape == (3, 4, 2)
    np.testing.assert_array_equal(answer.reshape(-1), values.reshape(-1))


def test_the_model_config_shows_the_reshapes_and_preferred_batch_sizes(client: triton.InferenceServerClient) -> None:
    config = client.get_model_config(RESHAPED).config
    assert [(t.name, list(t.dims), list(t.reshape.shape)) for t in config.input] == [("x", [2, 4], [8])]
    assert [(t.name, list(t.dims), list(t.reshape.shape)) for t in config.output] == [("y", [4, 2], [8])]
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 20000


def test_reshaped_requests_batched_together_each_get_their_own_rows(client: triton.InferenceServerClient) -> None:
    answers: dict[int, Any] = {}
    done = threading.Event()
    sent = 6

    def collect(index: int, result: Any, error: Any) -> None:
        answers[index] = error if error is not None else result.as_numpy("y")
        if len(answers) == sent:
            done.set()

    requests = {index: np.full((1 + index % 2, 2, 4), index, dtype=np.float32) for index in range(sent)}
    for index, values in requests.items():
        client.async_infer(
            RESHAPED,
            [fp32_input("x", values)],
            callback=lambda result, error, index=index: collect(index, result, error),
            client_timeout=TIMEOUT_S,
        )
    assert done.wait(TIMEOUT_S)
    for index, values in requests.items():
        answer = answers[index]
        assert isinstance(answer, np.ndarray), answer
        np.testing.assert_array_equal(answer, values.reshape(values.shape[0], 4, 2))


def test_a_request_in_the_models_own_shape_is_refused_naming_the_declared_dims(
    client: triton.InferenceServerClient,
) -> None:
    with pytest.raises(InferenceServerException) as raised:
        client.infer(RESHAPED, [fp32_input("x", np.zeros((1, 8), np.float32))], client_timeout=TIMEOUT_S)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "expected [-1, 2, 4]" in str(raised.value.message())


def test_fields_not_acted_on_are_named_in_one_line_logged_once(gateway: GatewayProcess) -> None:
    line = gateway.wait_for_log(f"model '{RESHAPED}': config.pbtxt fields Turnout does not act on")
    time.sleep(5 * POLL_S)  # several more passes over the repository
    lines = [text for text in gateway.log().splitlines() if "does not act on" in text and f"'{RESHAPED}'" in text]
    assert len(lines) == 1, lines
    for field in ("instance_group kind KIND_GPU", "optimization", "model_warmup"):
        assert field in lines[0], line


# --- both files --------------------------------------------------------------------------------------


def test_with_both_files_model_yaml_wins_and_the_log_says_so(
    client: triton.InferenceServerClient, gateway: GatewayProcess
) -> None:
    assert client.is_model_ready(BOTH)
    assert client.get_model_config(BOTH).config.max_batch_size == 64
    assert_digits_serve(client, BOTH)
    gateway.wait_for_log(f"model '{BOTH}' has both model.yaml and config.pbtxt: serving with model.yaml")
    assert "pytorch_libtorch" not in gateway.log()


# --- models that cannot serve ------------------------------------------------------------------------


def test_a_platform_turnout_does_not_run_fails_the_model_naming_it(client: triton.InferenceServerClient) -> None:
    entries = index_of(client, TENSORRT)
    assert [entry.state for entry in entries.values()] == ["UNAVAILABLE"], entries
    assert all("platform 'tensorrt_plan' is not served by Turnout" in e.reason for e in entries.values()), entries
    assert not client.is_model_ready(TENSORRT)
    expect_unavailable(
        lambda: client.infer(TENSORRT, [fp32_input("x", np.zeros((1, 4), np.float32))]),
        f"'{TENSORRT}'",
        "tensorrt_plan",
    )
    assert_digits_serve(client)


def test_a_config_that_does_not_parse_fails_the_model_naming_the_line_and_field(
    client: triton.InferenceServerClient,
) -> None:
    entries = index_of(client, MALFORMED)
    assert [entry.state for entry in entries.values()] == ["UNAVAILABLE"], entries
    reason = next(iter(entries.values())).reason
    assert "config.pbtxt: line 4:" in reason and 'no field named "dimz"' in reason, reason
    assert not client.is_model_ready(MALFORMED)
    expect_unavailable(lambda: client.infer(MALFORMED, [fp32_input("x", np.zeros((1, 4), np.float32))]), "dimz")
    assert_digits_serve(client)


def test_tensors_that_contradict_the_onnx_file_fail_the_version_naming_the_tensor(
    client: triton.InferenceServerClient,
) -> None:
    entry = index_of(client, DISAGREES)["1"]
    assert entry.state == "UNAVAILABLE"
    assert "input 'x': config.pbtxt declares FP32 [5] but the artifact has FP32 [4]" in entry.reason
    assert not client.is_model_ready(DISAGREES, "1")
    expect_unavailable(
        lambda: client.infer(DISAGREES, [fp32_input("x", np.zeros((1, 4), np.float32))], model_version="1"),
        "input 'x': config.pbtxt declares FP32 [5]",
    )
    assert_digits_serve(client)
