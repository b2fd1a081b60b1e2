"""A fleet on one PostgreSQL database: gateways on their own ports and state directories, one --state-url.

Each gateway stands for a host. A change made through one is served by the others, returns only
once all of them applied it, survives the database going away (fail static) and names a gateway
that was killed until its heartbeat lapses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.state.postgres_schema import SCHEMA_VERSION
from gateway.state.postgres_store import PostgresStateStore
from gateway.wire.turnout.v1 import rollouts_pb2 as pb
from gateway.wire.turnout.v1 import rollouts_pb2_grpc as pb_grpc
from tests.support.gateway_process import REPO_ROOT, GatewayProcess
from tests.support.model_repository import copy_digits
from tests.support.postgres import PrivateCluster, cut_off, own_database, restore
from tests.support.raw_inference import infer_version

TIMEOUT_S = 20.0


@pytest.fixture
def state_url(postgres_server: str) -> Iterator[str]:
    with own_database(postgres_server) as url:
        yield url


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    return copy_digits(tmp_path / "repository").parent


def host(repository: Path, tmp_path: Path, name: str, state_url: str, *flags: str) -> GatewayProcess:
    """A gateway standing for one host: its own port, its own --state-dir, the fleet's --state-url."""
    return GatewayProcess(
        repository, "--worker-mode", "inprocess", "--state-dir", str(tmp_path / f"state-{name}"),
        "--state-url", state_url, *flags,
    )  # fmt: skip


def steady_load(addresses: list[str], pixels: npt.NDArray[np.float32], stop: threading.Event,
                served: list[str]) -> None:  # fmt: skip
    """Calls to each gateway in turn until ``stop``; each answer's version (or the failure) into ``served``."""
    while not stop.is_set():
        for address in addresses:
            try:
                served.append(infer_version(address, pixels))
            except grpc.RpcError as error:
                served.append(f"{error.code().name}: {error.details()}")


def control(gateway: GatewayProcess) -> tuple[grpc.Channel, pb_grpc.RolloutsStub]:
    channel = grpc.insecure_channel(gateway.control_address)
    return channel, pb_grpc.RolloutsStub(channel)


def full_canary(version: int) -> pb.SetCanaryRequest:
    return pb.SetCanaryRequest(model="digits", version=version, weight_percent=100, reason="all on the canary")


def eventually(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_a_canary_set_through_one_host_is_served_by_the_other_and_a_rollback_waits_for_both(
    tmp_path: Path, repository: Path, state_url: str, digits_pixels: npt.NDArray[np.float32]
) -> None:
    pixels = digits_pixels[:1]
    with host(repository, tmp_path, "a", state_url) as a, host(repository, tmp_path, "b", state_url) as b:
        channel_a, rollouts_a = control(a)
        channel_b, rollouts_b = control(b)
        try:
            rollouts_a.SetPolicy(pb.SetPolicyRequest(model="digits", policy=pb.Policy(stable=1)), timeout=TIMEOUT_S)
            canary = rollouts_a.SetCanary(full_canary(2), timeout=TIMEOUT_S)
            assert len(canary.applied_by) == 2, "both hosts applied it before the call returned"
            assert infer_version(b.address, pixels) == "2", "set through a, served by b"
            assert rollouts_b.GetPolicy(pb.GetPolicyRequest(model="digits"), timeout=TIMEOUT_S).generation == (
                canary.generation
            )
            rolled_back = rollouts_b.Rollback(pb.RollbackRequest(model="digits", reason="bad"), timeout=TIMEOUT_S)
            assert rolled_back.generation > canary.generation and len(rolled_back.applied_by) == 2
            assert infer_version(a.address, pixels) == "1", "returned only once a applied it too"
            fleet = rollouts_a.GetFleet(pb.FleetRequest(), timeout=TIMEOUT_S)
            assert fleet.generation == rolled_back.generation
            assert sorted(p.process_id for p in fleet.processes) == sorted(rolled_back.applied_by)
            assert all(p.live and p.applied_generation == fleet.generation for p in fleet.processes)
            assert {p.host for p in fleet.processes} == {os.uname().nodename}
        finally:
            channel_a.close()
            channel_b.close()
        # A history of the fleet, whichever host asks.
        assert "routing state (policies, history) in PostgreSQL at" in a.log()
        assert state_url.rsplit("/", 1)[1] in a.log()


@dataclass
class Outage:
    """A way for the fleet's database to go away and come back, and the state URL the hosts use."""

    state_url: str
    go_down: Callable[[], None]
    come_back: Callable[[], None]


@pytest.fixture(params=["cut off", "stopped"])
def outage(request: pytest.FixtureRequest, postgres_server: str) -> Iterator[Outage]:
    """"cut off": the test's database refuses connections and its open ones are ended (the shared
    server runs on); "stopped": a private cluster of the test's own is shut down and started again."""
    if request.param == "cut off":
        with own_database(postgres_server) as url:
            yield Outage(url, lambda: cut_off(postgres_server, url), lambda: restore(postgres_server, url))
        return
    with PrivateCluster() as cluster, own_database(cluster.url) as url:
        yield Outage(url, cluster.stop, cluster.start)


def test_the_database_gone_serves_on_refuses_changes_and_catches_up_when_back(
    tmp_path: Path, repository: Path, outage: Outage, digits_pixels: npt.NDArray[np.float32]
) -> None:
    pixels = digits_pixels[:1]
    state_url = outage.state_url
    with host(repository, tmp_path, "a", state_url) as a, host(repository, tmp_path, "b", state_url) as b:
        channel_a, rollouts_a = control(a)
        channel_b, rollouts_b = control(b)
        try:
            rollouts_a.SetPolicy(pb.SetPolicyRequest(model="digits", policy=pb.Policy(stable=1)), timeout=TIMEOUT_S)
            rollouts_a.SetCanary(full_canary(2), timeout=TIMEOUT_S)
            stop_load = threading.Event()
            served: list[str] = []
            load = threading.Thread(target=steady_load, args=([a.address, b.address], pixels, stop_load, served))
            load.start()
            outage.go_down()
            try:
                with pytest.raises(grpc.RpcError) as refused:
                    rollouts_b.Rollback(pb.RollbackRequest(model="digits", reason="db down"), timeout=TIMEOUT_S)
                assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
                assert "the routing state database 127.0.0.1:" in (refused.value.details() or "")
                assert "cannot be reached" in (refused.value.details() or "")
                said = "serving with the policies applied so far"
                a.wait_for_log(said)
                b.wait_for_log(said)
                time.sleep(1.5)  # three safety polls later, still said once
                assert a.log().count(said) == 1
                with grpc.insecure_channel(b.address) as channel:  # health: inference serves, changes wait
                    check = health_pb2_grpc.HealthStub(channel).Check
                    status = {name: check(health_pb2.HealthCheckRequest(service=name), timeout=TIMEOUT_S).status
                              for name in ("inference.GRPCInferenceService", "turnout.v1.Rollouts")}  # fmt: skip
                assert status == {"inference.GRPCInferenceService": health_pb2.HealthCheckResponse.SERVING,
                                  "turnout.v1.Rollouts": health_pb2.HealthCheckResponse.NOT_SERVING}  # fmt: skip
            finally:
                outage.come_back()
                stop_load.set()
                load.join()
            assert served and set(served) == {"2"}, "inference never noticed: every call served by the last policy"
            a.wait_for_log("the routing state can be read again")

            def rolled_back() -> bool:
                try:
                    rollouts_b.Rollback(pb.RollbackRequest(model="digits", reason="db back"), timeout=TIMEOUT_S)
                    return True
                except grpc.RpcError as error:
                    assert error.code() is grpc.StatusCode.UNAVAILABLE, error
                    return False

            eventually(rolled_back, "a change is accepted again")
            assert infer_version(a.address, pixels) == "1" and infer_version(b.address, pixels) == "1"
        finally:
            channel_a.close()
            channel_b.close()
        assert "Traceback" not in a.log() + b.log()


def test_a_killed_host_is_named_until_its_heartbeat_lapses_and_catches_up_when_restarted(
    tmp_path: Path, repository: Path, state_url: str, digits_pixels: npt.NDArray[np.float32]
) -> None:
    pixels = digits_pixels[:1]
    with host(repository, tmp_path, "a", state_url, "--apply-timeout-s", "1") as a:
        b = host(repository, tmp_path, "b", state_url).start()
        channel_a, rollouts_a = control(a)
        try:
            first = rollouts_a.SetPolicy(
                pb.SetPolicyRequest(model="digits", policy=pb.Policy(stable=1)), timeout=TIMEOUT_S
            )
            assert b.process is not None
            [b_process] = [p for p in first.applied_by if f":{b.process.pid}:" in p]
            b.kill()
            with pytest.raises(grpc.RpcError) as late:
                rollouts_a.SetCanary(full_canary(2), timeout=TIMEOUT_S)
            assert late.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            details = late.value.details() or ""
            assert f"process {b_process} on host {os.uname().nodename}" in details and "last heartbeat" in details
            fleet = rollouts_a.GetFleet(pb.FleetRequest(), timeout=TIMEOUT_S)
            assert [p.live for p in fleet.processes if p.process_id == b_process] == [True]
            time.sleep(3.5)  # the liveness window: b's heartbeat lapses
            fleet = rollouts_a.GetFleet(pb.FleetRequest(), timeout=TIMEOUT_S)
            assert [p.live for p in fleet.processes if p.process_id == b_process] == [False]
            cleared = pb.SetCanaryRequest(model="digits", clear=True, reason="b is gone; a is enough")
            done = rollouts_a.SetCanary(cleared, timeout=TIMEOUT_S)
            assert b_process not in done.applied_by and len(done.applied_by) == 1
            with host(repository, tmp_path, "b", state_url) as again:  # ready only once it caught up
                assert infer_version(again.address, pixels) == "1"
                canary = rollouts_a.SetCanary(full_canary(2), timeout=TIMEOUT_S)
                assert len(canary.applied_by) == 2
                assert infer_version(again.address, pixels) == "2"
        finally:
            channel_a.close()
            b.kill()


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_gateway_older_than_the_schema_refuses_to_start_naming_both_versions(
    tmp_path: Path, repository: Path, state_url: str, processes: str
) -> None:
    PostgresStateStore(state_url).close()  # the schema as this Turnout makes it
    with psycopg.connect(state_url, autocommit=True) as connection:  # as a newer Turnout would leave it
        connection.execute("UPDATE turnout_schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    command = [sys.executable, "-m", "gateway", "serve", "--repository", str(repository), "--port", "0",
               "--state-dir", str(tmp_path / "state"), "--state-url", state_url, "--worker-mode", "inprocess",
               "--processes", processes]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    said = f"has schema version {SCHEMA_VERSION + 1}, newer than version {SCHEMA_VERSION} that this Turnout knows"
    assert said in done.stderr
    assert "Traceback" not in done.stderr
