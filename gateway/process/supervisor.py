"""``turnout serve --processes N``: N gateway processes on one port, sharing workers and routing state.

The supervisor reserves the port and the control listener's, runs the worker broker (one worker per
model instance for the whole host, see :mod:`runtimes.broker`), and starts N ordinary gateway
processes that bind both ports with SO_REUSEPORT, so the kernel spreads connections across them.
They share the routing state through the SQLite store under the state directory. A gateway process
that dies is started again; SIGTERM or SIGINT is passed on to every one, and the supervisor exits
once they have drained; SIGHUP (re-read certificates and control tokens) is passed on to every one
that is serving.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from gateway.edge.tls import TlsFileError, server_tls
from gateway.logs.configure import configure_logging
from gateway.process.reload_signal import reload_on_hangup
from gateway.process.stop_signals import stop_on_signals, wait_for_stop
from gateway.rollouts.control_access import open_locally_warning
from gateway.settings import Settings, split_address
from gateway.state.open_store import open_state_store
from gateway.state.store import StateUnavailable
from gateway.telemetry.supervisor_metrics import SupervisorMetrics
from runtimes.broker import WorkerBroker
from runtimes.zygote import Zygote, start_zygote

log = logging.getLogger("turnout.supervisor")

_RESTART_DELAY_S = 1.0
_START_TIMEOUT_S = 120.0


class PortTaken(RuntimeError):
    """The port is held by a process this supervisor does not own."""


def reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (without listening) a SO_REUSEPORT socket, so ``--port 0`` becomes one port for every process.

    First the port is bound without SO_REUSEPORT: that fails while any process listens on it, even one
    that set SO_REUSEPORT itself (an orphaned gateway of an earlier supervisor, say), which the
    SO_REUSEPORT bind would silently share the port with. SO_REUSEADDR keeps connections of an
    earlier run in TIME_WAIT from counting as a listener.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise PortTaken(f"{host}:{port} is in use by another process ({error.strerror}); not sharing it") from None
        port = int(probe.getsockname()[1])
    placeholder = socket.socket(family, socket.SOCK_STREAM)
    placeholder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    placeholder.bind((host, port))
    return placeholder, int(placeholder.getsockname()[1])


class _GatewayChild:
    """One gateway process, and the serving line it prints once it listens."""

    def __init__(self, command: list[str], index: int) -> None:
        self.index = index
        self.serving = threading.Event()
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read_stdout, name=f"gateway-{index}-stdout", daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("turnout: serving"):
                self.serving.set()
            elif not line.startswith("turnout: control plane on"):  # the supervisor says it once
                sys.stdout.write(line)


class Supervisor:
    def __init__(self, settings: Settings, zygote: Zygote | None = None) -> None:
        self.settings = settings
        # Unix socket paths must stay short (108 bytes), so they live in a fresh /tmp directory.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="turnout-"))
        self._placeholder, self.port = reserve_port(settings.host, settings.port)
        control_host, control_port = split_address(settings.control_address)
        try:
            self._control_placeholder, control_port = reserve_port(control_host.strip("[]"), control_port)
        except PortTaken:
            self._placeholder.close()
            raise
        self.control_address = f"{control_host}:{control_port}"
        self.broker = WorkerBroker(self._socket_dir, zygote=zygote)
        # Each gateway process serves its metrics snapshot here; the supervisor sums them.
        self._telemetry_dir = self._socket_dir / "telemetry"
        self._telemetry_dir.mkdir()
        self.metrics = SupervisorMetrics(self._telemetry_dir, self.broker.restarts)
        self._command = self._child_command()
        self._children: list[_GatewayChild] = []
        self._stopping = threading.Event()
        # Held to start a child and to begin stopping: no child is started once the stop has begun.
        self._life_lock = threading.Lock()

    def _child_command(self) -> list[str]:
        config = self._socket_dir / "gateway.yaml"
        inherited = self.settings.model_dump(
            mode="json",
            exclude={
                "processes", "port", "control_address", "worker_broker", "reuse_port", "gateway_cpus", "telemetry_dir"
            },
        )
        config.write_text(yaml.safe_dump(inherited))
        return [
            sys.executable, "-m", "gateway", "serve", "--config", str(config), "--processes", "1",
            "--port", str(self.port), "--control-address", self.control_address, "--reuse-port",
            "--worker-broker", str(self.broker.path),
            "--telemetry-dir", str(self._telemetry_dir),
        ]

    def _command_for(self, index: int) -> list[str]:
        cpus = self.settings.gateway_cpus
        # One gateway per core: process i gets the i-th listed CPU, round robin.
        return [*self._command, "--gateway-cpus", str(cpus[index % len(cpus)])] if cpus else self._command

    def start(self) -> None:
        # A server starting afresh serves what its repository says: explicit loads and unloads of an
        # earlier run do not carry over, as in Triton. A process restarted later does follow them.
        # A fleet's shared store (--state-url) keeps them: one host starting must not undo the others'.
        # Opened either way, so that a database out of reach, or of a newer schema, is said once here
        # rather than by every gateway process, each started again and again.
        store = open_state_store(self.settings)
        try:
            if self.settings.state_url is None:
                store.clear_repository_requests()
        finally:
            store.close()
        self._children = [_GatewayChild(self._command_for(index), index) for index in range(self.settings.processes)]
        deadline = time.monotonic() + _START_TIMEOUT_S
        for child in self._children:
            while not child.serving.wait(0.1):
                if child.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gateway process {child.index} did not start (exit {child.process.poll()})")
        if self.settings.metrics_port != 0:
            host = self.settings.metrics_host if self.settings.metrics_host is not None else self.settings.host
            self.metrics.serve(host, self.settings.metrics_port)

    def watch(self) -> None:
        """Start again any gateway process that exits while we are not stopping."""
        while not self._stopping.wait(0.2):
            for position, child in enumerate(self._children):
                code = child.process.poll()
                if code is None or self._stopping.is_set():
                    continue
                log.error("gateway process %d (pid %d) exited with %s; starting it again",
                          child.index, child.process.pid, code)
                if self._stopping.wait(_RESTART_DELAY_S):
                    return
                with self._life_lock:
                    if self._stopping.is_set():  # a stop began while we waited: start nothing it cannot see
                        return
                    self._children[position] = _GatewayChild(self._command_for(child.index), child.index)

    def reload(self) -> None:
        """SIGHUP to every gateway process that is serving: each re-reads its certificates and tokens.

        One still starting has not installed its SIGHUP handler yet, and SIGHUP's default would end
        it; it reads the files as they are now anyway.
        """
        with self._life_lock:
            for child in self._children:
                if child.serving.is_set() and child.process.poll() is None:
                    child.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        with self._life_lock:
            self._stopping.set()
        self.metrics.close()
        for child in self._children:
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_period_s + 10
        for child in self._children:
            try:
                child.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.error("gateway process %d did not stop in time; killing it", child.index)
                child.process.kill()
                child.process.wait()
        self.broker.close()
        self._placeholder.close()
        self._control_placeholder.close()
        shutil.rmtree(self._socket_dir, ignore_errors=True)


def supervise(settings: Settings) -> int:
    """Run N gateway processes until SIGTERM or SIGINT; returns the exit status."""
    configure_logging(settings)
    if not settings.repository.is_dir():
        log.error("model repository %s is not a directory", settings.repository)
        return 2
    try:  # checked here once, so that a wrong file is named once rather than by every process
        server_tls(settings)
    except TlsFileError as error:
        log.error("%s", error)
        return 2
    stop = stop_on_signals(f"stopping {settings.processes} gateway processes", log)
    # Forked first, while this process has one thread: the broker forks the shared workers from it.
    zygote = start_zygote() if settings.forks_workers else None
    try:
        supervisor = Supervisor(settings, zygote)
    except PortTaken as error:
        log.error("%s", error)
        if zygote is not None:
            zygote.close()
        return 2
    reload_on_hangup(supervisor.reload, log)  # before the start: SIGHUP's default would end the supervisor
    try:
        try:
            supervisor.start()
        except StateUnavailable as error:  # its message names the store and what is wrong with it
            log.error("%s", error)
            return 2
        threading.Thread(target=supervisor.watch, name="supervisor-watch", daemon=True).start()
        if supervisor.metrics.url is not None:
            print(f"turnout: metrics on {supervisor.metrics.url}", flush=True)
        print(
            f"turnout: serving {settings.repository} with {settings.processes} processes "
            f"on {settings.host}:{supervisor.port}",
            flush=True,
        )
        print(f"turnout: control plane on {supervisor.control_address}", flush=True)
        if settings.control_open_locally:
            log.warning("%s", open_locally_warning(supervisor.control_address))
        wait_for_stop(stop)
    finally:
        supervisor.stop()
        if zygote is not None:
            zygote.close()
    log.info("stopped")
    return 0
