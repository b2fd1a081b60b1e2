"""Per-version counters with the meanings of Triton's statistics extension (ModelStatistics)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass(slots=True)
class BatchDurations:
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class StatisticsSnapshot:
    last_inference_ms: int
    inference_count: int
    execution_count: int
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    batches: dict[int, BatchDurations]


class VersionStatistics:
    """Thread-safe counters for one model version.

    ``success``/``fail`` count requests and their end-to-end time in the gateway; ``queue`` and
    ``compute_*`` count requests and the time their batch spent there (Triton's convention);
    ``inference_count`` counts rows, ``execution_count`` batches.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last_inference_ms = 0
        self._inference_count = 0
        self._execution_count = 0
        self._success = Duration()
        self._fail = Duration()
        self._queue = Duration()
        self._input = Duration()
        self._infer = Duration()
        self._output = Duration()
        self._batches: dict[int, BatchDurations] = {}

    def record_request(self, ok: bool, ns: int) -> None:
        with self._lock:
            (self._success if ok else self._fail).add(ns)

    def record_batch(
        self, requests: int, rows: int, queue_ns: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        with self._lock:
            self._last_inference_ms = time.time_ns() // 1_000_000
            self._inference_count += rows
            self._execution_count += 1
            self._queue.add(queue_ns, requests)
            self._input.add(input_ns * requests, requests)
            self._infer.add(infer_ns * requests, requests)
            self._output.add(output_ns * requests, requests)
            per_size = self._batches.get(rows)
            if per_size is None:  # not setdefault: that would build four objects for every batch
                per_size = self._batches[rows] = BatchDurations()
            per_size.compute_input.add(input_ns)
            per_size.compute_infer.add(infer_ns)
            per_size.compute_output.add(output_ns)

    def snapshot(self) -> StatisticsSnapshot:
        def copy(duration: Duration) -> Duration:
            return Duration(duration.count, duration.ns)

        with self._lock:
            return StatisticsSnapshot(
                self._last_inference_ms,
                self._inference_count,
                self._execution_count,
                copy(self._success),
                copy(self._fail),
                copy(self._queue),
                copy(self._input),
                copy(self._infer),
                copy(self._output),
                {
                    size: BatchDurations(copy(d.compute_input), copy(d.compute_infer), copy(d.compute_output))
                    for size, d in sorted(self._batches.items())
                },
            )
