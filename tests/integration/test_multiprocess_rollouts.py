"""Rollouts across two gateway processes on one port, under load from eight concurrent clients.

One supervisor (``--processes 2``) runs two gateway processes sharing the port (SO_REUSEPORT), the
workers (through the broker) and the routing state (SQLite). Every client has its own connection,
so the kernel spreads them over both processes.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2_grpc

from gateway.telemetry.families import STAT_EXECUTIONS
from gateway.telemetry.peers import STATISTICS, ask
from gateway.wire.turnout.v1 import rollouts_pb2, rollouts_pb2_grpc
from tests.support.gateway_process import GatewayProcess, telemetry_dir_of, worker_pids
from tests.support.model_repository import copy_digits
from tests.support.raw_inference import Served, digits_request, own_channel, run_clients

CLIENTS = 8
Z_999 = 3.2905  # two-sided 99.9% normal quantile


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    repository = tmp_path_factory.mktemp("repository")
    copy_digits(repository)
    with GatewayProcess(repository, "--processes", "2", "--poll-interval-s", "0") as running:
        yield running


class Control:
    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = rollouts_pb2_grpc.RolloutsStub(self.channel)
        self.metadata = ()

    def set_stable(self, version: int) -> rollouts_pb2.PolicyState:
        policy = rollouts_pb2.Policy(stable=version)
        return self.stub.SetPolicy(rollouts_pb2.SetPolicyRequest(model="digits", policy=policy), metadata=self.metadata)

    def canary(self, version: int, weight: float, sticky_key: str = "") -> rollouts_pb2.PolicyState:
        request = rollouts_pb2.SetCanaryRequest(
            model="digits", version=version, weight_percent=weight, sticky_key=sticky_key, reason=f"{weight}%"
        )
        return self.stub.SetCanary(request, metadata=self.metadata)

    def rollback(self) -> rollouts_pb2.PolicyState:
        request = rollouts_pb2.RollbackRequest(model="digits", reason="bad canary")
        return self.stub.Rollback(request, metadata=self.metadata)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def control(gateway: GatewayProcess) -> Iterator[Control]:
    opened = Control(gateway.control_address)
    opened.set_stable(1)
    yield opened
    opened.close()


def test_both_processes_apply_every_change(gateway: GatewayProcess, control: Control) -> None:
    state = control.canary(2, 20)
    assert len(state.applied_by) == 2, "a change returns once every gateway process routes by it"
    assert state.policy.canary.weight_bp == 2_000


def test_canary_share_over_ten_thousand_requests(gateway: GatewayProcess, control: Control) -> None:
    control.canary(2, 20)
    served = run_clients(gateway.address, CLIENTS, 10_000 // CLIENTS)
    assert [s.error for s in served if s.error] == []
    on_canary = sum(s.version == "2" for s in served)
    n, p = len(served), 0.2
    margin = Z_999 * math.sqrt(n * p * (1 - p))
    assert n * p - margin <= on_canary <= n * p + margin, f"{on_canary} of {n} on the canary"


def test_connections_spread_over_both_processes(gateway: GatewayProcess) -> None:
    # ModelStatistics sums every process, so each process's own counters are read where it serves
    # them to its peers: more than one of them must have answered requests.
    request = digits_request(np.zeros((1, 64)))
    for _ in range(16):
        with own_channel(gateway.address) as channel:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    assert gateway.process is not None
    sockets = sorted(telemetry_dir_of(gateway.process.pid).glob("*.sock"))
    assert len(sockets) == 2
    served = []
    for path in sockets:
        snapshot = ask(path, STATISTICS)
        assert snapshot is not None
        served.append(sum(v for v in snapshot[STAT_EXECUTIONS].values() if isinstance(v, float)))
    assert all(count > 0 for count in served), served


def versions_by_key(address: str, keys: list[str]) -> dict[str, set[str]]:
    """Each key's versions over two requests, on connections that land on different processes."""
    seen: dict[str, set[str]] = {key: set() for key in keys}
    request = digits_request(np.zeros((1, 64)))
    for _ in range(2):
        with own_channel(address) as first, own_channel(address) as second:
            stubs = [service_pb2_grpc.GRPCInferenceServiceStub(c) for c in (first, second)]
            for position, key in enumerate(keys):
                response = stubs[position % 2].ModelInfer(request, metadata=(("x-user-id", key),), timeout=30)
                seen[key].add(response.model_version)
    return seen


def test_sticky_keys_only_move_onto_the_canary_as_the_weight_rises(gateway: GatewayProcess, control: Control) -> None:
    keys = [f"user-{index}" for index in range(200)]
    previous: dict[str, str] | None = None
    for weight in (10, 25, 50):
        control.canary(2, weight, sticky_key="x-user-id")
        seen = versions_by_key(gateway.address, keys)
        assert all(len(versions) == 1 for versions in seen.values()), "a key must keep one version"
        current = {key: versions.pop() for key, versions in seen.items()}
        share = sum(v == "2" for v in current.values()) / len(keys)
        assert abs(share - weight / 100) < 0.12
        if previous is not None:
            assert [k for k in keys if previous[k] == "2" and current[k] != "2"] == []
        previous = current


def test_rollback_mid_load_drops_nothing_and_takes_effect_when_it_returns(
    gateway: GatewayProcess, control: Control
) -> None:
    control.canary(2, 50)
    stop = threading.Event()
    outcome: list[Served] = []
    load = threading.Thread(target=lambda: outcome.extend(run_clients(gateway.address, CLIENTS, None, stop)))
    load.start()
    time.sleep(1.0)
    state = control.rollback()
    returned = time.monotonic()
    time.sleep(1.0)
    stop.set()
    load.join()

    assert [s.error for s in outcome if s.error] == [], "no request may fail across a rollback"
    before = [s for s in outcome if s.started < returned - 0.5]
    after = [s for s in outcome if s.started > returned]
    assert {s.version for s in before} == {"1", "2"}, "the canary served before the rollback"
    assert len(after) > 100 and {s.version for s in after} == {"1"}, "only stable once Rollback has returned"
    assert len(state.applied_by) == 2 and not state.policy.HasField("canary")

    history = control.stub.History(rollouts_pb2.HistoryRequest(model="digits", limit=3)).changes
    assert [change.action for change in history[:2]] == ["rollback", "set-canary"]
    assert history[0].actor == "local:127.0.0.1" and history[0].generation == state.generation
    assert history[0].before.canary.weight_bp == 5_000


def test_workers_are_shared_and_restart_under_load(gateway: GatewayProcess, control: Control) -> None:
    assert gateway.process is not None
    shared = worker_pids(gateway.process.pid)
    assert len(shared) == 2, "one worker per model version for the whole host, not per gateway process"
    stop = threading.Event()
    outcome: list[Served] = []
    load = threading.Thread(target=lambda: outcome.extend(run_clients(gateway.address, CLIENTS, None, stop)))
    load.start()
    time.sleep(0.5)
    victim = shared[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = worker_pids(gateway.process.pid)
        if len(now) == 2 and victim not in now:
            break
        time.sleep(0.1)
    recovered = time.monotonic()
    time.sleep(1.0)
    stop.set()
    load.join()
    failures = Counter(s.error.split(":")[0] for s in outcome if s.error)
    assert set(failures) <= {"UNAVAILABLE"} and sum(failures.values()) <= 2 * CLIENTS, failures
    assert [s for s in outcome if s.started > recovered + 0.5 and s.error] == []


def test_sigterm_stops_every_process_and_worker(tmp_path: Path) -> None:
    copy_digits(tmp_path, versions=(1,))
    gateway = GatewayProcess(tmp_path, "--processes", "2", "--poll-interval-s", "0").start()
    assert gateway.process is not None
    supervisor = gateway.process.pid
    workers = worker_pids(supervisor)
    assert len(workers) == 1
    listing = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True, check=True)
    children = [int(pid) for pid in listing.stdout.split()]
    assert len(children) >= 3, "two gateway processes and the worker zygote"
    assert gateway.stop(signal.SIGTERM) == 0
    for pid in [*children, *workers]:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
