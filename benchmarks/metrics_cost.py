"""What metrics cost the serving path: --metrics-port 0 against metrics on, in interleaved rounds; prints JSON.

Two gateways with worker processes serve the example digits model (no policy): one with metrics
off (``--metrics-port 0``: no observer is registered, requests carry no observer ticket) and one
with metrics on (its own free port, scraped every 5 s during the run, a busy Prometheus's pace; a
scrape every 15 s to 1 min is usual). With ``--pin`` both gateways run on CPU 0 and the load
generator on CPU 1. Each round loads each gateway at each concurrency (batch 1, unary), the order
rotating from round to round. Reported per concurrency: each mode's median throughput, p50/p99
latency and gateway CPU per request, and the median over rounds of on/off with a bootstrap 95%
interval. Goal: at most 3%.

    python benchmarks/metrics_cost.py --pin --rounds 5 --concurrency 1 64
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import threading
import time
import urllib.request
from collections.abc import Sequence
from functools import partial

import rounds
from run_rollouts import Gateway, rounded

MODES = ("off", "on")
SCRAPE_EVERY_S = 5.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape_forever(port: int, stop: threading.Event, scrapes: list[float]) -> None:
    """Scrape like Prometheus, timing each scrape."""
    while not stop.wait(SCRAPE_EVERY_S):
        started = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
            answer.read()
        scrapes.append(time.perf_counter() - started)


def main(argv: Sequence[str] | None = None) -> int:
    args = rounds.cost_arguments(__doc__).parse_args(argv)
    started = time.time()
    work = rounds.digits_work_directory("turnout-metrics-cost-")
    server_cpu, client_cpu = rounds.cpus_of(args.pin)
    port = free_port()
    flags = {"off": ["--metrics-port", "0"], "on": ["--metrics-port", str(port), "--metrics-host", "127.0.0.1"]}
    stop = threading.Event()
    scrapes: list[float] = []
    starts = {mode: partial(Gateway, work / "models", server_cpu, *flags[mode]) for mode in MODES}
    with rounds.started_gateways(starts) as gateways:
        scraper = threading.Thread(target=scrape_forever, args=(port, stop, scrapes), daemon=True)
        scraper.start()
        try:
            cells = rounds.interleaved_cells(gateways, args.rounds, args.concurrency, args.duration_s, client_cpu)
        finally:
            stop.set()
    shutil.rmtree(work, ignore_errors=True)
    document = {
        **rounds.document_head("metrics_cost.py", argv, started),
        "per_concurrency": {f"{c}_in_flight": rounds.against_off(cells, c, MODES) for c in args.concurrency},
        "scrapes": {"count": len(scrapes), "median_ms": rounded(statistics.median(scrapes) * 1e3) if scrapes else None},
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
