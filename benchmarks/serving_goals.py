"""Issue 2's three pinned goals, measured in interleaved rounds; prints one JSON document.

One run of ``run_serving.py`` gives each goal a single ratio, and on a shared host a single ratio
moves by a third from run to run. This script starts only the three servers the goals name
(Turnout with worker processes, Turnout in-process, the bare synchronous server), every server
process on CPU 0 and the load generator on CPU 1, and runs short cells in rounds: in each round,
each workload the goals name (batch 1 at 64 and at 1 in flight, unary) on each server, the order
of the servers rotating from round to round. Per goal it reports the median over rounds of the
round's ratio and a bootstrap 95% interval of that median, and whether the median meets the goal.

    python benchmarks/serving_goals.py                          # 10 rounds of 2 s cells, about 5 minutes
    python benchmarks/serving_goals.py --rounds 20 --duration-s 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from run_rollouts import median_interval, ratios_of, rounded
from run_serving import (
    CLIENT_CPU,
    GOAL_P99_VS_BARE,
    GOAL_PROCESS_VS_INPROCESS,
    GOAL_THROUGHPUT_VS_BARE,
    REPO_ROOT,
    SERVER_CPU,
    machine,
    run_cell,
    running,
    targets,
)

SERVERS = ("turnout-process", "turnout-inprocess", "bare-sync")
IN_FLIGHT = (64, 1)


@dataclass(frozen=True)
class Goal:
    name: str
    ours: str  # the server on top of the ratio
    theirs: str  # the one below it
    in_flight: int
    measure: str  # "throughput_rps" or "p99", as run_rollouts.ratios_of takes them
    limit: float
    at_least: bool


GOALS = (
    Goal(
        "throughput_vs_bare_sync", "turnout-process", "bare-sync", 64, "throughput_rps", GOAL_THROUGHPUT_VS_BARE, True
    ),
    Goal(
        "process_boundary_cost",
        "turnout-process",
        "turnout-inprocess",
        64,
        "throughput_rps",
        GOAL_PROCESS_VS_INPROCESS,
        True,
    ),
    Goal("p99_vs_bare_sync_at_1_in_flight", "turnout-process", "bare-sync", 1, "p99", GOAL_P99_VS_BARE, False),
)

Cells = dict[tuple[str, int], list[dict[str, Any]]]


def run_rounds(args: argparse.Namespace) -> Cells:
    chosen = [t for t in targets(REPO_ROOT / "examples" / "models", args.python) if t.name in SERVERS]
    cells: Cells = {}
    with running(chosen, SERVER_CPU) as servers:
        for round_index in range(args.rounds):
            shift = round_index % len(SERVERS)
            order = [*SERVERS[shift:], *SERVERS[:shift]]
            for concurrency in IN_FLIGHT:
                for name in order:
                    cell = run_cell(args, servers[name], 1, concurrency, "unary", CLIENT_CPU)
                    if cell.get("error_count"):
                        raise RuntimeError(f"{name} answered with errors: {cell.get('first_error')}")
                    cells.setdefault((name, concurrency), []).append(cell)
            print(f"round {round_index}: " + ", ".join(
                f"{name}@{c} {cells[(name, c)][-1]['throughput_rps']:.0f}/s "
                f"p99 {cells[(name, c)][-1]['latency_ms']['p99']:.2f}ms" for c in IN_FLIGHT for name in SERVERS
            ), file=sys.stderr, flush=True)
    return cells


def judged(cells: Cells) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for goal in GOALS:
        pairs = list(zip(cells[(goal.ours, goal.in_flight)], cells[(goal.theirs, goal.in_flight)], strict=True))
        ratios = ratios_of(pairs, goal.measure)
        median = statistics.median(ratios)
        low, high = median_interval(ratios)
        result[goal.name] = {
            "median": rounded(median),
            "interval_95": [rounded(low), rounded(high)],
            "per_round": [rounded(r) for r in ratios],
            "goal": f"{'>=' if goal.at_least else '<='} {goal.limit}",
            "met": median >= goal.limit if goal.at_least else median <= goal.limit,
        }
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--duration-s", type=float, default=2.0, help="measured seconds per cell")
    parser.add_argument("--warmup-s", type=float, default=0.5, help="unmeasured seconds before each cell")
    parser.add_argument("--python", default=sys.executable, help="interpreter for servers and the load generator")
    args = parser.parse_args(argv)
    args.client_processes = 1  # what run_cell reads; one asyncio process drives these loads
    started = time.time()
    cells = run_rounds(args)
    document = {
        "command": " ".join(["python benchmarks/serving_goals.py", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),
        "machine": machine(),
        "goals": judged(cells),
        "cells": {f"{name}@{concurrency}": found for (name, concurrency), found in cells.items()},
    }
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
