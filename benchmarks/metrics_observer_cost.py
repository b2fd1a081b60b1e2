"""What the metrics observer costs a dispatcher per batch, in-process and without sockets; prints JSON.

Times ``MetricsObserver.observe`` on batches of 1, 8 and 64 finished requests (the calls a
dispatcher makes once per batch) from one thread and from four at once (each with its own shard,
so no lock is shared), and the scrape-time sum of the shards, with ``timeit``'s best of repeats.

    python benchmarks/metrics_observer_cost.py
"""

from __future__ import annotations

import json
import sys
import threading
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.routing.decide import Arm, Reason
from gateway.serving.inference_types import InferRequest
from gateway.serving.observers import Finished, Route, Timings
from gateway.telemetry.observer import MetricsObserver

REPEATS = 5
CALLS = 20_000


def batch(size: int) -> list[Finished]:
    route = Route("digits", 1, Arm.STABLE, 3, Reason.RANDOM)
    request = InferRequest("digits", "", "", [])
    return [Finished(request, route, None, 1, {}, None, Timings(0, 0.0012, 0.0003, 0.0006)) for _ in range(size)]


def per_call_us(observer: MetricsObserver, finished: list[Finished]) -> float:
    best = min(timeit.repeat(lambda: observer.observe(finished), number=CALLS, repeat=REPEATS))
    return best / CALLS * 1e6


def threads_us(size: int, threads: int) -> float:
    """Wall time per call with ``threads`` threads observing at once (GIL-bound: this shows that no
    lock adds to it, not parallel speed)."""
    observer, finished = MetricsObserver(), batch(size)

    def run() -> None:
        for _ in range(CALLS):
            observer.observe(finished)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return (time.perf_counter() - started) / (CALLS * threads) * 1e6


def main() -> int:
    observer = MetricsObserver()
    result = {f"batch_{size}": {"us_per_batch": round(per_call_us(observer, batch(size)), 2)} for size in (1, 8, 64)}
    for size in (1, 64):
        result[f"batch_{size}"]["us_per_batch_4_threads"] = round(threads_us(size, 4), 2)
        result[f"batch_{size}"]["us_per_request"] = round(result[f"batch_{size}"]["us_per_batch"] / size, 3)
    sums = min(timeit.repeat(observer.shards.totals, number=100, repeat=REPEATS)) / 100 * 1e6
    document = {"command": "python benchmarks/metrics_observer_cost.py", "observe": result, "totals_us": round(sums, 1)}
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
