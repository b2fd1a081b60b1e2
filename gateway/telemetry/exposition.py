"""A merged snapshot as Prometheus metric families: Turnout's own names and Triton's.

Turnout's names carry units and the labels model, version and arm where they apply. Triton's names
(``nv_inference_*``) carry Triton's labels (model, version) and meanings, so dashboards built on
Triton work unchanged; they are declared untyped because prometheus_client would rename a counter
``<name>_total``, and Triton's counters have no suffix (PromQL's rate() reads them the same).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.telemetry import families as f
from gateway.telemetry.snapshot import Labels, Snapshot, Value
from gateway.telemetry.status_codes import OK, reason_of

VERSION = ("model", "version")
ARM = ("model", "version", "arm")
SHADOW = ("model", "version", "shadow_version")


class SnapshotCollector(Collector):
    """Collects from ``source()`` once per scrape (the source merges threads and processes)."""

    def __init__(self, source: Callable[[], Snapshot]) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        snapshot = self._source()
        yield from turnout_metrics(snapshot)
        yield from triton_metrics(snapshot)


def _values(snapshot: Snapshot, family: str) -> list[tuple[Labels, Value]]:
    return sorted(snapshot.get(family, {}).items())


def _number(value: Value) -> float:
    assert not isinstance(value, list)
    return value


def _list(value: Value) -> list[float]:
    assert isinstance(value, list)
    return value


def counter(name: str, doc: str, labels: tuple[str, ...], snapshot: Snapshot, family: str) -> CounterMetricFamily:
    metric = CounterMetricFamily(name, doc, labels=labels)
    for key, value in _values(snapshot, family):
        metric.add_metric(list(key), _number(value))
    return metric


def gauge(name: str, doc: str, labels: tuple[str, ...], snapshot: Snapshot, family: str) -> GaugeMetricFamily:
    metric = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in _values(snapshot, family):
        metric.add_metric(list(key), _number(value))
    return metric


def histogram(
    name: str, doc: str, labels: tuple[str, ...], snapshot: Snapshot, family: str, bounds: tuple[float, ...]
) -> HistogramMetricFamily:
    metric = HistogramMetricFamily(name, doc, labels=labels)
    for key, value in _values(snapshot, family):
        counts = _list(value)
        cumulative, buckets = 0.0, []
        for bound, count in zip((*(str(b) for b in bounds), "+Inf"), counts[:-1], strict=True):
            cumulative += count
            buckets.append((bound, cumulative))
        metric.add_metric(list(key), buckets, counts[-1])
    return metric


def turnout_metrics(s: Snapshot) -> Iterator[Metric]:
    yield counter(
        "turnout_requests",
        "Requests finished, by the gRPC status they were answered with; "
        "version and arm are empty for a request that failed before routing (model too when not found)",
        (*ARM, "code"),
        s,
        f.REQUESTS,
    )
    yield histogram(
        "turnout_request_duration_seconds",
        "Time from the gateway taking a request to its answer",
        ARM,
        s,
        f.REQUEST_DURATION,
        f.DURATION_BUCKETS_S,
    )
    yield histogram(
        "turnout_queue_duration_seconds",
        "Time a request waited in its version's batch queue",
        ARM,
        s,
        f.QUEUE_DURATION,
        f.DURATION_BUCKETS_S,
    )
    yield histogram(
        "turnout_compute_duration_seconds",
        "Time of each batch execution in the runtime",
        VERSION,
        s,
        f.COMPUTE_DURATION,
        f.DURATION_BUCKETS_S,
    )
    yield histogram("turnout_batch_size", "Rows per batch execution", VERSION, s, f.BATCH_SIZE, f.BATCH_SIZE_BUCKETS)
    yield gauge("turnout_queue_depth", "Requests waiting in the version's batch queue", VERSION, s, f.QUEUE_DEPTH)
    yield gauge("turnout_inflight_requests", "Requests taken and not yet answered", VERSION, s, f.INFLIGHT)
    yield counter(
        "turnout_worker_restarts", "Worker processes started again after they died", VERSION, s, f.WORKER_RESTARTS
    )
    yield counter(
        "turnout_model_loads", "Model version loads started, per gateway process", ("model",), s, f.MODEL_LOADS
    )
    yield counter(
        "turnout_model_load_failures",
        "Model version loads that did not end READY",
        ("model",),
        s,
        f.MODEL_LOAD_FAILURES,
    )
    yield gauge(
        "turnout_policy_generation", "Generation of the routing policy in effect", ("model",), s, f.POLICY_GENERATION
    )
    yield counter(
        "turnout_control_refused",
        "Control calls refused for their credentials, by method and reason (no_credentials, wrong_token,"
        " wrong_header, malformed_authorization, no_credentials_configured)",
        ("method", "reason"),
        s,
        f.CONTROL_REFUSED,
    )
    yield counter(
        "turnout_shadow_copies",
        "Shadow copies by outcome: sent, dropped (lane full), failed, paused (not sent while the shadow was paused)",
        (*SHADOW, "outcome"),
        s,
        f.SHADOW_COPIES,
    )
    yield counter(
        "turnout_shadow_compared", "Shadow answers compared with their primary's", SHADOW, s, f.SHADOW_COMPARED
    )
    yield from _shadow_top1(s)
    yield gauge(
        "turnout_shadow_max_abs_diff",
        "Largest absolute difference between a shadow's output and its primary's, over every copy compared",
        (*SHADOW, "output"),
        s,
        f.SHADOW_MAX_ABS_DIFF,
    )
    yield counter(
        "turnout_capture_records",
        "Capture records by outcome: written, dropped, failed, "
        "sampled_out, skipped (torn records skipped at compaction)",
        ("outcome",),
        s,
        f.CAPTURE_RECORDS,
    )
    yield gauge(
        "turnout_capture_queued_records",
        "Capture records handed over and not yet written (the writer's lag)",
        (),
        s,
        f.CAPTURE_QUEUED,
    )
    yield from _drift(s)


def _shadow_top1(s: Snapshot) -> Iterator[Metric]:
    agreed = CounterMetricFamily(
        "turnout_shadow_top1_agreed_rows", "Rows whose arg-max class the shadow and its primary agree on", labels=SHADOW
    )
    rows = CounterMetricFamily("turnout_shadow_top1_compared_rows", "Rows compared by arg-max class", labels=SHADOW)
    ratio = GaugeMetricFamily(
        "turnout_shadow_top1_agreement",
        "Share of compared rows with the same arg-max class (top-1 agreement)",
        labels=SHADOW,
    )
    for key, value in _values(s, f.SHADOW_TOP1):
        counts = _list(value)
        agreed.add_metric(list(key), counts[0])
        rows.add_metric(list(key), counts[1])
        if counts[1] > 0:
            ratio.add_metric(list(key), counts[0] / counts[1])
    yield from (agreed, rows, ratio)


def _drift(s: Snapshot) -> Iterator[Metric]:
    docs = {
        "psi": "Population stability index of the feature's recent served values against the reference",
        "js": "Jensen-Shannon distance of the feature's recent served values against the reference",
        "ks": "Kolmogorov-Smirnov statistic of the feature's recent served values against the reference",
        "wasserstein": "Wasserstein distance of the feature's recent served values against the reference, "
        "divided by the reference's standard deviation",
    }
    by_statistic = {
        name: GaugeMetricFamily(f"turnout_drift_{name}", doc + " (row-weighted mean over gateway processes)",
                                labels=(*VERSION, "feature"))
        for name, doc in docs.items()
    }  # fmt: skip
    for (model, version, feature, statistic), value in _values(s, f.DRIFT):
        weighted, rows = _list(value)
        if statistic in by_statistic and rows > 0:
            by_statistic[statistic].add_metric([model, version, feature], weighted / rows)
    yield from by_statistic.values()
    yield gauge("turnout_drift_window_rows", "Served input rows in the drift window", VERSION, s, f.DRIFT_ROWS)


def _untyped(name: str, doc: str, labels: tuple[str, ...], samples: list[tuple[Labels, float]]) -> Metric:
    metric = Metric(name, doc, "unknown")
    for key, value in samples:
        metric.add_sample(name, dict(zip(labels, key, strict=True)), value)
    return metric


def triton_metrics(s: Snapshot) -> Iterator[Metric]:
    """Triton's per-model inference metrics, read from the statistics extension's counters."""

    def per_version(family: str, index: int | None = None, scale: float = 1.0) -> list[tuple[Labels, float]]:
        return [(key, (_list(v)[index] if index is not None else _number(v)) * scale) for key, v in _values(s, family)]

    yield _untyped(
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        VERSION,
        per_version(f.STAT_SUCCESS, 0),
    )
    failures: dict[Labels, float] = {}
    for (model, version, _arm, code), value in _values(s, f.REQUESTS):
        if code != OK and version:
            key = (model, version, reason_of(code))
            failures[key] = failures.get(key, 0.0) + _number(value)
    yield _untyped(
        "nv_inference_request_failure",
        "Number of failed inference requests, all batch sizes, by reason",
        (*VERSION, "reason"),
        sorted(failures.items()),
    )
    yield _untyped(
        "nv_inference_count",
        "Number of inferences performed (a batch of n counts n)",
        VERSION,
        per_version(f.STAT_INFERENCES),
    )
    yield _untyped(
        "nv_inference_exec_count",
        "Number of model executions performed (batches)",
        VERSION,
        per_version(f.STAT_EXECUTIONS),
    )
    yield _untyped(
        "nv_inference_request_duration_us",
        "Cumulative end-to-end duration of successful inference requests, in microseconds",
        VERSION,
        per_version(f.STAT_SUCCESS, 1, 1e-3),
    )
    yield _untyped(
        "nv_inference_queue_duration_us",
        "Cumulative time requests spent queued, in microseconds",
        VERSION,
        per_version(f.STAT_QUEUE, 1, 1e-3),
    )
    yield _untyped(
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration, in microseconds",
        VERSION,
        per_version(f.STAT_COMPUTE_INPUT, 1, 1e-3),
    )
    yield _untyped(
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration, in microseconds",
        VERSION,
        per_version(f.STAT_COMPUTE_INFER, 1, 1e-3),
    )
    yield _untyped(
        "nv_inference_compute_output_duration_us",
        "Cumulative compute output duration, in microseconds",
        VERSION,
        per_version(f.STAT_COMPUTE_OUTPUT, 1, 1e-3),
    )
    yield _untyped(
        "nv_inference_pending_request_count",
        "Requests received and not yet executing (queued)",
        VERSION,
        per_version(f.QUEUE_DEPTH),
    )
