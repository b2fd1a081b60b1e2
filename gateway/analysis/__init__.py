"""Judging a canary on evidence: anytime-valid tests that may be checked after every request.

Pure and deterministic: counts in, evidence and a decision out; no clock, no I/O, no gRPC. The
rollout controller feeds it each arm's requests and reads a :class:`~gateway.analysis.decision.Decision`.

- :mod:`evalues`: e-values for Bernoulli rates (mixtures over the rate, against a fixed rate or
  against the constrained best fit of a composite null), and the critical counts they imply.
- :mod:`error_rate`: is the canary's error rate above the stable's plus a margin, or surely not?
- :mod:`latency`: geometric latency buckets, the paired test of stochastic order, the p99 ratio.
- :mod:`decision`: the limits, the checks combined under one false-rollback level, the decision.
- :mod:`simulation`: the same tests run on synthetic rollouts, vectorised (tests and benchmarks).
"""
