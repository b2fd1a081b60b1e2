"""The supervisor of ``--processes N`` and its port: it never leaves a gateway behind on it, and never
shares it with a gateway it does not own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.gateway_process import REPO_ROOT, GatewayProcess
from tests.support.model_repository import copy_digits


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def gateway_children(supervisor: int) -> list[int]:
    """The supervisor's gateway processes (its other children are the broker's workers and the zygote)."""
    return [pid for pid in children_of(supervisor) if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes()]


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_child_dying_just_before_a_stop_is_not_started_again(tmp_path: Path) -> None:
    repository = copy_digits(tmp_path / "repository").parent
    gateway = GatewayProcess(repository, "--processes", "2", "--worker-mode", "inprocess", "--poll-interval-s", "0")
    with gateway:
        assert gateway.process is not None
        supervisor = gateway.process.pid
        first, _ = gateway_children(supervisor)
        os.kill(first, signal.SIGKILL)
        gateway.wait_for_log("starting it again")  # said before it waits a second to do so: stop now
        assert gateway.stop() == 0
        port, log = gateway.port, gateway.log()
    deadline = time.monotonic() + 10
    while not port_is_free(port):  # nothing may be left listening on it
        assert time.monotonic() < deadline, f"a process still holds port {port}"
        time.sleep(0.1)
    assert "starting it again" in log
    assert gateway_children(supervisor) == []


def test_a_supervisor_does_not_share_its_port_with_a_gateway_it_does_not_own(tmp_path: Path) -> None:
    repository = copy_digits(tmp_path / "repository").parent
    # A gateway that binds with SO_REUSEPORT, as an orphan of an earlier supervisor would.
    with GatewayProcess(repository, "--reuse-port", "--worker-mode", "inprocess", "--poll-interval-s", "0") as orphan:
        command = [sys.executable, "-m", "gateway", "serve", "--repository", str(repository), "--host", "127.0.0.1",
                   "--port", str(orphan.port), "--processes", "2", "--state-dir", str(tmp_path / "state")]  # fmt: skip
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"127.0.0.1:{orphan.port} is in use by another process" in done.stderr
    assert "Traceback" not in done.stderr
