"""Runs the shipped nginx configuration (deploy/nginx) in front of test gateways, as a child process.

The configuration is used as it is, with two things a test must choose: the port nginx listens on
and the gateways in its upstream file (written with the shipped file's server parameters). nginx
runs in the foreground with its own prefix directory for the pid file, logs and temporary files,
so it needs no root.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tests.support.gateway_process import REPO_ROOT

SHIPPED = REPO_ROOT / "deploy" / "nginx"
CONFIG = "turnout.conf"
UPSTREAMS = "turnout-upstreams.conf"
_LISTEN = re.compile(r"^(\s*listen\s+)8001(\s+http2;)$", re.MULTILINE)
_SERVER = re.compile(r"^server\s+\S+(?P<parameters>[^;]*);$", re.MULTILINE)


def nginx_binary() -> str | None:
    """nginx's path: on PATH, or where Debian puts it (/usr/sbin, which a user's PATH may lack)."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


class NginxFailedToStart(RuntimeError):
    """nginx exited, or did not listen, before it could take calls."""


@dataclass(frozen=True, slots=True)
class AccessLine:
    """One call in nginx's access log (the shipped ``turnout`` format)."""

    status: int
    upstreams: list[str]  # every gateway nginx tried, in order
    grpc_status: str  # "0" for OK; "-" when no gateway answered

    @property
    def retried(self) -> bool:
        return len(self.upstreams) > 1


def parse_access_line(line: str) -> AccessLine:
    fields = dict(part.split("=", 1) for part in line.split() if "=" in part)
    # nginx separates the tries with ", ", which splits the upstream field: read it off the line.
    tried = line.split("upstream=", 1)[1].split(" upstream_status=", 1)[0]
    trailer, header = fields["grpc_status_trailer"], fields["grpc_status_header"]
    return AccessLine(
        status=int(line.split('" ', 1)[1].split()[0]),
        upstreams=[address.strip() for address in tried.split(",")],
        grpc_status=trailer if trailer != "-" else header,
    )


class NginxProcess:
    """nginx with the shipped configuration, fronting ``upstreams`` (host:port of each gateway)."""

    def __init__(self, upstreams: list[str]) -> None:
        self.upstreams = upstreams
        self.prefix = Path(tempfile.mkdtemp(prefix="turnout-nginx-"))
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 10.0) -> NginxProcess:
        nginx = nginx_binary()
        if nginx is None:
            raise NginxFailedToStart("nginx is not on PATH (.ci/run installs Debian's package)")
        for directory in ("logs", "temp"):
            (self.prefix / directory).mkdir(exist_ok=True)
        self.port = _free_port()
        config = (SHIPPED / CONFIG).read_text()
        listening, replaced = _LISTEN.subn(rf"\g<1>127.0.0.1:{self.port}\g<2>", config)
        if replaced != 1:
            raise AssertionError(f"{CONFIG} should have exactly one `listen 8001 http2;` line, found {replaced}")
        (self.prefix / CONFIG).write_text(listening)
        (self.prefix / UPSTREAMS).write_text(upstream_file(self.upstreams))
        command = [nginx, "-c", str(self.prefix / CONFIG), "-p", str(self.prefix), "-g", "daemon off;"]
        # Before it has read its error_log line, nginx reports to stderr: keep that beside the log.
        with (self.prefix / "logs" / "stderr.log").open("wb") as stderr:
            self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        deadline = time.monotonic() + timeout_s
        while not _accepts(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise NginxFailedToStart(f"nginx did not start; its errors:\n{self.errors()}")
            time.sleep(0.02)
        return self

    def access_lines(self) -> list[AccessLine]:
        """The calls nginx has logged so far (it writes each line as the call ends)."""
        log = self.prefix / "logs" / "access.log"
        return [parse_access_line(line) for line in log.read_text().splitlines()] if log.exists() else []

    def errors(self) -> str:
        """What nginx reported: to stderr while starting, then to its error log."""
        logs = (self.prefix / "logs" / name for name in ("stderr.log", "error.log"))
        return "".join(log.read_text() for log in logs if log.exists())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()  # nginx's fast shutdown
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> NginxProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)


def upstream_file(addresses: list[str]) -> str:
    """The shipped upstream file's server lines, pointed at ``addresses`` with the same parameters."""
    servers = list(_SERVER.finditer((SHIPPED / UPSTREAMS).read_text()))
    if not servers:
        raise AssertionError(f"{UPSTREAMS} lists no `server` line")
    parameters = servers[0]["parameters"]
    return "".join(f"server {address}{parameters};\n" for address in addresses)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False
