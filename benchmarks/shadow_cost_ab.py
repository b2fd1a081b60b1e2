"""What misbehaving shadows cost the caller, for this checkout against another one, in one run.

Two gateways on CPU 0 (the load generator on CPU 1), one running this checkout's code and one a
baseline checkout's (``git worktree add /tmp/baseline COMMIT``), on the rollouts benchmark's
repository. Each round switches each gateway between "stable 1 alone" and 100% shadows on a version
sleeping 10 ms a batch and one that always fails, gateways in alternating order. Prints JSON: per
gateway and concurrency, the medians over rounds of (with shadows / without) for the caller's p99
and the gateway's CPU per request, and this checkout's figures over the baseline's with shadows on.

    git worktree add /tmp/baseline 777693b
    python benchmarks/shadow_cost_ab.py --baseline /tmp/baseline --rounds 10
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from run_rollouts import (
    MISBEHAVING_SHADOWS,
    REPO_ROOT,
    STABLE_ONLY,
    Gateway,
    build_repository,
    load,
    median_ratio,
    rounded,
)


def p99_and_cpu_ratios(pairs: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, float | None]:
    """The medians over rounds of (first cell / second cell): caller p99 and gateway CPU per request."""
    return {
        "p99": rounded(median_ratio(pairs, "p99")),
        "server_cpu_per_request": rounded(median_ratio(pairs, "server_cpu_us_per_request")),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the code to compare against")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--duration-s", type=float, default=1.5)
    args = parser.parse_args(argv)
    repository = build_repository(Path(tempfile.mkdtemp(prefix="turnout-shadow-ab-")) / "repository")
    gateways = {
        "this": Gateway(repository, "0", tree=REPO_ROOT),
        "baseline": Gateway(repository, "0", tree=args.baseline),
    }
    cells: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    try:
        for concurrency in (8, 64):
            for round_index in range(args.rounds):
                names = list(gateways) if round_index % 2 == 0 else list(reversed(gateways))
                for name in names:
                    for policy_name, policy in (("stable", STABLE_ONLY), ("shadows", MISBEHAVING_SHADOWS)):
                        gateways[name].set_policy(policy)
                        cell = load(gateways[name], concurrency, args.duration_s, "1")
                        cells.setdefault((concurrency, name, policy_name), []).append(cell)
    finally:
        for gateway in gateways.values():
            gateway.stop()
    result: dict[str, Any] = {"baseline": str(args.baseline), "rounds": args.rounds, "duration_s": args.duration_s}
    for concurrency in (8, 64):
        for name in gateways:
            pairs = list(zip(cells[(concurrency, name, "shadows")], cells[(concurrency, name, "stable")], strict=True))
            result[f"{name}@{concurrency}_shadows_vs_stable"] = p99_and_cpu_ratios(pairs)
        ours, theirs = cells[(concurrency, "this", "shadows")], cells[(concurrency, "baseline", "shadows")]
        pairs = list(zip(ours, theirs, strict=True))
        result[f"this_vs_baseline@{concurrency}_with_shadows"] = p99_and_cpu_ratios(pairs)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
