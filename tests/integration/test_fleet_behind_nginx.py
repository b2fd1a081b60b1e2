"""Three hosts behind nginx, one routing state in PostgreSQL: a rollback under load reaches all six processes.

Each "host" is a gateway supervisor with two processes, its own port and its own --state-dir; all
three share one --state-url. nginx (deploy/nginx) spreads steady load over them. A rollback issued
on one host returns only once all six processes apply it: no call fails, and every call that
started after it returned is answered by the stable version, whichever host served it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest

from gateway.wire.turnout.v1 import rollouts_pb2 as pb
from gateway.wire.turnout.v1 import rollouts_pb2_grpc as pb_grpc
from tests.support.gateway_process import GatewayProcess
from tests.support.model_repository import copy_digits
from tests.support.nginx_process import NginxProcess, nginx_binary
from tests.support.postgres import own_database
from tests.support.raw_inference import Served, run_clients

pytestmark = pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed; .ci/run installs it")

HOSTS, PROCESSES, CLIENTS = 3, 2, 4
TIMEOUT_S = 30.0


@pytest.fixture
def fleet(tmp_path: Path, postgres_server: str) -> Iterator[list[GatewayProcess]]:
    repository = copy_digits(tmp_path / "repository").parent
    with own_database(postgres_server) as url, ExitStack() as stack:
        flags = ("--processes", str(PROCESSES), "--poll-interval-s", "0", "--state-url", url)
        yield [
            stack.enter_context(GatewayProcess(repository, *flags, "--state-dir", str(tmp_path / f"state-{host}")))
            for host in range(HOSTS)
        ]


def test_a_rollback_on_one_host_returns_once_all_six_processes_apply_it(fleet: list[GatewayProcess]) -> None:
    first, _, last = fleet
    with (
        NginxProcess([gateway.address for gateway in fleet]) as nginx,
        grpc.insecure_channel(first.control_address) as first_control,
        grpc.insecure_channel(last.control_address) as last_control,
    ):
        set_on_first = pb_grpc.RolloutsStub(first_control)
        set_on_first.SetPolicy(pb.SetPolicyRequest(model="digits", policy=pb.Policy(stable=1)), timeout=TIMEOUT_S)
        canary = set_on_first.SetCanary(
            pb.SetCanaryRequest(model="digits", version=2, weight_percent=100, reason="all on v2"), timeout=TIMEOUT_S
        )
        assert len(canary.applied_by) == HOSTS * PROCESSES
        stop = threading.Event()
        outcome: list[Served] = []
        loader = threading.Thread(target=lambda: outcome.extend(run_clients(nginx.address, CLIENTS, None, stop)))
        loader.start()
        try:
            time.sleep(2.0)  # steady load on every host
            rolled_back = pb_grpc.RolloutsStub(last_control).Rollback(
                pb.RollbackRequest(model="digits", reason="v2 is bad"), timeout=TIMEOUT_S
            )
            returned = time.monotonic()
            time.sleep(2.0)
        finally:
            stop.set()
            loader.join()
        assert len(rolled_back.applied_by) == HOSTS * PROCESSES, "every process of every host applied it"
        assert rolled_back.policy == pb.Policy(stable=1)
        assert [served.error for served in outcome if served.error] == [], "zero failed requests"
        before = [served for served in outcome if served.started < returned]
        after = [served for served in outcome if served.started > returned]
        assert before and after
        assert {served.version for served in after} == {"1"}, "every call after the rollback: the stable version"
        answered = {line.upstreams[-1] for line in nginx.access_lines() if line.grpc_status == "0"}
        assert answered == {gateway.address for gateway in fleet}, "every host served"
        fleet_view = pb_grpc.RolloutsStub(first_control).GetFleet(pb.FleetRequest(), timeout=TIMEOUT_S)
        assert len(fleet_view.processes) == HOSTS * PROCESSES
        assert {p.host for p in fleet_view.processes} == {os.uname().nodename}
