"""What capture costs the serving path: capture off, async and sync, in interleaved rounds; prints JSON.

Three gateways with worker processes serve the example digits model (no policy): one without
capture, one with ``--capture-durability async`` and one with ``sync`` (each its own capture
directory), every gateway on CPU 0 and the load generator on CPU 1 with ``--pin``. Each round loads
each gateway at each concurrency (batch 1, unary), the order rotating from round to round. Reported
per concurrency: each mode's median throughput, p50/p99 latency and gateway CPU per request, and the
median over rounds of async/off and sync/off with a bootstrap 95% interval, plus the records kept.

    python benchmarks/capture_cost.py --pin --rounds 5
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import rounds
from run_rollouts import Gateway

from gateway.capture.stats import saved_totals

MODES = ("off", "async", "sync")


def flags_of(mode: str, root: Path) -> list[str]:
    if mode == "off":
        return []
    return ["--capture-dir", str(root / mode), "--capture-durability", mode]


def main(argv: Sequence[str] | None = None) -> int:
    args = rounds.cost_arguments(__doc__, concurrency=(64,)).parse_args(argv)
    started = time.time()
    work = rounds.digits_work_directory("turnout-capture-cost-")
    server_cpu, client_cpu = rounds.cpus_of(args.pin)
    starts = {mode: partial(Gateway, work / "models", server_cpu, *flags_of(mode, work)) for mode in MODES}
    with rounds.started_gateways(starts) as gateways:
        cells = rounds.interleaved_cells(gateways, args.rounds, args.concurrency, args.duration_s, client_cpu)
    kept = {mode: saved_totals(work / mode) for mode in MODES[1:]}
    shutil.rmtree(work, ignore_errors=True)
    document = {
        **rounds.document_head("capture_cost.py", argv, started),
        "per_concurrency": {f"{c}_in_flight": rounds.against_off(cells, c, MODES) for c in args.concurrency},
        "capture_counters": kept,
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
