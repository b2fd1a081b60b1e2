"""The rollout's judge: every check fed per request (or per batch), combined into one decision.

Checks that may roll back: the error rate, the latency's stochastic order, the latency's p99, and
the shadow divergence when the rollout has one. The false-rollback level ``alpha`` is split evenly
between them (Bonferroni): each check rolls back when its e-value reaches ``checks / alpha``, so
the chance that any of them ever does so wrongly, over the whole rollout and however often it is
checked, stays at most ``alpha``. The p99 check spends half its share on bounding the stable's p99.

Ending a step early needs evidence from every check that the canary is no worse than its limit
(an intersection-union test: each at ``1 / alpha``, as the wrong early step-up needs all of them to
be wrong). No decision is made at all before each arm has served ``min_requests`` requests in the
rollout, and no early step-up before each has served that many in the current step.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gateway.analysis.error_rate import error_evidence
from gateway.analysis.evalues import LOW_RATES, log_evalue_above, log_evalue_below
from gateway.analysis.latency import LatencyBuckets, LatencyPairs, order_evidence, p99_evidence


@dataclass(frozen=True)
class Limits:
    """What the operator tolerates, and how sure a rollback must be (the flags of ``turnout rollout``)."""

    alpha: float = 0.05
    max_error_increase: float = 0.005
    max_latency_ratio: float = 1.2
    max_divergence: float | None = None  # None: the rollout has no shadow comparison
    min_requests: int = 100  # per arm, before any decision

    @property
    def checks(self) -> int:
        return 4 if self.max_divergence is not None else 3

    @property
    def log_rollback_bound(self) -> float:
        """log(checks / alpha): each check's bound for a rollback."""
        return math.log(self.checks / self.alpha)

    @property
    def log_step_up_bound(self) -> float:
        return math.log(1 / self.alpha)


class Verdict(enum.Enum):
    INSUFFICIENT_TRAFFIC = "insufficient_traffic"  # wait for more requests, and say so
    CONTINUE = "continue"  # no conclusion yet: the step runs its course
    STEP_UP = "step_up"  # every check has evidence the canary is no worse: end the step early
    ROLL_BACK = "roll_back"  # a check has evidence the canary is worse than its limit


@dataclass(frozen=True)
class CheckEvidence:
    """One check at one moment: its statistic (a log e-value), the bound it is held to, and its counts."""

    name: str  # error_rate, latency_order, latency_p99, divergence
    log_evidence_worse: float
    log_bound: float
    log_evidence_no_worse: float
    log_no_worse_bound: float
    counts: dict[str, float] = field(default_factory=dict)

    @property
    def worse(self) -> bool:
        return self.log_evidence_worse >= self.log_bound

    @property
    def no_worse(self) -> bool:
        return self.log_evidence_no_worse >= self.log_no_worse_bound

    def as_dict(self) -> dict[str, object]:
        """For the audit history: the e-values themselves as well as their logs."""
        return {
            "check": self.name,
            "worse": self.worse,
            "no_worse": self.no_worse,
            "e_value_worse": _exp(self.log_evidence_worse),
            "bound": _exp(self.log_bound),
            "e_value_no_worse": _exp(self.log_evidence_no_worse),
            "no_worse_bound": _exp(self.log_no_worse_bound),
            **self.counts,
        }


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reason: str
    checks: tuple[CheckEvidence, ...]

    def as_dict(self) -> dict[str, object]:
        return {"verdict": self.verdict.value, "reason": self.reason, "checks": [c.as_dict() for c in self.checks]}


def _exp(log_value: float) -> float:
    return math.exp(min(log_value, 700.0))


@dataclass
class _Arm:
    requests: int = 0
    errors: int = 0
    step_requests: int = 0


class RolloutAnalysis:
    """The evidence of one rollout, fed request by request or batch by batch; :meth:`decide` reads it.

    Latency counts only requests that succeeded (a failure's latency says little, and the error
    check sees it). Memory: two histograms, two bounded pairing queues, a few counters.

    Cost: :meth:`observe` is O(1) (about 6 µs); :meth:`decide` is O(buckets + log n), about a
    millisecond, so the controller calls it on a tick (every 100 ms, or every N requests) rather
    than per request. Looking less often never weakens the guarantee.
    """

    def __init__(self, limits: Limits, buckets: LatencyBuckets | None = None, seed: int = 0) -> None:
        self.limits = limits
        self.buckets = buckets or LatencyBuckets()
        self._canary = _Arm()
        self._stable = _Arm()
        self._histograms = {True: np.zeros(self.buckets.count, np.int64), False: np.zeros(self.buckets.count, np.int64)}
        self._pairs = LatencyPairs(self.buckets.shift(limits.max_latency_ratio))
        self._comparisons = 0
        self._disagreements = 0
        self._shuffle = np.random.default_rng(seed)  # orders a batch's latencies for pairing; seeded: repeatable

    def observe(self, canary: bool, latency_s: float, failed: bool) -> None:
        """One finished request of either arm."""
        arm = self._canary if canary else self._stable
        arm.requests += 1
        arm.step_requests += 1
        arm.errors += failed
        if not failed:
            bucket = self.buckets.index(latency_s)
            self._histograms[canary][bucket] += 1
            self._pairs.add(canary, bucket)

    def observe_batch(self, canary: bool, requests: int, errors: int, latency_buckets: Sequence[int]) -> None:
        """One arm's figures since the last call: requests, failures, successes' latencies per bucket.

        The latencies are paired in a random order, which for draws that are alike in a batch is as
        fair as the order they came in.
        """
        arm = self._canary if canary else self._stable
        arm.requests += requests
        arm.step_requests += requests
        arm.errors += errors
        counts = np.asarray(latency_buckets, dtype=np.int64)
        self._histograms[canary] += counts
        for bucket in self._shuffle.permutation(np.repeat(np.arange(counts.size), counts)):
            self._pairs.add(canary, int(bucket))

    def observe_comparison(self, disagreed: bool) -> None:
        """One shadow comparison of the canary's answer against the stable's."""
        self._comparisons += 1
        self._disagreements += disagreed

    def observe_comparisons(self, compared: int, disagreed: int) -> None:
        """Many shadow comparisons at once: ``compared`` answers, of which ``disagreed`` differed."""
        self._comparisons += compared
        self._disagreements += disagreed

    def begin_step(self) -> None:
        """A new step: its early end needs ``min_requests`` per arm again (the evidence carries over)."""
        self._canary.step_requests = self._stable.step_requests = 0

    def evidence(self) -> tuple[CheckEvidence, ...]:
        checks = [self._error_check(), self._order_check(), self._p99_check()]
        if self.limits.max_divergence is not None:
            checks.append(self._divergence_check(self.limits.max_divergence))
        return tuple(checks)

    def _error_check(self) -> CheckEvidence:
        c, s, margin = self._canary, self._stable, self.limits.max_error_increase
        found = error_evidence(c.errors, c.requests, s.errors, s.requests, margin)
        counts = {"canary_requests": c.requests, "canary_errors": c.errors, "stable_requests": s.requests,
                  "stable_errors": s.errors, "max_error_increase": margin}  # fmt: skip
        return self._check("error_rate", float(found.log_worse), float(found.log_no_worse), counts)

    def _order_check(self) -> CheckEvidence:
        pairs = self._pairs
        found = order_evidence(pairs.wins, pairs.losses)
        counts = {"pairs_canary_slower": pairs.wins, "pairs_canary_faster": pairs.losses, "pairs_level": pairs.ties,
                  "ratio_tested": self.buckets.growth**pairs.shift}  # fmt: skip
        return self._check("latency_order", float(found.log_worse), float(found.log_no_worse), counts)

    def _p99_check(self) -> CheckEvidence:
        halves = math.log(2)  # the check's share of alpha, halved between its two parts
        canary, stable = self._histograms[True], self._histograms[False]
        bound = self.limits.log_rollback_bound + halves
        found = p99_evidence(canary, stable, self.buckets, self.limits.max_latency_ratio, bound)
        counts = {"stable_p99_upper_s": found.stable_p99_upper_s or math.inf,
                  "canary_threshold_s": found.canary_threshold_s or math.inf,
                  "canary_above_threshold": found.canary_above, "canary_latencies": int(canary.sum())}  # fmt: skip
        no_worse_bound = self.limits.log_step_up_bound + halves
        return CheckEvidence("latency_p99", found.log_worse, bound, found.log_no_worse, no_worse_bound, counts)

    def _divergence_check(self, limit: float) -> CheckEvidence:
        k, n = self._disagreements, self._comparisons
        counts = {"comparisons": n, "disagreements": k, "max_divergence": limit}
        worse = float(log_evalue_above(k, n, limit, LOW_RATES))
        no_worse = float(log_evalue_below(k, n, limit, LOW_RATES))
        return self._check("divergence", worse, no_worse, counts)

    def _check(self, name: str, worse: float, no_worse: float, counts: dict[str, float]) -> CheckEvidence:
        limits = self.limits
        return CheckEvidence(name, worse, limits.log_rollback_bound, no_worse, limits.log_step_up_bound, counts)

    def decide(self) -> Decision:
        c, s, least = self._canary, self._stable, self.limits.min_requests
        checks = self.evidence()
        if min(c.requests, s.requests) < least:
            return Decision(
                Verdict.INSUFFICIENT_TRAFFIC,
                f"waiting for {least} requests per arm: canary {c.requests}, stable {s.requests}",
                checks,
            )
        worse = [check.name for check in checks if check.worse]
        if worse:
            return Decision(Verdict.ROLL_BACK, "canary worse than its limit: " + ", ".join(worse), checks)
        if all(check.no_worse for check in checks) and min(c.step_requests, s.step_requests) >= least:
            return Decision(Verdict.STEP_UP, "evidence on every check that the canary is no worse", checks)
        return Decision(Verdict.CONTINUE, "no conclusion yet", checks)
