"""Two gateways behind nginx with the shipped configuration (deploy/nginx), under steady load.

A SIGTERM to one of them fails no call: its health goes NOT_SERVING, it stops accepting, nginx
moves on, its calls in flight finish and it exits. A SIGKILL fails only the calls that gateway had
in flight, each with UNAVAILABLE, and nginx sends the rest to the other one.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support.gateway_process import GatewayProcess
from tests.support.model_repository import save_version, slow_model, slow_rounds_for
from tests.support.nginx_process import NginxProcess, nginx_binary
from tests.support.steady_load import SteadyLoad

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed; .ci/run installs it")

MODEL = "slow"
CLIENTS = 4
# Each call computes this long, so every gateway has calls in flight whenever a signal arrives.
CALL_S = 0.02
GRACE_S = 5.0
# Successes to see before acting, and after, so the load is steady on both sides of the signal.
CALLS_AROUND = 40
INFERENCE_SERVICE = "inference.GRPCInferenceService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def steady_load(address: str) -> SteadyLoad:
    """``CLIENTS`` callers through ``address``, each call to the slow model computing ``CALL_S``."""
    return SteadyLoad(address, MODEL, "x", np.full((1, 1), slow_rounds_for(CALL_S), np.float32), CLIENTS)


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("load-balancer")
    save_version(root, MODEL, 1, slow_model())
    (root / MODEL / "model.yaml").write_text("max_batch_size: 8\n")
    return root


@pytest.fixture
def gateways(repository: Path) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    # In-process models: a killed gateway leaves no worker behind, and two gateways fit on two cores.
    flags = ("--poll-interval-s", "0", "--worker-mode", "inprocess", "--grace-period-s", str(GRACE_S))
    with GatewayProcess(repository, *flags) as first, GatewayProcess(repository, *flags) as second:
        yield first, second


@pytest.fixture
def nginx(gateways: tuple[GatewayProcess, GatewayProcess]) -> Iterator[NginxProcess]:
    with NginxProcess([gateway.address for gateway in gateways]) as running:
        yield running


def answered_by(nginx: NginxProcess) -> set[str]:
    """The gateways that answered a call, as nginx logged them."""
    return {line.upstreams[-1] for line in nginx.access_lines() if line.grpc_status == "0"}


def test_sigterm_to_one_gateway_under_load_fails_no_call(
    gateways: tuple[GatewayProcess, GatewayProcess], nginx: NginxProcess
) -> None:
    stopping, staying = gateways
    assert stopping.process is not None
    with (
        steady_load(nginx.address) as load,
        grpc.insecure_channel(stopping.address) as channel,
    ):
        load.wait_for_successes(CALLS_AROUND)
        assert answered_by(nginx) == {stopping.address, staying.address}
        statuses = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=INFERENCE_SERVICE))
        assert next(statuses).status == SERVING
        signalled = time.monotonic()
        stopping.process.send_signal(signal.SIGTERM)
        assert next(statuses).status == NOT_SERVING
        status = stopping.process.wait(GRACE_S + 5)
        exited = time.monotonic()
        load.wait_for_successes(CALLS_AROUND, started_after=exited)
    outcomes = load.outcomes()
    failures = [outcome for outcome in outcomes if outcome.status != "OK"]
    assert not failures, f"{len(failures)} failed: {failures[:5]}\nnginx:\n{nginx.errors()}\ngateway:\n{stopping.log()}"
    assert status == 0, stopping.log()
    assert exited - signalled < GRACE_S, stopping.log()
    # Calls were in flight at the signal, and every one of them was answered.
    assert any(outcome.started < signalled < outcome.finished for outcome in outcomes)
    # Once it had exited, the other gateway answered everything.
    last = nginx.access_lines()[-CALLS_AROUND:]
    assert {line.upstreams[-1] for line in last} == {staying.address}


def test_sigkill_to_one_gateway_fails_only_its_calls_in_flight_with_unavailable(
    gateways: tuple[GatewayProcess, GatewayProcess], nginx: NginxProcess
) -> None:
    killed, staying = gateways
    assert killed.process is not None
    with steady_load(nginx.address) as load:
        load.wait_for_successes(CALLS_AROUND)
        assert answered_by(nginx) == {killed.address, staying.address}
        killed_at = time.monotonic()
        killed.process.kill()
        killed.process.wait()
        # The kernel closes a killed process's sockets as it tears it down, not when the signal is sent.
        gone_at = time.monotonic()
        load.wait_for_successes(CALLS_AROUND, started_after=gone_at)
    failures = [outcome for outcome in load.outcomes() if outcome.status != "OK"]
    # A call could have been in flight there only if it started before the gateway was gone and ended after the kill.
    assert all(outcome.started < gone_at and outcome.finished > killed_at for outcome in failures), failures
    assert len(failures) <= CLIENTS, failures
    assert {outcome.status for outcome in failures} <= {"UNAVAILABLE"}, failures
    # nginx logged every failed call against the killed gateway, and retried the refused ones.
    failed_lines = [line for line in nginx.access_lines() if line.grpc_status != "0"]
    assert len(failed_lines) == len(failures), nginx.errors()
    assert all(line.upstreams == [killed.address] for line in failed_lines), failed_lines
