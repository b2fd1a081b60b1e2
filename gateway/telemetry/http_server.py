"""The metrics port: prometheus_client's HTTP server over one collector on a registry of its own.

prometheus_client chooses the format from the Accept header: the text format by default,
OpenMetrics when the scraper asks for ``application/openmetrics-text``.
"""

from __future__ import annotations

from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server
from prometheus_client.registry import CollectorRegistry

from gateway.telemetry.exposition import SnapshotCollector
from gateway.telemetry.snapshot import Snapshot


class MetricsServer:
    """Serves ``/metrics`` on ``host:port`` from ``source()``, asked once per scrape."""

    def __init__(self, host: str, port: int, source: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(source))
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server: WSGIServer = server
        self.port = int(server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
