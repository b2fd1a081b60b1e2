"""The metric families a gateway process counts, and how each merges across threads and processes.

A snapshot (:mod:`gateway.telemetry.snapshot`) holds, per family, one value per label set: a number
or a list of numbers. Every family either adds (counters, gauges of things summed over processes,
histogram buckets, weighted drift) or keeps the largest (a policy generation, the largest shadow
difference, the last inference time). Nothing else, so merging is associative and commutative.
"""

from __future__ import annotations

from enum import StrEnum


class Merge(StrEnum):
    SUM = "sum"  # numbers add; lists add element by element
    MAX = "max"


# Upper bounds of the duration histograms, seconds: from 100 µs (a small model answers in well
# under a millisecond on CPU) to 10 s (Prometheus's own default top).
DURATION_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
# Rows per batch execution: powers of two up to Triton's largest usual max_batch_size.
BATCH_SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)

# Counted by the metrics observer, per thread. Keys are label values in the order named here.
REQUESTS = "requests"  # model, version, arm, code -> requests
REQUEST_DURATION = "request_duration"  # model, version, arm -> histogram (seconds)
QUEUE_DURATION = "queue_duration"  # model, version, arm -> histogram (seconds)
COMPUTE_DURATION = "compute_duration"  # model, version -> histogram of batch executions (seconds)
BATCH_SIZE = "batch_size"  # model, version -> histogram of rows per batch execution
# Read from the serving parts when a snapshot is taken.
QUEUE_DEPTH = "queue_depth"  # model, version -> requests queued
INFLIGHT = "inflight"  # model, version -> requests acquired and not yet answered
WORKER_RESTARTS = "worker_restarts"  # model, version -> restarts
MODEL_LOADS = "model_loads"  # model -> loads attempted
MODEL_LOAD_FAILURES = "model_load_failures"  # model -> loads that failed
POLICY_GENERATION = "policy_generation"  # model -> generation
CONTROL_REFUSED = "control_refused"  # method, reason -> control calls refused for their credentials
SHADOW_COPIES = "shadow_copies"  # model, version, shadow_version, outcome -> copies
SHADOW_COMPARED = "shadow_compared"  # model, version, shadow_version -> copies compared
SHADOW_TOP1 = "shadow_top1"  # model, version, shadow_version -> [agreed rows, compared rows]
SHADOW_MAX_ABS_DIFF = "shadow_max_abs_diff"  # model, version, shadow_version, output -> largest
CAPTURE_RECORDS = "capture_records"  # outcome -> records (written, dropped, failed, sampled_out, skipped)
CAPTURE_QUEUED = "capture_queued"  # () -> records handed over and not yet written (the writer's lag)
DRIFT = "drift"  # model, version, feature, statistic -> [statistic x window rows, window rows]
DRIFT_ROWS = "drift_rows"  # model, version -> rows in the window
# The statistics extension's counters (ModelStatistics and Triton's metric names), per version.
STAT_SUCCESS = "stat_success"  # model, version -> [count, ns]
STAT_FAIL = "stat_fail"
STAT_QUEUE = "stat_queue"
STAT_COMPUTE_INPUT = "stat_compute_input"
STAT_COMPUTE_INFER = "stat_compute_infer"
STAT_COMPUTE_OUTPUT = "stat_compute_output"
STAT_INFERENCES = "stat_inferences"  # model, version -> rows inferred
STAT_EXECUTIONS = "stat_executions"  # model, version -> batch executions
STAT_LAST_INFERENCE_MS = "stat_last_inference_ms"  # model, version -> unix ms
STAT_BATCH = "stat_batch"  # model, version, size -> [input count, ns, infer count, ns, output count, ns]

MERGE: dict[str, Merge] = {
    name: Merge.SUM
    for name in (
        REQUESTS, REQUEST_DURATION, QUEUE_DURATION, COMPUTE_DURATION, BATCH_SIZE, QUEUE_DEPTH, INFLIGHT,
        WORKER_RESTARTS, MODEL_LOADS, MODEL_LOAD_FAILURES, SHADOW_COPIES, SHADOW_COMPARED, SHADOW_TOP1,
        CAPTURE_RECORDS, CAPTURE_QUEUED, CONTROL_REFUSED, DRIFT, DRIFT_ROWS, STAT_SUCCESS, STAT_FAIL, STAT_QUEUE,
        STAT_COMPUTE_INPUT, STAT_COMPUTE_INFER, STAT_COMPUTE_OUTPUT, STAT_INFERENCES, STAT_EXECUTIONS, STAT_BATCH,
    )
} | {name: Merge.MAX for name in (POLICY_GENERATION, SHADOW_MAX_ABS_DIFF, STAT_LAST_INFERENCE_MS)}  # fmt: skip
