"""``turnout serve`` as deployments start it: with a Triton deployment's flags, from a directory it must
leave untouched, keeping its routing state where an operator looks, and reporting readiness (ServerReady
and the health service) as Triton's ``--strict-readiness`` says."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.settings import default_state_dir
from tests.support.gateway_process import REPOSITORY_KEY, REPOSITORY_KEY_FLAG, GatewayFailedToStart, GatewayProcess
from tests.support.model_repository import add_broken_model, copy_digits

BROKEN = "broken"  # a model whose only version is not ONNX: never READY


def repository_with_a_broken_model(root: Path) -> Path:
    repository = root / "models"
    copy_digits(repository, versions=(1,))
    add_broken_model(repository, BROKEN)
    return repository


@pytest.fixture(scope="module")
def triton_started(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    """A gateway started only with Triton's flags (and no --state-dir), from an empty directory."""
    root = tmp_path_factory.mktemp("triton-flags")
    repository = repository_with_a_broken_model(root)
    workdir = root / "workdir"
    workdir.mkdir()
    triton_flags = [
        f"--model-repository={repository}",
        "--grpc-address",
        "127.0.0.1",
        "--grpc-port=0",
        "--model-control-mode=none",
        "--strict-readiness=false",
        "--exit-timeout-secs",
        "5",
        "--grpc-keepalive-time=60000",
        "--log-verbose=1",
        "--allow-grpc=true",
        "--allow-http=false",
        "--allow-metrics=false",
        "--strict-model-config=false",
    ]
    environment = {"XDG_STATE_HOME": str(root / "xdg"), "TURNOUT_WORKER_MODE": "inprocess"}
    gateway = GatewayProcess(repository, *triton_flags, env=environment, cwd=workdir, own_flags=False)
    gateway.env.pop("TURNOUT_STATE_DIR", None)
    with gateway:
        yield gateway, workdir


def test_a_triton_command_line_serves_inferences(
    triton_started: tuple[GatewayProcess, Path], digits_pixels: npt.NDArray[np.float32]
) -> None:
    gateway, _ = triton_started
    with triton.InferenceServerClient(gateway.address) as client:
        tensor = triton.InferInput("input", [4, 64], "FP32")
        tensor.set_data_from_numpy(digits_pixels[:4])
        result = client.infer("digits", [tensor])
        assert result.as_numpy("label").shape == (4,)
        assert result.get_response().model_version == "1"
        # --strict-readiness=false: ready although the broken model never loads, and so says health.
        assert client.is_server_ready() and not client.is_model_ready(BROKEN)
    with grpc.insecure_channel(gateway.address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_triton_flags_took_effect(triton_started: tuple[GatewayProcess, Path]) -> None:
    gateway, _ = triton_started
    settings = next(line for line in gateway.log().splitlines() if " DEBUG turnout: settings: " in line)
    effective = json.loads(settings.partition("settings: ")[2])  # logged at all: --log-verbose=1 is DEBUG
    assert effective["repository"] == str(gateway.repository) and effective["host"] == "127.0.0.1"
    assert (effective["port"], effective["poll_interval_s"], effective["grace_period_s"]) == (0, 0.0, 5.0)
    assert (effective["keepalive_time_s"], effective["strict_readiness"]) == (60.0, False)


def test_a_first_run_writes_nothing_where_it_starts(triton_started: tuple[GatewayProcess, Path]) -> None:
    gateway, workdir = triton_started
    assert list(workdir.iterdir()) == []
    expected = default_state_dir(gateway.repository, {"XDG_STATE_HOME": gateway.env["XDG_STATE_HOME"]})
    assert f"routing state (policies, history) in {expected}" in gateway.log()
    assert (expected / "turnout-state.sqlite3").is_file()


def test_strict_readiness_waits_for_every_model(tmp_path: Path) -> None:
    """Turnout's default, as Triton's: not ready while a model of the repository has no READY version."""
    repository = repository_with_a_broken_model(tmp_path)
    with (
        GatewayProcess(repository, "--worker-mode", "inprocess", "--poll-interval-s", "0", REPOSITORY_KEY_FLAG) as gw,
        triton.InferenceServerClient(gw.address) as client,
    ):
        assert client.is_server_live() and client.is_model_ready("digits")
        assert not client.is_server_ready()
        # An operator's unload: the model is no longer expected to serve.
        client.unload_model(BROKEN, headers=REPOSITORY_KEY)
        assert client.is_server_ready()


def test_unknown_triton_flags_stop_the_start_naming_them(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path, "--grpc-infer-allocation-pool-size=8", "--http-port", "8000")
    with pytest.raises(GatewayFailedToStart, match="has no Turnout equivalent") as failed:
        gateway.start(timeout_s=30)
    assert "--grpc-infer-allocation-pool-size" in str(failed.value) and "--http-port" in str(failed.value)
    assert "exit 2" in str(failed.value)
