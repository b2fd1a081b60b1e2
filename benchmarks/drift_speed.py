"""How long ``turnout drift``'s work takes on a large capture, and how much memory; prints JSON.

Builds a Hive-partitioned capture of ROWS x FEATURES float32 inputs (normal, a quarter of the
features shifted, spread over several days as the capture writer lays them out) and a reference of
REFERENCE_ROWS in a temporary directory, then times the report as the command builds it: reading
(the feature columns only, filtered) and the statistics, separately, over several rounds. Peak
memory is the process's maximum resident set (getrusage), measured in a fresh child process per
round so one round's peak does not hide the next's; the data written beforehand is not counted.

    python benchmarks/drift_speed.py                      # 1,000,000 x 64, 3 rounds
    python benchmarks/drift_speed.py --rows 100000 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO_ROOT = Path(__file__).resolve().parents[1]
ROWS_PER_FILE = 250_000  # what a compaction might write; one row group each


def build(root: Path, rows: int, features: int, reference_rows: int, days: int) -> None:
    rng = np.random.default_rng(1)
    names = [f"f_{i}" for i in range(features)]
    reference = {name: rng.normal(size=reference_rows).astype(np.float32) for name in names}
    (root / "repo" / "bench" / "1").mkdir(parents=True)
    pq.write_table(pa.table(reference), root / "repo" / "bench" / "1" / "reference.parquet")
    start = datetime(2026, 12, 1, tzinfo=UTC)
    step = timedelta(days=days) / rows
    for first in range(0, rows, ROWS_PER_FILE):
        count = min(ROWS_PER_FILE, rows - first)
        moment = start + step * first
        columns: dict[str, Any] = {
            "request_id": pa.array([f"r{first + i}" for i in range(count)]),
            "time": pa.array(np.datetime64(moment.replace(tzinfo=None), "us") + (
                np.arange(count) * int(step / timedelta(microseconds=1))).astype("timedelta64[us]"),
                pa.timestamp("us", "UTC")),
            "arm": pa.array(["stable"] * count),
            "generation": pa.array(np.ones(count, np.int64)),
            "reason": pa.array(["random"] * count),
            "status": pa.array(["OK"] * count),
            "latency_ms": pa.array(np.full(count, 1.0)),
        }
        for index, name in enumerate(names):
            shift = 0.3 if index % 4 == 0 else 0.0
            columns[name] = pa.array(rng.normal(shift, 1.0, size=count).astype(np.float32))
        columns["output.label"] = pa.array(np.zeros(count, np.int64))
        directory = root / "capture" / "model=bench" / "version=1" / f"date={moment.date().isoformat()}"
        directory.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), directory / f"part-{first}.parquet", row_group_size=ROWS_PER_FILE)


def one_round(root: Path, threads: int | None) -> dict[str, Any]:
    """Run in a child process: read, then compare, timed apart; the peak resident memory."""
    from gateway.capture import drift_report

    window = drift_report.Window("bench", 1)
    started = time.perf_counter()
    _, capture, rows = drift_report.choose_version(root / "capture", window, [1])
    reference = pq.read_table(root / "repo" / "bench" / "1" / "reference.parquet")
    names = [name for name in drift_report.feature_columns(capture.schema) if name in reference.column_names]
    current = drift_report.read_current(capture, names, window)
    read_s = time.perf_counter() - started
    features = drift_report.compare_all(reference, current, names, 10, threads)
    total_s = time.perf_counter() - started
    return {
        "read_s": round(read_s, 3),
        "statistics_s": round(total_s - read_s, 3),
        "total_s": round(total_s, 3),
        "rows": rows,
        "features": len(names),
        "drifted": sum(feature is not None and feature.drifted for feature in features),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--reference-rows", type=int, default=10_000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="statistics threads (default: the command's)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_round(args.child, args.threads)))
        return
    with tempfile.TemporaryDirectory(prefix="drift-speed-") as directory:
        root = Path(directory)
        started = time.perf_counter()
        build(root, args.rows, args.features, args.reference_rows, args.days)
        build_s = time.perf_counter() - started
        rounds = []
        for _ in range(args.rounds):
            command = [sys.executable, __file__, "--child", str(root)]
            if args.threads is not None:
                command += ["--threads", str(args.threads)]
            done = subprocess.run(command, capture_output=True, text=True, check=True, cwd=REPO_ROOT,
                                  env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
            rounds.append(json.loads(done.stdout))
    print(json.dumps({
        "rows": args.rows,
        "features": args.features,
        "reference_rows": args.reference_rows,
        "cpus": os.cpu_count(),
        "build_s": round(build_s, 1),
        "median_total_s": sorted(r["total_s"] for r in rounds)[len(rounds) // 2],
        "rounds": rounds,
    }, indent=2))


if __name__ == "__main__":
    main()
