"""The rollout analysis' loop: one leader per fleet judges every running rollout on a tick, and acts.

Every gateway process runs this loop; only the holder of the state store's lease
(:data:`LEASE`) judges. It takes the lease on each tick while some rollout is active (taking it
also renews it), so when the leader dies its lease lapses after :data:`LEASE_TTL_S` and another
process takes over. While a rollout is active every process publishes its per-arm totals to the
store on each tick (when they changed, and at least every :data:`PUBLISH_AGAIN_S` as a sign of
life); the leader reads every live process's, on every host sharing the store, and feeds their
differences (:mod:`gateway.rollouts.arm_deltas`) to one :class:`RolloutAnalysis` per rollout, so
the analysis sees every request of the fleet once. The analysis lives in the leader's memory:
a new leader (or a restarted gateway) starts gathering evidence afresh from its first tick, which
only delays a decision, never makes a wrong one.

On each tick, per running rollout: ROLL_BACK rolls back (the one-call rollback, the evidence as
its reason, actor ``turnout-analysis``); STEP_UP, or the step's time run out with any verdict but
INSUFFICIENT_TRAFFIC, moves to the next step's weight, or promotes after the last; otherwise the
newest evidence and what the rollout waits for are saved for ``turnout status``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from gateway.analysis.decision import Decision, Limits, RolloutAnalysis, Verdict
from gateway.analysis.latency import LatencyBuckets
from gateway.errors import TurnoutError
from gateway.rollouts.arm_deltas import ArmDeltas, ArmKey, ArmServed, ArmTotals
from gateway.rollouts.compared_arms import compared_arm
from gateway.rollouts.control import MAX_REASON_CHARS, Rollouts
from gateway.rollouts.progressive import ANALYSIS_ACTOR, step_reason
from gateway.state.arm_totals_record import StoredArm
from gateway.state.rollout_record import ABORTED, PAUSED, PROMOTED, ROLLED_BACK, RolloutConflict, RolloutRecord
from gateway.state.store import StateStore, StateUnavailable

log = logging.getLogger("turnout.rollouts")

LEASE = "rollout-analysis"
LEASE_TTL_S = 3.0
TICK_S = 0.5
PUBLISH_AGAIN_S = 3.0  # unchanged totals are published again this often, so the leader knows the process lives
TOTALS_FRESH_S = 10.0  # the leader reads the totals of processes that published within this
_EVIDENCE_SAVE_S = 1.0  # the evidence shown by turnout status is at most this old (a write a second, not a tick)


@dataclass
class _Judged:
    analysis: RolloutAnalysis
    saved_at: float = 0.0
    saved_verdict: str = ""


def limits_of(record: RolloutRecord) -> Limits:
    given = record.limits
    return Limits(given.alpha, given.max_error_increase, given.max_latency_ratio, given.max_divergence,
                  given.min_requests)  # fmt: skip


def finite(value: Any) -> Any:
    """The evidence as strict JSON: an infinite bound (nothing bounded yet) becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite(item) for item in value]
    return value


class RolloutController:
    def __init__(
        self,
        store: StateStore,
        rollouts: Rollouts,
        own_totals: Callable[[], Sequence[ArmTotals]],
        buckets: LatencyBuckets,
        *,
        tick_s: float = TICK_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._rollouts = rollouts
        self._own_totals = own_totals  # this process's per-arm totals since it began
        self._buckets = buckets  # the layout of the totals' latency histograms
        self._tick_s = tick_s
        self._clock = clock
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._started_at = clock()
        self._published: tuple[StoredArm, ...] | None = None
        self._published_at = 0.0
        self._leading = False
        self._deltas = ArmDeltas()
        self._judged: dict[tuple[str, float], _Judged] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def leading(self) -> bool:
        return self._leading

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rollout-analysis", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with contextlib.suppress(StateUnavailable):
            if self._published is not None:
                self._store.forget_arm_totals(self.holder)
            if self._leading:  # hand over at once, not when the lease lapses
                self._store.release_lease(LEASE, self.holder)

    def _run(self) -> None:
        problem = ""  # said once while it lasts, not every tick
        while not self._stop.wait(self._tick_s):
            try:
                self.tick()
            except StateUnavailable as error:
                if str(error) != problem:
                    log.warning("rollout analysis paused: %s", error)
                problem = str(error)
                self._step_down()
                continue
            except Exception:  # one bad tick must not end the analysis of every later one
                log.exception("rollout analysis tick failed")
            if problem:
                log.info("rollout analysis: the routing state is readable again")
                problem = ""

    def tick(self) -> None:
        active = self._store.active_rollouts()
        if not active:
            if self._leading:
                self._store.release_lease(LEASE, self.holder)
                self._step_down()
            return
        self._publish()
        if not self._store.acquire_lease(LEASE, self.holder, LEASE_TTL_S):
            self._step_down()
            return
        if not self._leading:
            log.info("rollout analysis: this process (%s) leads", self.holder)
        self._leading = True
        published = self._store.arm_totals(TOTALS_FRESH_S)
        arms = self._deltas.take({each.process_id: each.arms for each in published},
                                 {each.process_id: each.started_at for each in published}, self._clock())  # fmt: skip
        keys = {(record.model, record.started_at) for record in active}
        self._judged = {key: judged for key, judged in self._judged.items() if key in keys}
        for record in active:
            try:
                self._judge(record, arms)
            except TurnoutError as error:  # a step change refused (say, propagation timed out): the next tick retries
                log.warning("rollout of %s version %s: %s", record.model, record.version, error)

    def _publish(self) -> None:
        """This process's totals to the store, for whichever process leads: when they changed, or
        unchanged after :data:`PUBLISH_AGAIN_S` (idle, but alive)."""
        arms = tuple(StoredArm(arm.model, arm.version, arm.arm, arm.requests, arm.errors, list(arm.buckets))
                     for arm in self._own_totals())  # fmt: skip
        now = self._clock()
        if arms == self._published and now - self._published_at < PUBLISH_AGAIN_S:
            return
        self._store.publish_arm_totals(self.holder, self._started_at, arms)
        self._published, self._published_at = arms, now

    def _step_down(self) -> None:
        self._leading = False
        self._deltas = ArmDeltas()
        self._judged.clear()

    def _judge(self, record: RolloutRecord, arms: dict[ArmKey, ArmServed]) -> None:
        key = (record.model, record.started_at)
        judged = self._judged.get(key)
        if judged is None:
            judged = self._judged[key] = _Judged(RolloutAnalysis(limits_of(record), self._buckets))
        analysis = judged.analysis
        for canary, arm_key in ((True, (record.model, record.version, "canary")),
                                (False, (record.model, record.stable, "stable"))):  # fmt: skip
            served = arms.get(arm_key)
            if served is not None and served.requests:
                analysis.observe_batch(canary, served.requests, served.errors, served.buckets)
        compared = arms.get((record.model, record.version, compared_arm(record.stable)))
        if compared is not None and compared.requests:  # the candidate's answers to the stable's requests
            analysis.observe_comparisons(compared.requests, compared.errors)
        decision = analysis.decide()
        now = self._clock()
        if record.phase == PAUSED:
            self._save_evidence(record, judged, decision, record.message, now)
            return
        policy = self._rollouts.policy(record.model).policy
        if policy.canary is None or policy.canary.version != record.version or policy.stable != record.stable:
            self._end(record, ABORTED, "the policy was changed outside the rollout", decision)
            return
        if decision.verdict is Verdict.ROLL_BACK:
            self._roll_back(record, decision)
        elif decision.verdict is Verdict.STEP_UP:
            self._advance(record, judged, decision, "evidence on every check that the canary is no worse")
        elif now - record.step_started_at >= record.step_s:
            if decision.verdict is Verdict.INSUFFICIENT_TRAFFIC:
                self._save_evidence(record, judged, decision, "step time is up; " + decision.reason, now)
            else:
                self._advance(record, judged, decision, f"step time of {record.step_s:g} s passed, no regression")
        else:
            self._save_evidence(record, judged, decision, decision.reason, now)

    def _still(self, record: RolloutRecord) -> bool:
        """May this process act on the rollout as read at this tick's start? It must still lead (a
        tick slowed past the lease's time may have lost it: renewing says so), and the record must
        be unchanged (an operator's pause or abort wins over the analysis)."""
        if not self._store.renew_lease(LEASE, self.holder, LEASE_TTL_S):
            self._step_down()
            return False
        current = self._store.rollout(record.model)
        return current is not None and current.revision == record.revision

    def _roll_back(self, record: RolloutRecord, decision: Decision) -> None:
        if not self._still(record):
            return
        reason = _evidence_reason(record, decision)
        log.warning("rollout of %s version %s: rolling back: %s", record.model, record.version, decision.reason)
        try:
            self._rollouts.rollback(record.model, ANALYSIS_ACTOR, reason)
        except TurnoutError as error:
            self._end(record, ABORTED, f"rollback on evidence failed: {error}", decision)
            return
        self._end(record, ROLLED_BACK, decision.reason, decision)

    def _advance(self, record: RolloutRecord, judged: _Judged, decision: Decision, why: str) -> None:
        if not self._still(record):
            return
        following = record.step_index + 1
        if following >= len(record.steps):
            reason = f"rollout of version {record.version}: every step passed ({why})"
            self._rollouts.promote(record.model, ANALYSIS_ACTOR, reason)
            self._end(record, PROMOTED, why, decision)
            return
        weight = record.steps[following]
        self._rollouts.set_canary(record.model, record.version, weight, record.sticky_key, ANALYSIS_ACTOR,
                                  step_reason(following, record.steps, why),
                                  compared=record.limits.max_divergence is not None)  # fmt: skip
        judged.analysis.begin_step()
        stepped = replace(record, step_index=following, weight_percent=weight, step_started_at=self._clock(),
                          message=why, evidence=finite(decision.as_dict()))  # fmt: skip
        try:
            self._store.save_rollout(stepped, record.revision)
        except RolloutConflict:
            log.warning("rollout of %s changed while stepping up; the next tick reads it again", record.model)

    def _end(self, record: RolloutRecord, phase: str, message: str, decision: Decision) -> None:
        try:
            self._store.save_rollout(replace(record, phase=phase, message=message,
                                             evidence=finite(decision.as_dict())), record.revision)  # fmt: skip
        except RolloutConflict:
            log.warning("rollout of %s changed while ending it as %s", record.model, phase)

    def _save_evidence(self, record: RolloutRecord, judged: _Judged, decision: Decision, message: str,
                       now: float) -> None:  # fmt: skip
        if now - judged.saved_at < _EVIDENCE_SAVE_S and judged.saved_verdict == decision.verdict.value:
            return
        try:
            self._store.save_rollout(
                replace(record, message=message, evidence=finite(decision.as_dict())), record.revision
            )
        except RolloutConflict:
            return  # an operator changed it: the next tick reads the new record
        judged.saved_at, judged.saved_verdict = now, decision.verdict.value


def _evidence_reason(record: RolloutRecord, decision: Decision) -> str:
    """The rollback's audit reason: the decision, its statistics, counts and bounds, as JSON."""
    document: dict[str, Any] = {"rollout": f"version {record.version} at {record.weight_percent:g}%",
                                **finite(decision.as_dict())}  # fmt: skip
    text = json.dumps(document, separators=(",", ":"))
    if len(text) > MAX_REASON_CHARS:  # keep the checks that found the canary worse, which say why
        document["checks"] = [check for check in document["checks"] if check.get("worse")]
        text = json.dumps(document, separators=(",", ":"))[:MAX_REASON_CHARS]
    return text
