"""The composition root: builds every part from the settings and runs the gateway until told to stop."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from gateway.analysis.latency import LatencyBuckets
from gateway.capture.drift_window import DriftWindow, repository_profiles
from gateway.capture.observer import CaptureObserver
from gateway.capture.parquet import repository_feature_names
from gateway.capture.writer import CaptureConfig, CaptureLog
from gateway.edge.control_gate import ControlGate
from gateway.edge.inference_servicer import InferenceServicer
from gateway.edge.repository_servicer import RepositoryServicer
from gateway.edge.rollouts_servicer import RolloutsServicer
from gateway.edge.server import GatewayServer
from gateway.edge.status import numbered_status_of
from gateway.edge.stream_slots import StreamSlots
from gateway.edge.tls import TlsFileError, server_tls
from gateway.logs.access import AccessLog
from gateway.logs.configure import configure_logging
from gateway.process.cpu_affinity import pin_gateway_threads
from gateway.process.reload_signal import reload_on_hangup
from gateway.process.stop_signals import stop_on_signals, wait_for_stop
from gateway.registry.repository import ModelRepository
from gateway.rollouts.arm_deltas import ArmTotals
from gateway.rollouts.compared_arms import compared_arms
from gateway.rollouts.control import Rollouts
from gateway.rollouts.control_access import (
    ControlAccess,
    ControlTokens,
    TokensFileInvalid,
    open_locally_warning,
    parse_restricted_header,
)
from gateway.rollouts.control_refusals import RefusedCalls
from gateway.rollouts.fleet import Fleet
from gateway.rollouts.policy_sync import PolicySync
from gateway.rollouts.progressive import ProgressiveRollouts
from gateway.rollouts.propagation import Propagation
from gateway.rollouts.repository_control import RepositoryControl
from gateway.rollouts.rollout_controller import RolloutController
from gateway.rollouts.shadow import ShadowMirror
from gateway.routing.table import RoutingTableHolder
from gateway.serving.dataplane import Dataplane
from gateway.serving.model_manager import ModelManager
from gateway.serving.model_version import HostFactory
from gateway.serving.model_views import ModelViews, TrafficView
from gateway.serving.observers import RequestObservers
from gateway.settings import Settings
from gateway.state.open_store import open_state_store
from gateway.state.store import StateUnavailable
from gateway.telemetry.gateway_metrics import GatewayMetrics
from gateway.telemetry.recent_traffic import BUCKET_BOUNDS_S, GROWTH
from gateway.telemetry.tracing import TracingObserver
from gateway.telemetry.tracing_setup import TracingSetupError, tracing_from_environment
from gateway.version import package_version
from runtimes.contract import ModelHost, RuntimeOptions
from runtimes.heap import freeze_startup_heap
from runtimes.zygote import Zygote, start_zygote

log = logging.getLogger("turnout")

# Every process reports its applied generation this often; a policy change stops waiting for a
# process that has been silent for _LIVENESS_S (it died without saying goodbye).
_HEARTBEAT_S = 0.5
_LIVENESS_S = 3.0


def host_factory(settings: Settings, zygote: Zygote | None = None) -> HostFactory:
    """Worker processes by default (shared through the broker when a supervisor runs several gateway
    processes; forked from ``zygote`` when there is one); the calling process when ``worker_mode``
    is ``inprocess``."""
    if settings.worker_mode == "inprocess":
        from runtimes.inprocess_host import InProcessHost

        def in_process(kind: str, artifact: Path, options: RuntimeOptions, label: str) -> ModelHost:
            return InProcessHost(kind, artifact, options)

        return in_process

    if settings.worker_broker is not None:
        from runtimes.shared_host import BrokerClient, SharedWorkerHost

        broker = BrokerClient(settings.worker_broker)

        def shared(kind: str, artifact: Path, options: RuntimeOptions, label: str) -> ModelHost:
            return SharedWorkerHost(broker, kind, artifact, options, label=label)

        return shared

    from runtimes.process_host import WorkerProcessHost

    def in_worker(kind: str, artifact: Path, options: RuntimeOptions, label: str) -> ModelHost:
        return WorkerProcessHost(kind, artifact, options, label=label, zygote=zygote)

    return in_worker


def capture_log(settings: Settings) -> CaptureLog | None:
    """The capture pipeline when ``--capture-dir`` is given."""
    if settings.capture_dir is None:
        return None
    config = CaptureConfig(
        settings.capture_dir,
        durability=settings.capture_durability,
        overflow=settings.capture_overflow,
        flush_s=settings.capture_flush_ms / 1e3,
        max_bytes=settings.capture_max_bytes,
        host=settings.capture_host,
    )
    return CaptureLog(config, repository_feature_names(settings.repository))


def tracing_observer() -> TracingObserver | None:
    """Spans of every request, when OpenTelemetry's standard environment turns tracing on; else None."""
    setup = tracing_from_environment(package_version())
    if setup is None:
        return None
    return TracingObserver(setup, numbered_status_of, package_version())


def metrics_host(settings: Settings) -> str:
    """Where the metrics port listens: --metrics-host, else the gRPC --host."""
    return settings.metrics_host if settings.metrics_host is not None else settings.host


def drift_window(settings: Settings, repository: ModelRepository) -> DriftWindow | None:
    """Running drift against each version's ``reference.parquet``, unless ``--drift-window-rows 0``
    or ``--metrics-port 0`` (the metrics are what reads the window)."""
    if settings.drift_window_rows == 0 or settings.metrics_port == 0:
        return None
    return DriftWindow(repository_profiles(repository), settings.drift_window_rows)


def arm_latency_buckets() -> LatencyBuckets:
    """The per-arm totals' histogram layout (50 µs x 1.25^i), for the rollout analysis: it tests a
    latency ratio in whole buckets of 25% (1.2 is tested as 1.25)."""
    return LatencyBuckets(first_bound_s=BUCKET_BOUNDS_S[0], growth=GROWTH, bounds=len(BUCKET_BOUNDS_S))


def control_access(settings: Settings) -> ControlAccess:
    """Who may use the control plane, from the settings; raises TokensFileInvalid for a bad tokens file."""
    tokens = ControlTokens(settings.control_tokens_file) if settings.control_tokens_file is not None else None
    header = parse_restricted_header(settings.model_repository_header) if settings.model_repository_header else None
    certificates = settings.control_client_ca_file is not None
    return ControlAccess(
        tokens, certificates=certificates, restricted_header=header, open_locally=settings.control_open_locally
    )


class Gateway:
    """Every part of one gateway process, wired together."""

    def __init__(self, settings: Settings, zygote: Zygote | None = None) -> None:
        self.settings = settings
        # First: a certificate file that is wrong stops the start before anything else is opened.
        self.tls = server_tls(settings)
        # The one seam for whatever watches finished requests; every observer is registered below.
        self.observers = RequestObservers()
        # One repository object for every reader, so what it logs about a model is said once.
        repository = ModelRepository(settings.repository)
        self.manager = ModelManager(
            repository,
            host_factory(settings, zygote),
            RuntimeOptions(settings.intra_op_threads, settings.inter_op_threads),
            poll_interval_s=settings.poll_interval_s,
            drain_timeout_s=settings.drain_timeout_s,
            on_batch_finished=self.observers.batch_finished,
            load_threads=settings.model_load_threads,
        )
        self.store = open_state_store(settings)
        self.routes = RoutingTableHolder()
        self.sync = PolicySync(
            self.store,
            self.routes,
            self.manager,
            poll_interval_s=settings.policy_poll_interval_s,
            heartbeat_interval_s=_HEARTBEAT_S,
            rollback_window_s=settings.rollback_window_s,
        )
        self.capture = capture_log(settings)
        capturing = (
            CaptureObserver(self.capture, settings.capture_sample, settings.capture_outputs)
            if self.capture is not None
            else None
        )
        self.shadows = ShadowMirror(
            lambda model, version: self.manager.acquire(model, str(version)),
            settings.shadow_queue_size,
            settings.shadow_timeout_s,
        )
        self.observers.register(self.shadows)
        if capturing is not None:
            self.shadows.tell_answers_to(capturing.observe_shadows)
            self.observers.register(capturing, holds_answers=settings.capture_durability == "sync")
        self.drift = drift_window(settings, repository)
        if self.drift is not None:
            self.observers.register(self.drift)
        # --access-log: a line per request (or a sample), written by the access log's own thread.
        self.access_log = AccessLog(settings.access_log_sample) if settings.access_log else None
        if self.access_log is not None:
            self.observers.register(self.access_log)
        # Traces: only when OpenTelemetry's environment asks for them (OTEL_TRACES_EXPORTER).
        self.tracing = tracing_observer()
        if self.tracing is not None:
            self.observers.register(self.tracing)
            self.shadows.tell_answers_to(self.tracing.observe_shadows)
        self.access = control_access(settings)
        self.refused = RefusedCalls(self.store)
        self.metrics = GatewayMetrics(
            self.manager,
            self.routes,
            port=settings.metrics_port,
            host=metrics_host(settings),
            directory=settings.telemetry_dir,
            shadows=self.shadows,
            capture=self.capture,
            drift=self.drift,
            refused=self.refused,
        )
        if self.metrics.observer is not None:  # --metrics-port 0: requests carry nothing for metrics
            self.observers.register(self.metrics.observer)
        if self.metrics.recent is not None:  # each arm's last minute, for turnout status
            self.observers.register(self.metrics.recent)
        propagation = Propagation(
            self.store, self.sync, apply_timeout_s=settings.apply_timeout_s, liveness_s=_LIVENESS_S
        )
        self.rollouts = Rollouts(self.store, self.routes, self.manager, self.shadows, propagation)
        self.progressive = ProgressiveRollouts(self.store, self.rollouts, self.metrics.counts_arms)
        # Every process runs the loop and publishes its per-arm totals to the store; the one holding
        # the store's lease judges, over every process's totals (on every host sharing the store).
        self.rollout_controller = RolloutController(
            self.store, self.rollouts, self._arms_since_start, arm_latency_buckets()
        )
        self.repository = RepositoryControl(self.manager, self.store, self.sync, propagation)
        self.dataplane = Dataplane(self.manager, self.routes, self.observers, settings.max_in_flight)
        self._stopping = threading.Event()
        views = ModelViews(self.manager, self.metrics.process_wide)
        inference_gate = ControlGate(self.access, self.refused, control_listener=False)
        control_gate = ControlGate(self.access, self.refused, control_listener=True)
        self.server = GatewayServer(
            settings,
            InferenceServicer(
                self.dataplane,
                views,
                RepositoryServicer(views, self.repository, inference_gate),
                self.is_ready,
                package_version(),
                StreamSlots(settings.stream_limit, settings.max_streams_per_connection),
                settings.max_tensor_elements,
            ),
            RolloutsServicer(
                self.rollouts, self.traffic, control_gate, Fleet(self.store, _LIVENESS_S), self.progressive
            ),
            RepositoryServicer(views, self.repository, control_gate),
            is_ready=self.is_ready,
            control_ready=lambda: self.sync.state_problem is None,
            tls=self.tls,
        )

    def _arms_since_start(self) -> list[ArmTotals]:
        """What this process publishes for a rollout's analysis: each arm's requests, and each
        shadow's comparisons (for ``--max-divergence``), since the process began."""
        return [*self.metrics.arms_since_start(), *compared_arms(self.shadows.every_figures())]

    def traffic(self, model: str) -> TrafficView:
        """A model's last minute per arm, as ``turnout status`` shows it."""
        return self.metrics.traffic(model)

    def is_ready(self) -> bool:
        up = self.manager.initial_load_done and not self._stopping.is_set()
        return up and (not self.settings.strict_readiness or self.manager.every_model_ready())

    def reload(self) -> None:
        """SIGHUP: re-read what can change while serving (TLS certificates, control tokens), each on its own."""
        if self.tls is not None:
            self.tls.reload()
        self._reload_tokens()

    def _reload_tokens(self) -> None:
        tokens = self.access.tokens
        if tokens is None:
            return
        try:
            count = tokens.reload()
        except TokensFileInvalid as error:
            log.error("%s; no control token is accepted until the file is fixed and SIGHUP sent again", error)
            return
        log.info("control tokens re-read from %s: %d token(s)", tokens.path, count)

    def start(self) -> None:
        if self.settings.worker_broker is None and self.settings.state_url is None:
            # Not one of a supervisor's processes, so a server starting afresh: earlier explicit loads
            # and unloads do not carry over, as in Triton (the supervisor clears them for its own).
            # A fleet's shared store keeps them: one host starting must not undo what the others follow.
            self.store.clear_repository_requests()
        if self.capture is not None:  # what a crashed run left is compacted before this one is ready
            self.capture.recover()
            self.capture.start()
        if self.access_log is not None:
            self.access_log.start()
        self.manager.start()
        self.sync.start()  # loads what the stored policies name before the port opens
        self.server.start()
        self.metrics.start()
        self.rollout_controller.start()

    def stop(self) -> None:
        """Graceful stop: NOT_SERVING, refuse new calls, finish in-flight ones, unload models."""
        self._stopping.set()
        self.rollout_controller.close()  # first: no step change while the gateway goes down
        self.server.stop(self.settings.grace_period_s)
        self.metrics.close()
        self.sync.close()
        self.shadows.close()
        self.manager.close()
        if self.capture is not None:  # after the dispatchers: every record is buffered by now
            self.capture.close()
        if self.access_log is not None:  # after the dispatchers too: the last lines are written
            self.access_log.close()
        if self.tracing is not None:  # after the dispatchers and shadows: every span is built, then flushed
            self.tracing.close()
        self.store.close()


def serve(settings: Settings) -> int:
    """Run until SIGTERM or SIGINT; returns the process exit status."""
    configure_logging(settings)
    if not settings.repository.is_dir():
        log.error("model repository %s is not a directory", settings.repository)
        return 2
    # Forked first, while this process has one thread; the broker forks shared workers instead.
    zygote = start_zygote() if settings.forks_workers else None
    try:
        if settings.gateway_cpus and not pin_gateway_threads(settings.gateway_cpus):
            return 2
        return _run(settings, zygote)
    except TracingSetupError as error:
        log.error("%s", error)
        return 2
    finally:
        if zygote is not None:
            zygote.close()


def _run(settings: Settings, zygote: Zygote | None) -> int:
    try:
        gateway = Gateway(settings, zygote)
    except (StateUnavailable, TlsFileError, TokensFileInvalid) as error:  # a corrupt state, certificate or tokens file
        log.error("%s", error)
        return 2
    except OSError as error:  # a port taken (the inference port's or the control listener's)
        log.error("cannot start: %s", error)
        return 2
    stop = stop_on_signals("stopping", log)
    reload_on_hangup(gateway.reload, log)
    gateway.start()
    if gateway.access.open_locally and settings.worker_broker is None:  # said once, not by each process
        log.warning("%s", open_locally_warning(gateway.server.control_address))
    # Models, modules and the server are loaded: keep them out of the collector's way from now on.
    log.info("%d start-up objects frozen out of garbage collection", freeze_startup_heap())
    if gateway.metrics.url is not None:
        print(f"turnout: metrics on {gateway.metrics.url}", flush=True)
    # Tests and scripts read this line to find the port when started with --port 0.
    print(f"turnout: serving {settings.repository} on {settings.host}:{gateway.server.port}", flush=True)
    print(f"turnout: control plane on {gateway.server.control_address}", flush=True)
    wait_for_stop(stop)
    gateway.stop()
    log.info("stopped")
    return 0
