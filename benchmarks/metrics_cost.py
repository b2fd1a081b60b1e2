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

import argparse
import json
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from rounds import against_off, interleaved_cells
from run_rollouts import REPO_ROOT, Gateway, rounded
from run_serving import CLIENT_CPU, SERVER_CPU, machine

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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration-s", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--pin", action="store_true", help="gateways on CPU 0, the load generator on CPU 1")
    args = parser.parse_args(argv)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="turnout-metrics-cost-"))
    shutil.copytree(REPO_ROOT / "examples" / "models" / "digits", work / "models" / "digits")
    server_cpu, client_cpu = (SERVER_CPU, CLIENT_CPU) if args.pin else (None, None)
    port = free_port()
    flags = {"off": ["--metrics-port", "0"], "on": ["--metrics-port", str(port), "--metrics-host", "127.0.0.1"]}
    gateways: dict[str, Gateway] = {}
    stop = threading.Event()
    scrapes: list[float] = []
    try:
        for mode in MODES:
            gateways[mode] = Gateway(work / "models", server_cpu, *flags[mode])
        scraper = threading.Thread(target=scrape_forever, args=(port, stop, scrapes), daemon=True)
        scraper.start()
        cells = interleaved_cells(gateways, args.rounds, args.concurrency, args.duration_s, client_cpu)
    finally:
        stop.set()
        for gateway in gateways.values():
            gateway.stop()
    shutil.rmtree(work, ignore_errors=True)
    document = {
        "command": " ".join(["python benchmarks/metrics_cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),
        "machine": machine(),
        "per_concurrency": {f"{c}_in_flight": against_off(cells, c, MODES) for c in args.concurrency},
        "scrapes": {"count": len(scrapes), "median_ms": rounded(statistics.median(scrapes) * 1e3) if scrapes else None},
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
