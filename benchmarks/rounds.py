"""Interleaved rounds of load against several running gateways, and which checkout each one runs.

Shared by the scripts that compare gateways on this noisy host (``checkout_ab.py``, and the cost
scripts ``capture_cost.py``, ``access_log_cost.py``, ``metrics_cost.py``, ``tracing_cost.py``): each
round loads every gateway at every concurrency, the gateways' order rotating from round to round, so
that compared cells are measured close together in time; :func:`against_off` summarises the cells of
a cost script, each mode against the gateway with the feature off. The cost scripts also share their
command line (:func:`cost_arguments`), their work directory with the digits model
(:func:`digits_work_directory`), the gateways' lifetime (:func:`started_gateways`) and the head of
their JSON document (:func:`document_head`).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from run_rollouts import REPO_ROOT, Gateway, load, median_interval, ratios_of, rounded
from run_serving import CLIENT_CPU, SERVER_CPU, machine

Cells = dict[tuple[str, int], list[dict[str, Any]]]
MEASURES = ("throughput_rps", "p50_ms", "p99_ms", "server_cpu_us_per_request")
OFF = "off"  # the mode every other mode of a cost script is compared with


def cost_arguments(description: str | None, concurrency: Sequence[int] = (1, 64)) -> argparse.ArgumentParser:
    """The command line every cost script takes; a script may add arguments of its own."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration-s", type=float, default=3.0, help="measured seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(concurrency))
    parser.add_argument("--pin", action="store_true", help="gateways on CPU 0, the load generator on CPU 1")
    return parser


def cpus_of(pin: bool) -> tuple[str | None, str | None]:
    """(the gateways' CPU, the load generator's CPU): both ``None`` unless pinned."""
    return (SERVER_CPU, CLIENT_CPU) if pin else (None, None)


def digits_work_directory(prefix: str) -> Path:
    """A fresh temporary directory holding ``models/digits`` (the example model); the caller removes it."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.copytree(REPO_ROOT / "examples" / "models" / "digits", work / "models" / "digits")
    return work


@contextmanager
def started_gateways(starts: Mapping[str, Callable[[], Gateway]]) -> Iterator[dict[str, Gateway]]:
    """Starts a gateway per name, in order, and stops every one started when the block ends, even
    when a later one failed to start."""
    gateways: dict[str, Gateway] = {}
    try:
        for name, start in starts.items():
            gateways[name] = start()
        yield gateways
    finally:
        for gateway in gateways.values():
            gateway.stop()


def document_head(script: str, argv: Sequence[str] | None, started: float, commit: bool = False) -> dict[str, Any]:
    """The first keys of a comparison script's JSON document: how it was run, when, on what machine
    and, with ``commit``, from which commit of this checkout."""
    arguments = argv if argv is not None else sys.argv[1:]
    head: dict[str, Any] = {"command": " ".join([f"python benchmarks/{script}", *arguments])}
    if commit:
        head["commit"] = commit_of(REPO_ROOT)
    return head | {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "wall_s": round(time.time() - started, 1),
        "machine": machine(),
    }


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
