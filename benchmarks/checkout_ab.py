"""This checkout's serving path against another checkout's, in interleaved rounds; prints one JSON document.

Two gateways with worker processes serve the example digits model with no policy, one running this
checkout's code and one a baseline's (``git worktree add /tmp/baseline COMMIT``); every gateway
process on CPU 0, the load generator on CPU 1. Each round loads each gateway at each concurrency
(batch 1, unary), the gateways' order alternating from round to round. Reported per concurrency:
the median over rounds of this checkout's figure over the baseline's, for throughput and for the
gateway's CPU time per request, with a bootstrap 95% interval of that median and the per-round
ratios, so a change that should cost nothing shows whether it stays inside the host's noise.

    git worktree add /tmp/baseline efed16c
    python benchmarks/checkout_ab.py --baseline /tmp/baseline --rounds 10
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from rounds import commit_of, digits_work_directory, document_head, interleaved_cells, started_gateways
from run_rollouts import REPO_ROOT, Gateway, median_interval, ratios_of, rounded
from run_serving import CLIENT_CPU, SERVER_CPU

MEASURES = ("throughput_rps", "server_cpu_us_per_request")


def summary(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    pairs = list(zip(ours, theirs, strict=True))
    result: dict[str, Any] = {}
    for measure in MEASURES:
        ratios = ratios_of(pairs, measure)
        low, high = median_interval(ratios)
        result[measure] = {
            "median_ratio": rounded(statistics.median(ratios)),
            "interval_95": [rounded(low), rounded(high)],
            "per_round": [rounded(r) for r in ratios],
            "this_median": rounded(statistics.median(cell[measure] for cell in ours)),
            "baseline_median": rounded(statistics.median(cell[measure] for cell in theirs)),
        }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the code to compare against")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--duration-s", type=float, default=2.0, help="measured seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 1])
    args = parser.parse_args(argv)
    started = time.time()
    work = digits_work_directory("turnout-checkout-ab-")
    starts = {
        "this": partial(Gateway, work / "models", SERVER_CPU, tree=REPO_ROOT),
        "baseline": partial(Gateway, work / "models", SERVER_CPU, tree=args.baseline),
    }
    try:
        with started_gateways(starts) as gateways:
            cells = interleaved_cells(gateways, args.rounds, args.concurrency, args.duration_s, CLIENT_CPU)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    document = {
        **document_head("checkout_ab.py", argv, started),
        "this": commit_of(REPO_ROOT),
        "baseline": f"{args.baseline} ({commit_of(args.baseline)})",
        "this_vs_baseline": {
            f"{concurrency}_in_flight": summary(cells[("this", concurrency)], cells[("baseline", concurrency)])
            for concurrency in args.concurrency
        },
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
