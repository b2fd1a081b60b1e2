"""Starts a real ``turnout serve`` in a child process on a free port, for integration tests.

The gateway runs in its own interpreter because its generated ``inference`` messages and
tritonclient's cannot share one protobuf descriptor pool; the tests talk to it as any client would.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType

REPO_ROOT = Path(__file__).resolve().parents[2]
_READY_LINE = re.compile(r"^turnout: serving .* on (?P<host>[^\s]+):(?P<port>\d+)$")
_CONTROL_LINE = re.compile(r"^turnout: control plane on (?P<address>[^\s]+:\d+)$")


# Loads and unloads on the inference port need the control plane's credentials; tests that make them
# start the gateway with Triton's restricted model-repository protocol and send its header.
REPOSITORY_KEY = {"x-repository-key": "repository-key-for-tests"}
REPOSITORY_KEY_FLAG = "--grpc-restricted-protocol=model-repository:x-repository-key=repository-key-for-tests"


class GatewayFailedToStart(RuntimeError):
    """The child exited or stayed silent before printing its serving line."""


class GatewayProcess:
    """One gateway child process; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        repository: Path,
        *flags: str,
        env: dict[str, str] | None = None,
        cwd: Path = REPO_ROOT,
        own_flags: bool = True,
    ) -> None:
        """``own_flags=False`` leaves out --repository, --host, --port 0 and --state-dir: the test
        says where the gateway listens and keeps its state (Triton's flags, the default state)."""
        self.repository = repository
        self.flags = list(flags)
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.own_flags = own_flags
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.control_address = ""  # HOST:PORT of the control listener, from its start line
        # Closed in stop()/kill(); its name outlives it so the log can be read after the process ends.
        self._log = tempfile.NamedTemporaryFile("w+", prefix="turnout-", suffix=".log", delete=False)  # noqa: SIM115
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None
        self._own_state = ""  # a state directory made for this gateway alone, removed with it

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> GatewayProcess:
        # Each gateway gets its own routing state unless the test shares one on purpose.
        if "--state-dir" not in self.flags and self.own_flags:
            self._own_state = tempfile.mkdtemp(prefix="turnout-state-")
        state = ["--state-dir", self._own_state] if self._own_state else []
        place = ["--repository", str(self.repository), "--host", "127.0.0.1", "--port", "0"] if self.own_flags else []
        # Many gateways run at once in tests: no metrics port unless the test asks for one, and a free
        # control port unless the test names one.
        asks_metrics = any(flag.startswith(("--metrics-port", "--allow-metrics")) for flag in self.flags)
        metrics = [] if asks_metrics else ["--metrics-port", "0"]
        names_control = any(flag.startswith("--control-address") for flag in self.flags)
        names_control = names_control or "TURNOUT_CONTROL_ADDRESS" in self.env
        control = [] if names_control else ["--control-address", "127.0.0.1:0"]
        command = [sys.executable, "-m", "gateway", "serve", *place, *state, *metrics, *control, *self.flags]
        # The gateway is started as the `turnout` command would be from another directory, so it must
        # find its own package there.
        env = {**self.env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), self.env.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(
            command, cwd=self.cwd, env=env, stdout=subprocess.PIPE, stderr=self._log, text=True
        )
        ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stdout, args=(ready,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while not ready.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                log = self.log()
                self._remove_own_files()
                raise GatewayFailedToStart(f"gateway did not start (exit {self.process.returncode}); its log:\n{log}")
        return self

    def _read_stdout(self, ready: threading.Event) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.append(line)
            if control := _CONTROL_LINE.match(line.strip()):
                self.control_address = control["address"]
            match = _READY_LINE.match(line.strip())
            if match and not ready.is_set():
                self.port = int(match["port"])
            if self.port and self.control_address and not ready.is_set():  # the control line comes second
                ready.set()

    def log(self) -> str:
        """Everything the gateway wrote to stderr (its log) so far."""
        return Path(self._log.name).read_text()

    def wait_for_log(self, text: str, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if text in (log := self.log()):
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never appeared in the gateway log:\n{self.log()}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 30.0) -> int:
        """Send ``sig`` and wait for the exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._close_files()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close_files()

    def _close_files(self) -> None:
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
        self._remove_own_files()

    def _remove_own_files(self) -> None:
        Path(self._log.name).unlink(missing_ok=True)
        if self._own_state:
            shutil.rmtree(self._own_state, ignore_errors=True)


def worker_pids(gateway_pid: int) -> list[int]:
    """PIDs of the runtime workers a gateway (or supervisor) started: forked from its zygote, so
    named ``turnout-worker``, or spawned as ``python -m runtimes.worker``; children or grandchildren."""
    parents: dict[int, int] = {}
    workers = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name, after = stat.split("(", 1)[1].rsplit(")", 1)
        parents[int(entry.name)] = int(after.split()[1])
        if name == "turnout-worker" or b"runtimes.worker" in cmdline:
            workers.add(int(entry.name))

    def descends(pid: int) -> bool:
        for _ in range(2):  # the gateway's child, or its zygote's
            pid = parents.get(pid, 0)
            if pid == gateway_pid:
                return True
        return False

    return sorted(pid for pid in workers if descends(pid))


def telemetry_dir_of(supervisor_pid: int) -> Path:
    """The directory where a supervisor's gateway processes serve their metrics snapshots, read off
    a child's command line (``--telemetry-dir``)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == supervisor_pid and "--telemetry-dir" in cmdline:
            return Path(cmdline[cmdline.index("--telemetry-dir") + 1])
    raise AssertionError(f"no gateway process of {supervisor_pid} names a telemetry directory")
