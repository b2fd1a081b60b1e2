"""Interleaved rounds of load against several running gateways, and which checkout each one runs.

Shared by the scripts that compare gateways on this noisy host (``checkout_ab.py``,
``capture_cost.py``): each round loads every gateway at every concurrency, the gateways' order
rotating from round to round, so that compared cells are measured close together in time.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from run_rollouts import Gateway, load

Cells = dict[tuple[str, int], list[dict[str, Any]]]


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
