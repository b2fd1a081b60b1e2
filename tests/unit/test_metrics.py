"""Metrics without sockets: the observer's per-thread shards, their sums, and the exposed names."""

from __future__ import annotations

import math
import threading
import uuid
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from gateway.edge.status import STATUS_BY_ERROR
from gateway.errors import DeadlineExceeded, Internal, InvalidArgument, NotFound, TurnoutError, Unavailable
from gateway.registry.repository import ModelRepository
from gateway.routing.decide import Arm, Reason
from gateway.routing.table import RoutingTableHolder
from gateway.serving.inference_types import InferRequest
from gateway.serving.model_manager import ModelManager
from gateway.serving.observers import Finished, Route, Timings, uuid4_hex
from gateway.serving.statistics import VersionStatistics
from gateway.telemetry.exposition import SnapshotCollector
from gateway.telemetry.families import DURATION_BUCKETS_S, REQUEST_DURATION, REQUESTS, WORKER_RESTARTS
from gateway.telemetry.gateway_metrics import GatewayMetrics
from gateway.telemetry.observer import MetricsObserver
from gateway.telemetry.snapshot import Snapshot, merge
from gateway.telemetry.statistics_families import add_statistics, statistics_of
from gateway.telemetry.status_codes import CODE_BY_ERROR, code_of, reason_of
from gateway.telemetry.supervisor_metrics import SupervisorMetrics
from gateway.telemetry.window import difference, histogram_quantile
from runtimes.contract import ModelHost, RuntimeOptions


def finished(
    version: int = 1,
    arm: Arm = Arm.STABLE,
    error: TurnoutError | None = None,
    *,
    latency_s: float = 0.002,
    queue_s: float = 0.0005,
    compute_s: float = 0.001,
    rows: int = 1,
    routed: bool = True,
) -> Finished:
    route = Route("digits", version, arm, 3, Reason.RANDOM) if routed else None
    timings = Timings(0, latency_s, queue_s, compute_s)
    return Finished(InferRequest("digits", "", "", []), route, None, rows, None, error, timings)


def samples(snapshot: Snapshot, openmetrics: bool = False) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every exposed sample by (name, labels), parsed back from the text format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(lambda: snapshot))
    text = (generate_openmetrics if openmetrics else generate_latest)(registry).decode()
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_every_domain_error_has_the_status_name_the_edge_answers_with() -> None:
    assert set(CODE_BY_ERROR) == set(STATUS_BY_ERROR)
    for kind, code in STATUS_BY_ERROR.items():
        assert code_of(kind("x")) == code.name

    class Narrower(Unavailable):
        pass

    assert code_of(Narrower("x")) == "UNAVAILABLE"
    assert code_of(TurnoutError("x")) == "UNKNOWN"


def test_tritons_failure_reasons() -> None:
    assert reason_of("UNAVAILABLE") == "REJECTED"
    assert reason_of("DEADLINE_EXCEEDED") == "CANCELED"
    assert reason_of("INTERNAL") == "BACKEND"
    assert reason_of("INVALID_ARGUMENT") == reason_of("NOT_FOUND") == "OTHER"


def test_requests_are_counted_per_arm_and_status_across_threads() -> None:
    observer = MetricsObserver()

    def serve(count: int) -> None:
        for _ in range(count):
            observer.observe([finished(1), finished(2, Arm.CANARY)])  # one batch each... per version below
            observer.observe([finished(2, Arm.CANARY, InvalidArgument("bad"), compute_s=0.0, queue_s=0.0)])

    threads = [threading.Thread(target=serve, args=(50,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    observer.observe([finished(error=NotFound("no model"), routed=False, compute_s=0.0)])
    exposed = samples(observer.shards.totals())
    labels = (("arm", "stable"), ("code", "OK"), ("model", "digits"), ("version", "1"))
    assert exposed[("turnout_requests_total", labels)] == 200
    canary_bad = (("arm", "canary"), ("code", "INVALID_ARGUMENT"), ("model", "digits"), ("version", "2"))
    assert exposed[("turnout_requests_total", canary_bad)] == 200
    unknown = (("arm", ""), ("code", "NOT_FOUND"), ("model", ""), ("version", ""))
    assert exposed[("turnout_requests_total", unknown)] == 1, "a name the gateway does not know is no label"
    assert len(observer.shards._shards) == 5, "one shard per thread that recorded"


def test_histograms_count_each_request_and_each_batch_in_the_right_bucket() -> None:
    observer = MetricsObserver()
    batch = [finished(latency_s=0.003, queue_s=0.0002, compute_s=0.001, rows=3) for _ in range(4)]
    observer.observe(batch)
    observer.observe([finished(error=Unavailable("queue full"), latency_s=20.0, compute_s=0.0)])
    exposed = samples(observer.shards.totals())
    arm = (("arm", "stable"), ("model", "digits"), ("version", "1"))
    assert exposed[("turnout_request_duration_seconds_count", arm)] == 5
    assert exposed[("turnout_request_duration_seconds_bucket", (*arm[:1], ("le", "0.0025"), *arm[1:]))] == 0
    assert exposed[("turnout_request_duration_seconds_bucket", (*arm[:1], ("le", "0.005"), *arm[1:]))] == 4
    assert exposed[("turnout_request_duration_seconds_bucket", (*arm[:1], ("le", "+Inf"), *arm[1:]))] == 5
    assert abs(exposed[("turnout_request_duration_seconds_sum", arm)] - 20.012) < 1e-9
    assert exposed[("turnout_queue_duration_seconds_count", arm)] == 4, "the failed request never queued"
    version = (("model", "digits"), ("version", "1"))
    assert exposed[("turnout_compute_duration_seconds_count", version)] == 1, "one batch execution"
    assert exposed[("turnout_batch_size_sum", version)] == 12
    assert exposed[("turnout_batch_size_bucket", (("le", "16.0"), *version))] == 1
    assert exposed[("turnout_batch_size_bucket", (("le", "8.0"), *version))] == 0


def test_a_value_on_a_bound_falls_in_that_bucket() -> None:
    observer = MetricsObserver()
    observer.observe([finished(latency_s=DURATION_BUCKETS_S[3], compute_s=0.0)])
    exposed = samples(observer.shards.totals())
    arm = (("arm", "stable"), ("model", "digits"), ("version", "1"))
    bound = str(DURATION_BUCKETS_S[3])
    assert exposed[("turnout_request_duration_seconds_bucket", (*arm[:1], ("le", bound), *arm[1:]))] == 1


def test_tritons_names_read_the_statistics_with_tritons_units_and_reasons() -> None:
    stats = VersionStatistics()
    for _ in range(3):
        stats.record_request(True, 2_000_000)  # 2 ms each
    stats.record_request(False, 1_000_000)
    stats.record_batch(requests=3, rows=5, queue_ns=300_000, input_ns=10_000, infer_ns=100_000, output_ns=20_000)
    snapshot: Snapshot = {}
    add_statistics(snapshot, "digits", "1", stats.snapshot())
    observer = MetricsObserver()
    observer.observe([finished(error=Unavailable("full"), compute_s=0.0), finished(error=Internal("x"))])
    observer.observe([finished(error=DeadlineExceeded("late"), compute_s=0.0)])
    exposed = samples(merge([snapshot, observer.shards.totals()]))
    version = (("model", "digits"), ("version", "1"))
    assert exposed[("nv_inference_request_success", version)] == 3
    assert exposed[("nv_inference_count", version)] == 5
    assert exposed[("nv_inference_exec_count", version)] == 1
    assert exposed[("nv_inference_request_duration_us", version)] == 6000
    assert exposed[("nv_inference_queue_duration_us", version)] == 300
    assert exposed[("nv_inference_compute_infer_duration_us", version)] == 300, "per request, as Triton"
    for reason in ("REJECTED", "BACKEND", "CANCELED"):
        failure_labels = (("model", "digits"), ("reason", reason), ("version", "1"))
        assert exposed[("nv_inference_request_failure", failure_labels)] == 1


def test_openmetrics_carries_the_same_samples() -> None:
    observer = MetricsObserver()
    observer.observe([finished()])
    snapshot = observer.shards.totals()
    labels = (("arm", "stable"), ("code", "OK"), ("model", "digits"), ("version", "1"))
    assert samples(snapshot, openmetrics=True)[("turnout_requests_total", labels)] == 1
    assert samples(snapshot)[("turnout_requests_total", labels)] == 1


def test_statistics_survive_the_snapshot_and_sum() -> None:
    stats = VersionStatistics()
    stats.record_request(True, 5)
    stats.record_batch(requests=2, rows=4, queue_ns=7, input_ns=1, infer_ns=2, output_ns=3)
    one: Snapshot = {}
    add_statistics(one, "m", "1", stats.snapshot())
    assert statistics_of(one, "m", "1") == stats.snapshot()
    total = statistics_of(merge([one, one]), "m", "1")
    assert total is not None and total.success.count == 2 and total.inference_count == 8
    assert total.batches[4].compute_infer.ns == 4 and total.last_inference_ms == stats.snapshot().last_inference_ms
    assert statistics_of(one, "m", "2") is None
    assert REQUESTS not in one


def test_metrics_port_zero_builds_no_observer_and_serves_nothing(tmp_path: Path) -> None:
    def no_hosts(kind: str, artifact: Path, options: RuntimeOptions, label: str) -> ModelHost:
        raise AssertionError("nothing is loaded here")

    options = RuntimeOptions(1, 1)
    manager = ModelManager(ModelRepository(tmp_path), no_hosts, options, poll_interval_s=0, drain_timeout_s=1)
    off = GatewayMetrics(manager, RoutingTableHolder(), port=0, host="127.0.0.1", directory=None)
    off.start()
    assert off.observer is None and off.url is None, "the composition root registers no observer then"
    off.close()
    assert GatewayMetrics(manager, RoutingTableHolder(), port=8002, host="127.0.0.1", directory=None).observer


def test_a_windows_difference_gives_the_minutes_counts_and_quantiles() -> None:
    observer = MetricsObserver()
    observer.observe([finished(latency_s=0.0002, compute_s=0.0) for _ in range(10)])
    earlier = observer.shards.totals()
    observer.observe([finished(latency_s=0.03, compute_s=0.0) for _ in range(90)])
    observer.observe([finished(error=Unavailable("full"), latency_s=0.03, compute_s=0.0) for _ in range(10)])
    window = difference(observer.shards.totals(), earlier)
    ok = window[REQUESTS][("digits", "1", "stable", "OK")]
    assert ok == 90 and window[REQUESTS][("digits", "1", "stable", "UNAVAILABLE")] == 10
    latencies = window[REQUEST_DURATION][("digits", "1", "stable")]
    assert isinstance(latencies, list)
    p50 = histogram_quantile(0.5, latencies, DURATION_BUCKETS_S)
    assert 0.025 < p50 <= 0.05, "every request of the window took 30 ms: the (25 ms, 50 ms] bucket"
    assert math.isnan(histogram_quantile(0.5, [0.0] * (len(DURATION_BUCKETS_S) + 2), DURATION_BUCKETS_S))
    # A count that fell (a restarted process) counts from zero.
    assert difference({REQUESTS: {("m",): 3.0}}, {REQUESTS: {("m",): 5.0}}) == {REQUESTS: {("m",): 3.0}}


def test_the_supervisor_adds_the_shared_workers_restarts_by_model_and_version(tmp_path: Path) -> None:
    restarts = [(str(tmp_path / "models" / "digits" / "2" / "model.onnx"), 3)]
    snapshot = SupervisorMetrics(tmp_path, lambda: restarts).snapshot()  # no gateway process answers here
    assert snapshot[WORKER_RESTARTS] == {("digits", "2"): 3.0}


def test_an_assigned_request_id_is_a_uuid4_hex() -> None:
    ids = {uuid4_hex() for _ in range(1000)}
    assert len(ids) == 1000
    for text in list(ids)[:50]:
        parsed = uuid.UUID(hex=text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and parsed.hex == text
