"""Writes capture datasets as the capture writer lays them out, for tests of what reads them.

``<root>/model=<name>/version=<v>/date=<YYYY-MM-DD>/<file>.parquet`` with the record's columns
(request_id, time, arm, generation, reason, status, latency_ms), one column per input feature, and
outputs under an ``output.`` prefix.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_files = itertools.count()


def write_capture(
    root: Path,
    model: str,
    version: int,
    features: Mapping[str, np.ndarray[Any, Any]],
    start: datetime = datetime(2026, 12, 1, 12, tzinfo=UTC),
    step: timedelta = timedelta(seconds=1),
    arm: str = "stable",
    status: str = "OK",
) -> None:
    """Append one row per value of the feature columns, ``step`` apart from ``start``, one file per day."""
    rows = len(next(iter(features.values())))
    times = [start + step * i for i in range(rows)]
    days = np.array([moment.date().isoformat() for moment in times])
    for day in sorted(set(days)):
        chosen = np.flatnonzero(days == day)
        columns: dict[str, Any] = {
            "request_id": pa.array([f"r{next(_files)}-{i}" for i in chosen], pa.string()),
            "time": pa.array([times[i] for i in chosen], pa.timestamp("us", "UTC")),
            "arm": pa.array([arm] * len(chosen), pa.string()),
            "generation": pa.array([1] * len(chosen), pa.int64()),
            "reason": pa.array(["random"] * len(chosen), pa.string()),
            "status": pa.array([status] * len(chosen), pa.string()),
            "latency_ms": pa.array(np.full(len(chosen), 1.5), pa.float64()),
        }
        columns.update({name: pa.array(np.asarray(values)[chosen]) for name, values in features.items()})
        columns["output.label"] = pa.array(np.zeros(len(chosen), np.int64))
        directory = root / f"model={model}" / f"version={version}" / f"date={day}"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), directory / f"part-{next(_files)}.parquet")
