"""A gateway started with ``--log-format json --access-log on``: every line it writes to stderr is one
JSON object (its worker processes' too), load progress names the model and version, each request has
its access line; and the health service follows strict readiness, as ServerReady does."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support.gateway_process import REPOSITORY_KEY, REPOSITORY_KEY_FLAG, GatewayProcess
from tests.support.model_repository import add_broken_model, copy_digits

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        status: int = reply.status
        return status


def eventually_health(address: str, expected: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while health(address) != expected:
        assert time.monotonic() < deadline, f"health never became {expected}"
        time.sleep(0.05)


def infer(client: triton.InferenceServerClient, pixels: npt.NDArray[np.float32], request_id: str) -> None:
    tensor = triton.InferInput("input", list(pixels.shape), "FP32")
    tensor.set_data_from_numpy(pixels)
    client.infer("digits", [tensor], request_id=request_id)


def test_json_lines_access_lines_and_readiness(tmp_path: Path, digits_pixels: npt.NDArray[np.float32]) -> None:
    repository = tmp_path / "models"
    copy_digits(repository, versions=(1,))
    add_broken_model(repository)
    flags = ("--log-format", "json", "--access-log", "on", "--poll-interval-s", "0", REPOSITORY_KEY_FLAG)
    with GatewayProcess(repository, *flags) as gateway:
        with triton.InferenceServerClient(gateway.address) as client:
            # --strict-readiness (the default): the broken model keeps ServerReady and health down.
            assert not client.is_server_ready() and health(gateway.address) == NOT_SERVING
            for index in range(3):
                infer(client, digits_pixels[: index + 1], f"good-{index}")
            with pytest.raises(InferenceServerException, match="input"):
                infer(client, digits_pixels[:2, :63].copy(), "bad-1")
            tensor = triton.InferInput("input", [1, 64], "FP32")
            tensor.set_data_from_numpy(digits_pixels[:1])
            with pytest.raises(InferenceServerException, match="unknown model"):
                client.infer("nonesuch", [tensor], request_id="unknown-1")
            # No longer expected to serve: ready, and health follows.
            client.unload_model("broken", headers=REPOSITORY_KEY)
            assert client.is_server_ready()
            eventually_health(gateway.address, SERVING)
        gateway.wait_for_log('"request_id": "unknown-1"')
        assert gateway.stop() == 0
        lines = [json.loads(line) for line in gateway.log().splitlines()]  # every line, or this raises

    for line in lines:
        assert {"time", "level", "logger", "message", "process"} <= line.keys(), line
        assert line["time"].endswith("Z") and "T" in line["time"]
    messages = [line["message"] for line in lines]
    assert any(m.startswith("loaded 1 of 2 models in ") and "failed: broken (" in m for m in messages), messages
    about = {(line.get("model"), line.get("version"), line["message"].split(" ")[0]) for line in lines}
    assert {("digits", 1, "loading"), ("digits", 1, "version"), ("broken", 1, "loading")} <= about

    access = {line["request_id"]: line for line in lines if line["logger"] == "turnout.access"}
    assert set(access) == {"good-0", "good-1", "good-2", "bad-1", "unknown-1"}
    good: dict[str, Any] = access["good-2"]
    assert (good["model"], good["version"], good["arm"], good["reason"], good["status"]) == (
        "digits", "1", "stable", "no-canary", "OK"
    )  # fmt: skip
    assert good["rows"] == 3 and good["latency_ms"] > 0 and good["generation"] == 0
    bad = access["bad-1"]
    assert bad["status"] == "INVALID_ARGUMENT" and "input" in bad["error"]
    unknown = access["unknown-1"]
    assert (unknown["status"], unknown["model"], unknown["arm"]) == ("NOT_FOUND", "nonesuch", "")


def test_a_supervisors_gateway_processes_log_json_too(tmp_path: Path) -> None:
    """--processes N: the supervisor hands its settings to each gateway process, so every line is JSON."""
    repository = tmp_path / "models"
    copy_digits(repository, versions=(1,))
    with GatewayProcess(repository, "--log-format", "json", "--processes", "2", "--poll-interval-s", "0") as gateway:
        gateway.wait_for_log("loaded 1 of 1 models")
        assert gateway.stop() == 0
        lines = [json.loads(line) for line in gateway.log().splitlines()]
    summaries = {line["process"] for line in lines if line["message"].startswith("loaded 1 of 1 models in ")}
    assert len(summaries) == 2, "one summary per gateway process, each with its own pid"
    assert any(line["logger"] == "turnout.supervisor" for line in lines)
