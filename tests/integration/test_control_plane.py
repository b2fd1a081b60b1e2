"""The control plane on its own listener: who may change routing, what a refusal looks like (status,
audit history, counter), SIGHUP re-reading the tokens, and the inference port pointing elsewhere."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import tritonclient.grpc as triton
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from gateway.wire.turnout.v1 import rollouts_pb2 as pb
from gateway.wire.turnout.v1 import rollouts_pb2_grpc as pb_grpc
from tests.support.gateway_process import REPO_ROOT, GatewayProcess
from tests.support.model_repository import copy_digits

TIMEOUT_S = 20
ALICE = "alice-token-0123456789abcdef"
CAROL = "carol-token-0123456789abcdef"  # revoked by one test
DAVE = "dave-token-0123456789abcdef"  # granted by the same test
HEADER_KEY, HEADER_VALUE = "x-admin-key", "admin-key-0123456789"


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("control") / "tokens"
    path.write_text(f"# name token\nalice {ALICE}\n\ncarol {CAROL}\n")
    return path


@pytest.fixture(scope="module")
def metrics_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, tokens: Path, metrics_port: int) -> Iterator[GatewayProcess]:
    repository = tmp_path_factory.mktemp("models")
    copy_digits(repository, versions=(1, 2))
    flags = (
        "--worker-mode", "inprocess", "--poll-interval-s", "0", "--metrics-port", str(metrics_port),
        "--control-tokens-file", str(tokens),
        f"--grpc-restricted-protocol=model-repository:{HEADER_KEY}={HEADER_VALUE}",
    )  # fmt: skip
    with GatewayProcess(repository, *flags) as running:
        yield running


@pytest.fixture(scope="module")
def rollouts(gateway: GatewayProcess) -> Iterator[pb_grpc.RolloutsStub]:
    with grpc.insecure_channel(gateway.control_address) as channel:
        yield pb_grpc.RolloutsStub(channel)


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as refused:
        call()
    error: Any = refused.value
    return error.code(), error.details() or ""


def refused_total(metrics_port: int, method: str, reason: str) -> float:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer:
        text = answer.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "turnout_control_refused_total" and sample.labels == {"method": method, "reason": reason}
    )


def test_rollouts_on_the_inference_port_are_denied_naming_the_control_address(gateway: GatewayProcess) -> None:
    assert gateway.control_address != gateway.address
    with grpc.insecure_channel(gateway.address) as channel:
        code, message = code_of(lambda: pb_grpc.RolloutsStub(channel).GetPolicy(
            pb.GetPolicyRequest(model="digits"), metadata=bearer(ALICE), timeout=TIMEOUT_S))  # fmt: skip
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert f"control address {gateway.control_address}" in message


def test_no_token_is_unauthenticated_a_wrong_one_denied_and_both_are_in_history_and_counted(
    rollouts: pb_grpc.RolloutsStub, metrics_port: int
) -> None:
    request = pb.SetCanaryRequest(model="digits", version=1, weight_percent=25, reason="sneaky")

    def counted() -> tuple[float, ...]:
        return tuple(refused_total(metrics_port, "SetCanary", why) for why in ("no_credentials", "wrong_token"))

    before = counted()
    code, message = code_of(lambda: rollouts.SetCanary(request, timeout=TIMEOUT_S))
    assert code is grpc.StatusCode.UNAUTHENTICATED and "Bearer" in message
    wrong = "not-a-token-0123456789"
    code, message = code_of(lambda: rollouts.SetCanary(request, metadata=bearer(wrong), timeout=TIMEOUT_S))
    assert code is grpc.StatusCode.PERMISSION_DENIED and wrong not in message
    # A caller-chosen actor header changes nothing: the token's name is the actor.
    claims = (*bearer(ALICE), ("turnout-actor", "mallory"))
    state = rollouts.SetCanary(pb.SetCanaryRequest(model="digits", version=1, weight_percent=10, reason="real"),
                               metadata=claims, timeout=TIMEOUT_S)  # fmt: skip
    assert state.policy.canary.weight_bp == 1_000, "the refused calls changed nothing"

    history = rollouts.History(pb.HistoryRequest(model="digits", limit=3), metadata=bearer(ALICE), timeout=TIMEOUT_S)
    changed, denied, unauthenticated = history.changes
    assert (changed.actor, changed.action, changed.reason, changed.generation) == (
        "alice", "set-canary", "real", state.generation
    )  # fmt: skip
    for entry in (denied, unauthenticated):
        assert (entry.actor, entry.action, entry.generation) == ("unknown", "refused SetCanary", 0)
        assert not entry.HasField("after") and "weight_percent: 25" in entry.reason and wrong not in entry.reason
    assert "not one of the control tokens" in denied.reason and "needs control credentials" in unauthenticated.reason
    after = counted()
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def test_reads_need_a_token_too(rollouts: pb_grpc.RolloutsStub) -> None:
    code, _ = code_of(lambda: rollouts.GetPolicy(pb.GetPolicyRequest(model="digits"), timeout=TIMEOUT_S))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    assert rollouts.GetPolicy(pb.GetPolicyRequest(model="digits"), metadata=bearer(ALICE), timeout=TIMEOUT_S).model


def test_health_and_reflection_answer_on_the_control_listener(gateway: GatewayProcess) -> None:
    with grpc.insecure_channel(gateway.control_address) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        status = check(health_pb2.HealthCheckRequest(service="turnout.v1.Rollouts"), timeout=TIMEOUT_S).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_tritonclient_loads_and_unloads_need_credentials_and_work_with_them(gateway: GatewayProcess) -> None:
    with triton.InferenceServerClient(gateway.address) as client:
        with pytest.raises(InferenceServerException) as bare:
            client.unload_model("digits")
        assert bare.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
        with pytest.raises(InferenceServerException) as guessed:
            client.unload_model("digits", headers={HEADER_KEY: "guess"})
        assert guessed.value.status() == str(grpc.StatusCode.PERMISSION_DENIED)
        assert client.is_model_ready("digits"), "the refused unloads did nothing"
        client.unload_model("digits", headers={HEADER_KEY: HEADER_VALUE})  # Triton's restricted protocol
        assert not client.is_model_ready("digits")
        client.load_model("digits", headers={"authorization": f"Bearer {ALICE}"})  # or a control token
        assert client.is_model_ready("digits")
    # The control listener serves them too, with the same credentials.
    with triton.InferenceServerClient(gateway.control_address) as control:
        with pytest.raises(InferenceServerException) as bare:
            control.load_model("digits")
        assert bare.value.status() == str(grpc.StatusCode.UNAUTHENTICATED)
        control.load_model("digits", headers={"authorization": f"Bearer {ALICE}"})


def test_sighup_rereads_the_tokens_a_revoked_one_is_refused(
    gateway: GatewayProcess, rollouts: pb_grpc.RolloutsStub, tokens: Path
) -> None:
    request = pb.GetPolicyRequest(model="digits")
    assert rollouts.GetPolicy(request, metadata=bearer(CAROL), timeout=TIMEOUT_S).model == "digits"
    code, _ = code_of(lambda: rollouts.GetPolicy(request, metadata=bearer(DAVE), timeout=TIMEOUT_S))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    tokens.write_text(f"alice {ALICE}\ndave {DAVE}\n")
    assert gateway.process is not None
    gateway.process.send_signal(signal.SIGHUP)
    gateway.wait_for_log("control tokens re-read")
    code, _ = code_of(lambda: rollouts.GetPolicy(request, metadata=bearer(CAROL), timeout=TIMEOUT_S))
    assert code is grpc.StatusCode.PERMISSION_DENIED, "carol's token was revoked"
    state = rollouts.SetPolicy(pb.SetPolicyRequest(model="digits", policy=pb.Policy(stable=1), reason="dave's"),
                               metadata=bearer(DAVE), timeout=TIMEOUT_S)  # fmt: skip
    newest = rollouts.History(pb.HistoryRequest(model="digits", limit=1), metadata=bearer(DAVE), timeout=TIMEOUT_S)
    assert (newest.changes[0].actor, newest.changes[0].generation) == ("dave", state.generation)
    assert gateway.process.poll() is None, "SIGHUP does not stop the gateway"


def serve_briefly(repository: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway", "serve", "--repository", str(repository), "--port", "0",
               "--metrics-port", "0", "--worker-mode", "inprocess", *flags]  # fmt: skip
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)


def test_a_control_address_off_loopback_without_credentials_refuses_to_start(tmp_path: Path) -> None:
    copy_digits(tmp_path, versions=(1,))
    done = serve_briefly(tmp_path, "--control-address", "0.0.0.0:0", "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 2 and done.stdout == ""
    assert "the control address 0.0.0.0:0 is not loopback" in done.stderr and "--control-tokens-file" in done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = f"127.0.0.1:{taken.getsockname()[1]}"
        done = serve_briefly(tmp_path, "--control-address", busy, "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 2 and f"cannot listen on {busy}" in done.stderr and "Traceback" not in done.stderr
    bad_tokens = tmp_path / "tokens"
    bad_tokens.write_text("alice short\n")
    flags = ("--control-tokens-file", str(bad_tokens), "--state-dir", str(tmp_path / "state"))
    done = serve_briefly(tmp_path, *flags)
    assert done.returncode == 2 and "shorter than 16 characters" in done.stderr


def test_a_loopback_control_plane_without_credentials_says_so_once_and_records_the_local_caller(
    tmp_path: Path,
) -> None:
    copy_digits(tmp_path, versions=(1,))
    with GatewayProcess(tmp_path, "--worker-mode", "inprocess", "--poll-interval-s", "0") as gateway:
        with grpc.insecure_channel(gateway.control_address) as channel:
            rollouts = pb_grpc.RolloutsStub(channel)
            rollouts.SetPolicy(pb.SetPolicyRequest(model="digits", policy=pb.Policy(stable=1)), timeout=TIMEOUT_S)
            history = rollouts.History(pb.HistoryRequest(model="digits"), timeout=TIMEOUT_S)
        time.sleep(0.2)
        log = gateway.log()
    assert history.changes[0].actor == "local:127.0.0.1"
    assert log.count("every local caller may change routing") == 1
