"""A routing state file that breaks under a running gateway, or before it starts: changes are refused
with a message that names the file, the log says it once, and inference goes on serving."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.state.sqlite_store import STATE_FILE
from gateway.wire.turnout.v1 import rollouts_pb2 as pb
from gateway.wire.turnout.v1 import rollouts_pb2_grpc as pb_grpc
from tests.support.gateway_process import REPO_ROOT, GatewayProcess
from tests.support.model_repository import copy_digits
from tests.support.raw_inference import infer_version

TIMEOUT_S = 20.0


def test_a_deleted_state_file_refuses_changes_and_serves_on(
    tmp_path: Path, digits_pixels: npt.NDArray[np.float32]
) -> None:
    repository = copy_digits(tmp_path / "repository").parent
    state = tmp_path / "state"
    with GatewayProcess(repository, "--worker-mode", "inprocess", "--state-dir", str(state)) as gateway:
        with grpc.insecure_channel(gateway.control_address) as channel:
            rollouts = pb_grpc.RolloutsStub(channel)
            rollouts.SetPolicy(pb.SetPolicyRequest(model="digits", policy=pb.Policy(stable=1)), timeout=TIMEOUT_S)
            for suffix in ("", "-wal", "-shm"):
                Path(f"{state / STATE_FILE}{suffix}").unlink(missing_ok=True)
            with pytest.raises(grpc.RpcError) as refused:
                rollouts.SetCanary(pb.SetCanaryRequest(model="digits", version=2, weight_percent=10), timeout=TIMEOUT_S)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
        assert f"{STATE_FILE} was deleted while the gateway ran" in refused.value.details()
        assert infer_version(gateway.address, digits_pixels[:1]) == "1", "the last policy applied still routes"
        said = "was deleted while the gateway ran; policy changes are refused until the gateway is restarted;"
        gateway.wait_for_log(f"{said} serving with the policies applied so far")
        time.sleep(1.0)  # fifty polls of the policy sync later, still said once
        assert gateway.log().count(said) == 1
        with grpc.insecure_channel(gateway.address) as channel:  # health says so, for the control plane only
            check = health_pb2_grpc.HealthStub(channel).Check
            status = {name: check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT_S).status
                      for name in ("", "inference.GRPCInferenceService", "turnout.v1.Rollouts")}  # fmt: skip
        serving, not_serving = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
        assert status == {"": serving, "inference.GRPCInferenceService": serving, "turnout.v1.Rollouts": not_serving}
        assert "Traceback" not in gateway.log()


def test_a_gateway_does_not_start_on_a_corrupt_state_file(tmp_path: Path) -> None:
    repository = copy_digits(tmp_path / "repository").parent
    state = tmp_path / "state"
    state.mkdir()
    (state / STATE_FILE).write_bytes(b"this is not SQLite " * 512)
    command = [sys.executable, "-m", "gateway", "serve", "--repository", str(repository), "--port", "0",
               "--state-dir", str(state), "--worker-mode", "inprocess"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"{STATE_FILE} cannot be used: file is not a database" in done.stderr
    assert "Traceback" not in done.stderr
