"""The floor under ``--capture-durability sync``: how long this disk takes to make one small append durable.

A lone caller under sync capture waits for its own record's ``fdatasync``; no group commit can share
it with anyone. So the latency sync capture adds at one request in flight cannot be less than this
disk's flush latency, whatever the writer does. This script measures that floor where the capture
directory would live: ROUNDS x COUNT appends of RECORD bytes to a fresh file, each followed by
``fdatasync``, and also the same appends into a file whose blocks were written (and flushed) in
advance, the preallocation trick write-ahead logs use to keep the file's size, and so its metadata,
out of each flush. Prints JSON with the median and p99 of both, per round and over all rounds.

    python benchmarks/disk_flush.py --dir /var/lib/turnout/capture
    python benchmarks/disk_flush.py --count 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def flush_latencies_s(directory: Path, count: int, record: int, preallocate: bool) -> list[float]:
    """Seconds each ``write`` + ``fdatasync`` of one record took, appending to a fresh file."""
    fd, name = tempfile.mkstemp(prefix="flush-", dir=directory)
    try:
        if preallocate:
            os.write(fd, bytes(count * record))
            os.fsync(fd)
            os.lseek(fd, 0, os.SEEK_SET)
        payload = b"r" * record
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            os.write(fd, payload)
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - started)
        return latencies
    finally:
        os.close(fd)
        os.unlink(name)


def summary_ms(latencies_s: list[float]) -> dict[str, float]:
    values = np.asarray(latencies_s) * 1e3
    return {"p50_ms": round(float(np.percentile(values, 50)), 3), "p99_ms": round(float(np.percentile(values, 99)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()), help="where the capture would live")
    parser.add_argument("--count", type=int, default=1000, help="appends per round and kind")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--record", type=int, default=600, help="bytes per record (a digits request is about 600)")
    args = parser.parse_args()
    rounds: list[dict[str, Any]] = []
    every: dict[str, list[float]] = {"append": [], "preallocated": []}
    for _ in range(args.rounds):  # interleaved, so a noisy moment hits both kinds
        one: dict[str, Any] = {}
        for kind in every:
            latencies = flush_latencies_s(args.dir, args.count, args.record, preallocate=kind == "preallocated")
            every[kind].extend(latencies)
            one[kind] = summary_ms(latencies)
        rounds.append(one)
    result = {
        "command": "python benchmarks/disk_flush.py "
        + " ".join(f"--{key} {value}" for key, value in vars(args).items()),
        "directory": str(args.dir),
        "overall": {kind: summary_ms(latencies) for kind, latencies in every.items()},
        "rounds": rounds,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
