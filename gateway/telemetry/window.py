"""What happened between two snapshots: counts over a window (the last minute, say), and a
histogram's quantile from its bucket counts, as Prometheus's ``histogram_quantile`` estimates it.

For views that need no Prometheus (``turnout status``): take the process-wide snapshot now and a
minute ago, subtract, and read rates, error ratios and latency quantiles off the difference.
"""

from __future__ import annotations

import math

from gateway.telemetry.families import MERGE, Merge
from gateway.telemetry.snapshot import Snapshot, Value


def difference(later: Snapshot, earlier: Snapshot) -> Snapshot:
    """``later - earlier`` for added families (a value that fell, as after a process restarted, is
    taken as counted from zero), the later value for families merged by maximum. Gauges (queue
    depth, drift) mean nothing as a difference: read those from ``later`` itself."""
    result: Snapshot = {}
    for family, values in later.items():
        before = earlier.get(family, {})
        keep_later = MERGE.get(family, Merge.SUM) is Merge.MAX
        result[family] = {
            labels: value if keep_later else _minus(value, before.get(labels)) for labels, value in values.items()
        }
    return result


def _minus(value: Value, before: Value | None) -> Value:
    if before is None:
        return list(value) if isinstance(value, list) else value
    if isinstance(value, list):
        assert isinstance(before, list)
        if len(before) != len(value) or any(b > v for v, b in zip(value, before, strict=False)):
            return list(value)  # reset: counted from zero since
        return [v - b for v, b in zip(value, before, strict=True)]
    assert not isinstance(before, list)
    return value - before if value >= before else value


def histogram_quantile(q: float, counts: list[float], bounds: tuple[float, ...]) -> float:
    """The ``q`` quantile of a histogram value (bucket counts, +Inf last, then the sum), interpolated
    linearly inside its bucket as Prometheus does; NaN with no observations. A quantile in the +Inf
    bucket is the largest finite bound."""
    buckets = counts[: len(bounds) + 1]
    total = sum(buckets)
    if total <= 0:
        return math.nan
    rank = q * total
    seen = 0.0
    for index, count in enumerate(buckets):
        if seen + count >= rank and count > 0:
            if index == len(bounds):
                return bounds[-1]
            lower = bounds[index - 1] if index > 0 else 0.0
            return lower + (bounds[index] - lower) * (rank - seen) / count
        seen += count
    return bounds[-1]
