"""``turnout rollout``: start a progressive rollout, or pause, resume or abort one; its ``turnout status`` lines."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from gateway.wire.turnout.v1 import rollouts_pb2 as pb

_DEFAULT_STEPS = "5,25,50,100"


def _steps(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"steps are percents joined by commas, as 5,25,50,100: {text!r}") from None


def add_rollout_flags(rollout: argparse.ArgumentParser) -> None:
    """``turnout rollout MODEL [VERSION]`` after the common control flags (model, server, TLS, --json)."""
    rollout.add_argument(
        "version", type=int, nargs="?", default=0, help="the candidate version (required to start a rollout)"
    )
    action = rollout.add_mutually_exclusive_group()
    action.add_argument("--pause", action="store_true", help="hold the rollout at its step (default: off)")
    action.add_argument("--resume", action="store_true", help="run a paused rollout on (default: off)")
    action.add_argument("--abort", action="store_true", help="end the rollout and remove the canary (default: off)")
    rollout.add_argument("--steps", type=_steps, default=_steps(_DEFAULT_STEPS), metavar="P,P,...",
                         help=f"the canary's weights in percent, rising (default: {_DEFAULT_STEPS})")  # fmt: skip
    rollout.add_argument("--step-s", type=float, default=60.0, metavar="SECONDS",
                         help="longest a step lasts without conclusive evidence (default: 60)")  # fmt: skip
    rollout.add_argument("--sticky-key", default="", metavar="KEY",
                         help="metadata key pinning a caller to one side of the split (default: none)")  # fmt: skip
    rollout.add_argument("--max-error-increase", type=float, default=0.005, metavar="X",
                         help="roll back when the canary's error rate is higher by more (default: 0.005)")  # fmt: skip
    rollout.add_argument("--max-latency-ratio", type=float, default=1.2, metavar="X",
                         help="roll back when the canary is slower than X times the stable (default: 1.2)")  # fmt: skip
    rollout.add_argument("--max-divergence", type=float, default=0.0, metavar="X",
                         help="roll back when shadow disagreement is above X (default: no such check)")  # fmt: skip
    rollout.add_argument("--alpha", type=float, default=0.05, metavar="X",
                         help="the chance of a false rollback over the whole rollout (default: 0.05)")  # fmt: skip
    rollout.add_argument("--min-requests", type=int, default=100, metavar="N",
                         help="requests per arm before any decision, and per step before an early step-up"
                         " (default: 100)")  # fmt: skip
    rollout.add_argument("--reason", default="", metavar="TEXT", help="why, for the audit history (default: none)")


def rollout_call(stub: Any, args: argparse.Namespace) -> tuple[Any, Any]:
    """The RPC and its request for ``turnout rollout``'s arguments."""
    changes = {"pause": pb.ChangeRolloutRequest.PAUSE, "resume": pb.ChangeRolloutRequest.RESUME,
               "abort": pb.ChangeRolloutRequest.ABORT}  # fmt: skip
    for flag, action in changes.items():
        if getattr(args, flag):
            return stub.ChangeRollout, pb.ChangeRolloutRequest(model=args.model, action=action, reason=args.reason)
    if not args.version:
        raise SystemExit("turnout rollout: give VERSION to start a rollout, or --pause, --resume or --abort")
    request = pb.StartRolloutRequest(
        model=args.model, version=args.version, steps=args.steps, step_s=args.step_s, sticky_key=args.sticky_key,
        max_error_increase=args.max_error_increase, max_latency_ratio=args.max_latency_ratio,
        max_divergence=args.max_divergence, alpha=args.alpha, min_requests=args.min_requests, reason=args.reason,
    )  # fmt: skip
    return stub.StartRollout, request


def rollout_json(state: Any) -> dict[str, Any]:
    """``turnout status --json``'s ``rollout``: phase, step, weight, and the evidence per check."""
    evidence = json.loads(state.evidence_json) if state.evidence_json else {}
    return {
        "version": state.version,
        "stable": state.stable,
        "phase": state.phase,
        "step": state.step_index + 1,
        "steps": list(state.steps),
        "weight_percent": state.weight_percent,
        "step_s": state.step_s,
        "message": state.message,
        "verdict": evidence.get("verdict"),
        "evidence": evidence.get("checks", []),
        "actor": state.actor,
        "reason": state.reason,
    }


def describe_rollout(state: Any) -> str:
    """A rollout for a person: where it is, what it waits for, and each check's evidence."""
    started = time.strftime("%H:%M:%S", time.localtime(state.started_at_unix_s))
    steps = ",".join(f"{step:g}" for step in state.steps)
    lines = [
        f"  rollout of v{state.version} over v{state.stable}: {state.phase}, step {state.step_index + 1}/"
        f"{len(state.steps)} ({steps}%), canary at {state.weight_percent:g}%, started {started} by {state.actor}",
    ]
    if state.message:
        lines.append(f"    {state.message}")
    evidence = json.loads(state.evidence_json) if state.evidence_json else {}
    for check in evidence.get("checks", []):
        found = "WORSE" if check.get("worse") else "no worse" if check.get("no_worse") else "open"
        lines.append(
            f"    {check['check']:<14} {found:<8}  e-value worse {_number(check.get('e_value_worse'))}"
            f" (bound {_number(check.get('bound'))}), no worse {_number(check.get('e_value_no_worse'))}"
            f" (bound {_number(check.get('no_worse_bound'))})"
        )
    return "\n".join(lines)


def describe_rollout_state(state: Any) -> str:
    return f"{state.model}\n" + describe_rollout(state)


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.3g}"
