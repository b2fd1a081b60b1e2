"""What the access log costs the serving path: off, on in text and on in JSON, in interleaved rounds; prints JSON.

Three gateways with worker processes serve the example digits model (no policy): one without the
access log, one with ``--access-log on`` (text lines) and one with ``--log-format json --access-log
on``, every gateway on CPU 0 and the load generator on CPU 1 with ``--pin``. Each round loads each
gateway at each concurrency (batch 1, unary), the order rotating from round to round. Reported per
concurrency: each mode's median throughput, p50/p99 latency and gateway CPU per request, and the
median over rounds of text/off and json/off with a bootstrap 95% interval. The gateways' stderr
(the access lines) goes wherever this script's stderr goes: send it to a file, as a service's log
would be.

    python benchmarks/access_log_cost.py --pin --rounds 5 2> /tmp/access-lines.log
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rounds import Cells, commit_of, interleaved_cells
from run_rollouts import REPO_ROOT, Gateway, median_interval, ratios_of, rounded
from run_serving import CLIENT_CPU, SERVER_CPU, machine

MODES = ("off", "text", "json")
MEASURES = ("throughput_rps", "p50_ms", "p99_ms", "server_cpu_us_per_request")
FLAGS = {"off": [], "text": ["--access-log", "on"], "json": ["--log-format", "json", "--access-log", "on"]}


def value(run: dict[str, Any], measure: str) -> float:
    if measure in ("p50_ms", "p99_ms"):
        return float(run["latency_ms"][measure[:3]])
    return float(run[measure])


def summary(cells: Cells, concurrency: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for mode in MODES:
        runs = cells[(mode, concurrency)]
        result[mode] = {m: rounded(statistics.median(value(run, m) for run in runs)) for m in MEASURES}
    for mode in MODES[1:]:
        pairs = list(zip(cells[(mode, concurrency)], cells[("off", concurrency)], strict=True))
        for measure in ("throughput_rps", "server_cpu_us_per_request"):
            ratios = ratios_of(pairs, measure)
            low, high = median_interval(ratios)
            result[mode][f"{measure}_vs_off"] = {
                "median_ratio": rounded(statistics.median(ratios)), "interval_95": [rounded(low), rounded(high)],
            }  # fmt: skip
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration-s", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--pin", action="store_true", help="gateways on CPU 0, the load generator on CPU 1")
    args = parser.parse_args(argv)
    started = time.time()
    work = Path(tempfile.mkdtemp(prefix="turnout-access-log-cost-"))
    shutil.copytree(REPO_ROOT / "examples" / "models" / "digits", work / "models" / "digits")
    server_cpu, client_cpu = (SERVER_CPU, CLIENT_CPU) if args.pin else (None, None)
    gateways: dict[str, Gateway] = {}
    try:
        for mode in MODES:
            gateways[mode] = Gateway(work / "models", server_cpu, *FLAGS[mode])
        cells = interleaved_cells(gateways, args.rounds, args.concurrency, args.duration_s, client_cpu)
    finally:
        for gateway in gateways.values():
            gateway.stop()
    shutil.rmtree(work, ignore_errors=True)
    document = {
        "command": " ".join(["python benchmarks/access_log_cost.py", *(argv if argv is not None else sys.argv[1:])]),
        "commit": commit_of(REPO_ROOT),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),
        "machine": machine(),
        "per_concurrency": {f"{c}_in_flight": summary(cells, c) for c in args.concurrency},
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
