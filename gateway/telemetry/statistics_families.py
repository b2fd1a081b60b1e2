"""A version's ModelStatistics counters as snapshot families, and back, so they sum across processes."""

from __future__ import annotations

from gateway.serving.statistics import BatchDurations, Duration, StatisticsSnapshot
from gateway.telemetry.families import (
    STAT_BATCH,
    STAT_COMPUTE_INFER,
    STAT_COMPUTE_INPUT,
    STAT_COMPUTE_OUTPUT,
    STAT_EXECUTIONS,
    STAT_FAIL,
    STAT_INFERENCES,
    STAT_LAST_INFERENCE_MS,
    STAT_QUEUE,
    STAT_SUCCESS,
)
from gateway.telemetry.snapshot import Snapshot, add_into

STATISTICS_FAMILIES = (
    STAT_SUCCESS, STAT_FAIL, STAT_QUEUE, STAT_COMPUTE_INPUT, STAT_COMPUTE_INFER, STAT_COMPUTE_OUTPUT,
    STAT_INFERENCES, STAT_EXECUTIONS, STAT_LAST_INFERENCE_MS, STAT_BATCH,
)  # fmt: skip


def add_statistics(target: Snapshot, model: str, version: str, stats: StatisticsSnapshot) -> None:
    key = (model, version)
    durations = (
        (STAT_SUCCESS, stats.success), (STAT_FAIL, stats.fail), (STAT_QUEUE, stats.queue),
        (STAT_COMPUTE_INPUT, stats.compute_input), (STAT_COMPUTE_INFER, stats.compute_infer),
        (STAT_COMPUTE_OUTPUT, stats.compute_output),
    )  # fmt: skip
    for family, duration in durations:
        add_into(target, family, key, [float(duration.count), float(duration.ns)])
    add_into(target, STAT_INFERENCES, key, float(stats.inference_count))
    add_into(target, STAT_EXECUTIONS, key, float(stats.execution_count))
    add_into(target, STAT_LAST_INFERENCE_MS, key, float(stats.last_inference_ms))
    for size, batch in stats.batches.items():
        add_into(target, STAT_BATCH, (model, version, str(size)), [
            float(batch.compute_input.count), float(batch.compute_input.ns),
            float(batch.compute_infer.count), float(batch.compute_infer.ns),
            float(batch.compute_output.count), float(batch.compute_output.ns),
        ])  # fmt: skip


def statistics_of(snapshot: Snapshot, model: str, version: str) -> StatisticsSnapshot | None:
    """The version's counters in ``snapshot``; None when it has none."""
    key = (model, version)
    if key not in snapshot.get(STAT_SUCCESS, {}):
        return None

    def duration(family: str) -> Duration:
        value = snapshot[family][key]
        assert isinstance(value, list)
        return Duration(int(value[0]), int(value[1]))

    def number(family: str) -> int:
        return int(snapshot[family][key])  # type: ignore[arg-type]

    batches = {}
    for labels, value in snapshot.get(STAT_BATCH, {}).items():
        if labels[:2] == key:
            assert isinstance(value, list)
            counts = [int(v) for v in value]
            batches[int(labels[2])] = BatchDurations(
                Duration(counts[0], counts[1]), Duration(counts[2], counts[3]), Duration(counts[4], counts[5])
            )
    return StatisticsSnapshot(
        number(STAT_LAST_INFERENCE_MS),
        number(STAT_INFERENCES),
        number(STAT_EXECUTIONS),
        duration(STAT_SUCCESS),
        duration(STAT_FAIL),
        duration(STAT_QUEUE),
        duration(STAT_COMPUTE_INPUT),
        duration(STAT_COMPUTE_INFER),
        duration(STAT_COMPUTE_OUTPUT),
        dict(sorted(batches.items())),
    )
