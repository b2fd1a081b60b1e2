"""Progressive rollouts, the operator's side: start one, pause, resume or abort it, read it, end it.

A rollout is a record in the state store (:mod:`gateway.state.rollout_record`) plus the canary it
sets through the ordinary use cases (:class:`gateway.rollouts.control.Rollouts`), so every change
it makes is in the audit history. The judging is :mod:`gateway.rollouts.rollout_controller`'s.
A manual canary, promote, rollback or policy change ends a running rollout first
(:meth:`ProgressiveRollouts.end_for_manual_change`), so that the two never fight over the canary.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from gateway.errors import FailedPrecondition, InvalidArgument, NotFound
from gateway.rollouts.control import Rollouts
from gateway.state.rollout_record import (
    ABORTED,
    PAUSED,
    RUNNING,
    RolloutConflict,
    RolloutLimits,
    RolloutRecord,
)
from gateway.state.store import StateStore

ANALYSIS_ACTOR = "turnout-analysis"  # who the audit history names for the analysis' own changes
DEFAULT_STEPS = (5.0, 25.0, 50.0, 100.0)


@dataclass(frozen=True)
class RolloutRequest:
    """``turnout rollout MODEL VERSION`` and its flags."""

    model: str
    version: int
    steps: tuple[float, ...] = DEFAULT_STEPS
    step_s: float = 60.0
    sticky_key: str = ""
    limits: RolloutLimits = field(default_factory=RolloutLimits)
    reason: str = ""


def step_reason(index: int, steps: Sequence[float], why: str) -> str:
    return f"rollout step {index + 1}/{len(steps)}: canary at {steps[index]:g}% ({why})"


class ProgressiveRollouts:
    def __init__(self, store: StateStore, rollouts: Rollouts, counts_arms: bool,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self._store = store
        self._rollouts = rollouts
        self._counts_arms = counts_arms  # False with --metrics-port 0: nothing to judge a canary by
        self._clock = clock

    def rollout(self, model: str) -> RolloutRecord:
        found = self._store.rollout(model)
        if found is None:
            raise NotFound(f"model {model!r} has had no rollout")
        return found

    def start(self, request: RolloutRequest, actor: str) -> RolloutRecord:
        _check(request)
        if not self._counts_arms:
            raise FailedPrecondition("a rollout is judged on each arm's requests, which --metrics-port 0 turns off")
        model = request.model
        existing = self._store.rollout(model)
        if existing is not None and existing.active:
            raise FailedPrecondition(
                f"model {model!r} is already rolling out version {existing.version} ({existing.phase}); abort it first"
            )
        stable = self._rollouts.policy(model).policy.stable
        if stable == request.version:
            raise FailedPrecondition(f"version {request.version} of model {model!r} is already the stable version")
        steps = request.steps
        why = request.reason or "rollout started"
        view = self._rollouts.set_canary(
            model, request.version, steps[0], request.sticky_key, actor, step_reason(0, steps, why),
            compared=request.limits.max_divergence is not None,
        )  # fmt: skip
        now = self._clock()
        record = RolloutRecord(
            model=model, version=request.version, stable=view.policy.stable, steps=steps, step_s=request.step_s,
            phase=RUNNING, step_index=0, weight_percent=steps[0], limits=request.limits, started_at=now,
            step_started_at=now, sticky_key=request.sticky_key, reason=request.reason, actor=actor,
            message="started",
        )  # fmt: skip
        return self._store.save_rollout(record, existing.revision if existing is not None else None)

    def pause(self, model: str, actor: str) -> RolloutRecord:
        """Hold the canary where it is: no step changes, and no automatic rollback, until resumed."""
        return self._change(model, (RUNNING,), lambda r: replace(r, phase=PAUSED, message=f"paused by {actor}"))

    def resume(self, model: str, actor: str) -> RolloutRecord:
        """Run on from the step it was paused at; that step's time starts afresh."""
        now = self._clock()
        return self._change(
            model, (PAUSED,), lambda r: replace(r, phase=RUNNING, step_started_at=now, message=f"resumed by {actor}")
        )

    def abort(self, model: str, actor: str, reason: str) -> RolloutRecord:
        """End the rollout and take the canary away: the stable version serves everything again."""
        ended = self._change(
            model, (RUNNING, PAUSED), lambda r: replace(r, phase=ABORTED, message=f"aborted by {actor}")
        )
        current = self._rollouts.policy(model).policy
        if current.canary is not None and current.canary.version == ended.version:
            self._rollouts.clear_canary(model, actor, reason or f"rollout of version {ended.version} aborted")
        return ended

    def end_for_manual_change(self, model: str, actor: str, action: str) -> str:
        """Before a manual change of the model's policy: end its rollout, if one is active; says so ('' if none)."""
        for _ in range(5):
            record = self._store.rollout(model)
            if record is None or not record.active:
                return ""
            message = f"ended by {actor or 'unknown'}'s manual {action}"
            try:
                self._store.save_rollout(replace(record, phase=ABORTED, message=message), record.revision)
            except RolloutConflict:
                continue
            step = f"step {record.step_index + 1}/{len(record.steps)}"
            return f"the rollout of version {record.version} ({step}) was {message}"
        raise FailedPrecondition(f"the rollout of model {model!r} kept changing; retry")

    def _change(
        self, model: str, phases: tuple[str, ...], change: Callable[[RolloutRecord], RolloutRecord]
    ) -> RolloutRecord:
        for _ in range(5):
            record = self.rollout(model)
            if record.phase not in phases:
                raise FailedPrecondition(f"the rollout of model {model!r} is {record.phase}")
            try:
                return self._store.save_rollout(change(record), record.revision)
            except RolloutConflict:
                continue  # the analysis saved its evidence meanwhile: read again
        raise FailedPrecondition(f"the rollout of model {model!r} kept changing; retry")


def _check(request: RolloutRequest) -> None:
    steps, limits = request.steps, request.limits
    if not steps or any(not 0 < step <= 100 for step in steps) or list(steps) != sorted(set(steps)):
        raise InvalidArgument(f"steps must rise, each above 0 and at most 100 (percent): got {list(steps)}")
    if not (math.isfinite(request.step_s) and request.step_s > 0):
        raise InvalidArgument(f"--step-s must be above 0: got {request.step_s}")
    if not 0 < limits.alpha < 1:
        raise InvalidArgument(f"--alpha must be between 0 and 1: got {limits.alpha}")
    if not 0 < limits.max_error_increase < 1:
        raise InvalidArgument(f"--max-error-increase must be between 0 and 1: got {limits.max_error_increase}")
    if not limits.max_latency_ratio > 1:
        raise InvalidArgument(f"--max-latency-ratio must be above 1: got {limits.max_latency_ratio}")
    if limits.max_divergence is not None and not 0 < limits.max_divergence < 1:
        raise InvalidArgument(f"--max-divergence must be between 0 and 1: got {limits.max_divergence}")
    if limits.min_requests < 1:
        raise InvalidArgument(f"--min-requests must be at least 1: got {limits.min_requests}")
