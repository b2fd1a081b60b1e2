"""One gateway process's metrics, wired: the observer, the snapshot, and where they are served.

Alone, the process serves ``/metrics`` itself. As one of a supervisor's processes (a telemetry
directory is given) it serves its snapshot to its peers and the supervisor instead, and the
supervisor serves the port; ModelStatistics then sums every process's counters, asked here.
"""

from __future__ import annotations

import logging
from pathlib import Path

from gateway.routing.table import RoutingTableHolder
from gateway.serving.model_manager import ModelManager
from gateway.serving.model_views import StatisticsView, TrafficView
from gateway.telemetry.http_server import MetricsServer
from gateway.telemetry.observer import COUNTED, MetricsObserver
from gateway.telemetry.peers import EVERYTHING, RECENT, STATISTICS, SnapshotServer, gather
from gateway.telemetry.process_snapshot import (
    CaptureSource,
    DriftSource,
    ProcessSnapshot,
    RefusalSource,
    ShadowSource,
)
from gateway.telemetry.recent_traffic import ArmTraffic, RecentTraffic, from_snapshot, to_snapshot, traffic_view
from gateway.telemetry.shards import ThreadShards
from gateway.telemetry.snapshot import Snapshot, merge
from gateway.telemetry.statistics_families import add_statistics, statistics_of

log = logging.getLogger("turnout.metrics")


class GatewayMetrics:
    def __init__(
        self,
        manager: ModelManager,
        routes: RoutingTableHolder,
        *,
        port: int,
        host: str,
        directory: Path | None,
        shadows: ShadowSource | None = None,
        capture: CaptureSource | None = None,
        drift: DriftSource | None = None,
        refused: RefusalSource | None = None,
    ) -> None:
        """``port`` 0: nothing is counted (the observer is not even built); ``directory``: the
        supervisor's telemetry directory, when this is one of its processes."""
        shards = ThreadShards(COUNTED)
        self.observer = MetricsObserver(shards) if port != 0 else None
        # Each arm's last minute for turnout status: per-request telemetry too, so off with the port.
        self.recent = RecentTraffic() if port != 0 else None
        self.snapshot = ProcessSnapshot(
            shards, manager, routes, shadows=shadows, capture=capture, drift=drift, refused=refused
        )
        self._port = port
        self._host = host
        self._directory = directory
        self._peers: SnapshotServer | None = None
        self._server: MetricsServer | None = None

    @property
    def url(self) -> str | None:
        """Where this process serves /metrics; None when it does not."""
        return None if self._server is None else f"http://{self._host}:{self._server.port}/metrics"

    def start(self) -> None:
        if self._directory is not None:
            self._peers = SnapshotServer(
                self._directory, self.snapshot.take, self.snapshot.statistics, self._recent
            )
        elif self._port != 0:
            self._server = MetricsServer(self._host, self._port, self.snapshot.take)
            log.info("metrics on %s", self.url)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._peers is not None:
            self._peers.close()

    def every_process(self) -> Snapshot:
        """This process's whole snapshot, with every peer process's added (as it is, when alone):
        what a per-arm view of the whole gateway reads, as the supervisor's scrape does."""
        own = self.snapshot.take()
        if self._directory is None or self._peers is None:
            return own
        return merge([own, *gather(self._directory, EVERYTHING, skip=self._peers.path)])

    def _recent(self) -> Snapshot:
        return to_snapshot(self.recent.window()) if self.recent is not None else {}

    @property
    def counts_arms(self) -> bool:
        """False with ``--metrics-port 0``: no request is counted, so no rollout can be judged."""
        return self.recent is not None

    def arms_since_start(self) -> list[ArmTraffic]:
        """This process's arms counted since it began: what it publishes for a rollout's analysis,
        whose leader reads every process's from the state store (so every host's, too)."""
        return self.recent.since_start() if self.recent is not None else []

    def traffic(self, model: str) -> TrafficView:
        """A model's last minute per arm, summed over every gateway process (``turnout status``)."""
        if self.recent is None:
            return TrafficView(model, 0, 0, (), kept=False)
        own = self._recent()
        if self._directory is None or self._peers is None:
            return traffic_view(model, from_snapshot(own))
        peers = gather(self._directory, RECENT, skip=self._peers.path)
        return traffic_view(model, from_snapshot(merge([own, *peers])), processes=1 + len(peers))

    def process_wide(self, views: list[StatisticsView]) -> list[StatisticsView]:
        """ModelStatistics' views with every peer process's counters added (as they are, when alone)."""
        if self._directory is None or self._peers is None:
            return views
        peers = merge(gather(self._directory, STATISTICS, skip=self._peers.path))
        summed = []
        for view in views:
            own: Snapshot = {}
            add_statistics(own, view.model, view.version, view.snapshot)
            total = statistics_of(merge([own, peers]), view.model, view.version)
            summed.append(StatisticsView(view.model, view.version, total if total is not None else view.snapshot))
        return summed


def gathered(directory: Path) -> Snapshot:
    """Every gateway process's whole snapshot in ``directory``, merged (the supervisor's scrape)."""
    return merge(gather(directory, EVERYTHING))
