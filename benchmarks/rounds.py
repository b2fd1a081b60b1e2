"""Interleaved rounds of load against several running gateways, and which checkout each one runs.

Shared by the scripts that compare gateways on this noisy host (``checkout_ab.py``, and the cost
scripts ``capture_cost.py``, ``access_log_cost.py``, ``metrics_cost.py``, ``tracing_cost.py``): each
round loads every gateway at every concurrency, the gateways' order rotating from round to round, so
that compared cells are measured close together in time; :func:`against_off` summarises the cells of
a cost script, each mode against the gateway with the feature off.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from run_rollouts import Gateway, load, median_interval, ratios_of, rounded

Cells = dict[tuple[str, int], list[dict[str, Any]]]
MEASURES = ("throughput_rps", "p50_ms", "p99_ms", "server_cpu_us_per_request")
OFF = "off"  # the mode every other mode of a cost script is compared with


def interleaved_cells(
    gateways: Mapping[str, Gateway],
    rounds: int,
    concurrencies: Sequence[int],
    duration_s: float,
    client_cpu: str | None,
) -> Cells:
    """(gateway name, concurrency) -> one load generator run per round; a run with errors stops it all."""
    names = list(gateways)
    cells: Cells = {}
    for round_index in range(rounds):
        shift = round_index % len(names)
        for concurrency in concurrencies:
            for name in names[shift:] + names[:shift]:
                cell = load(gateways[name], concurrency, duration_s, client_cpu)
                if cell.get("error_count"):
                    raise RuntimeError(f"{name} answered with errors: {cell.get('first_error')}")
                cells.setdefault((name, concurrency), []).append(cell)
        print(f"round {round_index} done", file=sys.stderr, flush=True)
    return cells


def commit_of(tree: Path) -> str:
    """The checkout's commit, with ``+changes`` when its working tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=tree, capture_output=True, text=True).stdout
    return head.stdout.strip() + ("+changes" if dirty.strip() else "")


def value(run: dict[str, Any], measure: str) -> float:
    """One of :data:`MEASURES` of a load generator run."""
    if measure in ("p50_ms", "p99_ms"):
        return float(run["latency_ms"][measure[:3]])
    return float(run[measure])


def against_off(
    cells: Cells,
    concurrency: int,
    modes: Sequence[str],
    compared: Sequence[str] = ("throughput_rps", "server_cpu_us_per_request"),
) -> dict[str, Any]:
    """Each mode's median of every measure, and for each mode but ``off`` the median ratio to ``off``
    of each ``compared`` measure, with its bootstrap 95% interval, round by round."""
    result: dict[str, Any] = {}
    for mode in modes:
        runs = cells[(mode, concurrency)]
        result[mode] = {m: rounded(statistics.median(value(run, m) for run in runs)) for m in MEASURES}
    for mode in modes:
        if mode == OFF:
            continue
        pairs = list(zip(cells[(mode, concurrency)], cells[(OFF, concurrency)], strict=True))
        for measure in compared:
            if measure in ("p50_ms", "p99_ms"):
                ratios = [value(ours, measure) / value(theirs, measure) for ours, theirs in pairs]
            else:
                ratios = ratios_of(pairs, measure)
            low, high = median_interval(ratios)
            result[mode][f"{measure}_vs_off"] = {
                "median_ratio": rounded(statistics.median(ratios)), "interval_95": [rounded(low), rounded(high)],
            }  # fmt: skip
    return result
