"""The supervisor's metrics port: every gateway process's snapshot, summed at each scrape, plus the
restarts of the shared workers, which only the supervisor's broker sees."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from gateway.telemetry.families import WORKER_RESTARTS
from gateway.telemetry.gateway_metrics import gathered
from gateway.telemetry.http_server import MetricsServer
from gateway.telemetry.snapshot import Snapshot, add_into

log = logging.getLogger("turnout.metrics")

# (artifact path, restarts) per shared worker: <repository>/<model>/<version>/<file>.
WorkerRestarts = Callable[[], list[tuple[str, int]]]


class SupervisorMetrics:
    def __init__(self, directory: Path, restarts: WorkerRestarts) -> None:
        self._directory = directory
        self._restarts = restarts
        self._server: MetricsServer | None = None
        self._host = ""

    @property
    def url(self) -> str | None:
        return None if self._server is None else f"http://{self._host}:{self._server.port}/metrics"

    def serve(self, host: str, port: int) -> None:
        self._host = host
        self._server = MetricsServer(host, port, self.snapshot)
        log.info("metrics on %s, summed over the gateway processes", self.url)

    def snapshot(self) -> Snapshot:
        total = gathered(self._directory)
        for artifact, count in self._restarts():
            path = Path(artifact)
            add_into(total, WORKER_RESTARTS, (path.parent.parent.name, path.parent.name), float(count))
        return total

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
