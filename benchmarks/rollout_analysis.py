"""Turnout's sequential rollout analysis against a fixed-threshold check every interval (as Flagger
does), on the same simulated traffic; prints JSON.

Each rollout serves ``--rate`` requests a second for ``--duration-s``, a share ``--canary-share`` on
the canary; the stable fails 1% of requests, latencies are log-normal (median 10 ms, sigma 0.5).
Scenarios: A/A (the false-rollback rate), the canary failing 0.5, 1 and 2 points more, and the
canary's latencies 1.1, 1.25 and 1.5 times the stable's.

- Turnout: :func:`gateway.analysis.simulation.rollbacks`, checked every ``--every`` requests.
- Interval check, as configured: every ``--interval-s`` the interval's canary error rate against the
  stable's plus the same margin, and the canary's p99 against the same ratio times the stable's;
  a rollback on the first failed check (Flagger's ``threshold: 1``).
- Interval check, calibrated: the same, with margin and ratio raised until the A/A rollouts roll
  back at most ``alpha`` of the time (each check ``alpha / 2``), with hindsight no operator has.

The limits are below every scenario's effect (margin 0.25 points, ratio 1.05), so each scenario is
a regression to be caught. "requests" counts both arms' requests served when the rollback came.

    python benchmarks/rollout_analysis.py                  # 50 rollouts of 300 s at 200 req/s
    python benchmarks/rollout_analysis.py --rate 2000 --duration-s 60 --rollouts 30
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from gateway.analysis.decision import Limits
from gateway.analysis.latency import LatencyBuckets
from gateway.analysis.simulation import NEVER, SyntheticArms, Traffic, rollbacks, synthetic_traffic

SCENARIOS: dict[str, dict[str, float]] = {
    "A/A": {},
    "errors +0.5 points": {"canary_error_rate": 0.015},
    "errors +1 point": {"canary_error_rate": 0.02},
    "errors +2 points": {"canary_error_rate": 0.03},
    "latency x1.1": {"canary_latency_ratio": 1.1},
    "latency x1.25": {"canary_latency_ratio": 1.25},
    "latency x1.5": {"canary_latency_ratio": 1.5},
}
BUCKETS = LatencyBuckets(first_bound_s=1e-3, growth=1.02, bounds=250)  # 1 ms to 140 ms, 2% apart


def interval_figures(traffic: Traffic, interval: int) -> dict[str, npt.NDArray[np.float64]]:
    """Per rollout and interval: each arm's error rate and p99 (successful requests)."""
    rollouts, requests = traffic.canary.shape
    shape = (rollouts, requests // interval, interval)
    canary = traffic.canary[:, : shape[1] * interval].reshape(shape)
    failed = traffic.failed[:, : shape[1] * interval].reshape(shape)
    latency = traffic.latency_s[:, : shape[1] * interval].reshape(shape)
    figures = {}
    for name, arm in (("canary", canary), ("stable", ~canary)):
        served = np.maximum(arm.sum(axis=2), 1)
        figures[f"{name}_errors"] = (arm & failed).sum(axis=2) / served
        figures[f"{name}_p99"] = np.nanpercentile(np.where(arm & ~failed, latency, np.nan), 99, axis=2)
    return figures


def interval_rollbacks(figures: dict[str, npt.NDArray[np.float64]], margin: float, ratio: float, interval: int) -> Any:
    fails = (figures["canary_errors"] > figures["stable_errors"] + margin) | (
        figures["canary_p99"] > ratio * figures["stable_p99"]
    )
    return np.where(fails.any(axis=1), (fails.argmax(axis=1) + 1) * interval, NEVER)


def calibrated(figures: dict[str, npt.NDArray[np.float64]], alpha: float) -> tuple[float, float]:
    """The margin and ratio at which the A/A rollouts' worst intervals fail at most alpha / 2 of the time each."""
    worst_excess = (figures["canary_errors"] - figures["stable_errors"]).max(axis=1)
    worst_ratio = (figures["canary_p99"] / figures["stable_p99"]).max(axis=1)
    return float(np.quantile(worst_excess, 1 - alpha / 2)), float(np.quantile(worst_ratio, 1 - alpha / 2))


def summary(at: npt.NDArray[np.int64], rate: float) -> dict[str, Any]:
    caught = at[at != NEVER]
    median = float(np.median(caught)) if caught.size else None
    return {
        "rolled_back": round(float((at != NEVER).mean()), 4),
        "median_requests": median,
        "median_s": round(median / rate, 1) if median is not None else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second, both arms")
    parser.add_argument("--duration-s", type=float, default=300.0, help="one rollout's length")
    parser.add_argument("--canary-share", type=float, default=0.1)
    parser.add_argument("--interval-s", type=float, default=60.0, help="the interval check's period")
    parser.add_argument("--rollouts", type=int, default=50)
    parser.add_argument("--every", type=int, default=10, help="Turnout looks after every this many requests")
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    limits = Limits(alpha=args.alpha, max_error_increase=0.0025, max_latency_ratio=1.05)
    requests = int(args.rate * args.duration_s)
    interval = int(args.rate * args.interval_s)
    base = SyntheticArms(canary_share=args.canary_share)
    started = time.perf_counter()
    results: dict[str, Any] = {}
    margin = ratio = 0.0
    for index, (name, change) in enumerate(SCENARIOS.items()):
        traffic = synthetic_traffic(replace(base, **change), args.rollouts, requests, args.seed + index)
        figures = interval_figures(traffic, interval)
        if name == "A/A":
            margin, ratio = calibrated(figures, args.alpha)
        turnout = rollbacks(traffic, limits, BUCKETS, every=args.every)
        results[name] = {
            "turnout": summary(turnout.at_request, args.rate)
            | {"by_check": {check: int((at != NEVER).sum()) for check, at in turnout.by_check.items()}},
            "interval_check": summary(
                interval_rollbacks(figures, limits.max_error_increase, limits.max_latency_ratio, interval), args.rate
            ),
            "interval_check_calibrated": summary(interval_rollbacks(figures, margin, ratio, interval), args.rate),
        }
    print(json.dumps({
        "settings": vars(args) | {"requests_per_rollout": requests, "requests_per_interval": interval,
                                  "max_error_increase": limits.max_error_increase,
                                  "max_latency_ratio": limits.max_latency_ratio,
                                  "stable_error_rate": base.stable_error_rate,
                                  "calibrated_margin": round(margin, 5), "calibrated_ratio": round(ratio, 4)},
        "scenarios": results,
        "seconds": round(time.perf_counter() - started, 1),
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
