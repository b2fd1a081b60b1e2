"""``--gateway-cpus``: the gateway's threads stay on the CPUs named, its workers do not."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.support.gateway_process import GatewayFailedToStart, GatewayProcess, worker_pids
from tests.support.model_repository import copy_digits


def allowed_cpus(pid: int) -> set[int]:
    """The CPUs every thread of ``pid`` may run on (the union, so one stray thread shows)."""
    cpus: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        cpus |= os.sched_getaffinity(int(task.name))
    return cpus


def test_one_gateway_keeps_its_threads_on_the_cpus_named(tmp_path: Path) -> None:
    copy_digits(tmp_path, versions=(1,))
    everywhere = os.sched_getaffinity(0)
    with GatewayProcess(tmp_path, "--poll-interval-s", "0", "--gateway-cpus", str(min(everywhere))) as gateway:
        assert gateway.process is not None
        threads = list(Path(f"/proc/{gateway.process.pid}/task").iterdir())
        assert len(threads) > 3, "the gRPC server's threads are running"
        assert allowed_cpus(gateway.process.pid) == {min(everywhere)}
        [worker] = worker_pids(gateway.process.pid)
        assert allowed_cpus(worker) == everywhere, "workers are not confined with the gateway"


def test_each_gateway_process_gets_its_own_cpu(tmp_path: Path) -> None:
    copy_digits(tmp_path, versions=(1,))
    first = min(os.sched_getaffinity(0))
    # The same CPU listed twice round-robins onto one CPU, so this runs on a one-CPU machine too.
    flags = ("--processes", "2", "--poll-interval-s", "0", "--gateway-cpus", f"{first},{first}")
    with GatewayProcess(tmp_path, *flags) as gateway:
        assert gateway.process is not None
        supervisor = gateway.process.pid
        listing = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True)
        children = [int(pid) for pid in listing.stdout.split()]
        gateways = [pid for pid in children if Path(f"/proc/{pid}/comm").read_text().strip() != "turnout-zygote"]
        assert len(gateways) == 2
        for pid in gateways:
            assert allowed_cpus(pid) == {first}
        assert allowed_cpus(supervisor) == os.sched_getaffinity(0), "the supervisor stays free"
        [worker] = worker_pids(supervisor)
        assert allowed_cpus(worker) == os.sched_getaffinity(0)


def test_a_cpu_this_machine_lacks_is_refused_at_start(tmp_path: Path) -> None:
    copy_digits(tmp_path, versions=(1,))
    gateway = GatewayProcess(tmp_path, "--poll-interval-s", "0", "--gateway-cpus", "4095")
    with pytest.raises(GatewayFailedToStart, match=r"(?s)exit 2\).*cannot run the gateway on CPUs 4095"):
        gateway.start(timeout_s=30)
