"""Is the canary's error rate above the stable's by more than a margin, or surely not?

Each arm's requests are Bernoulli draws (failed or not) at the arm's own rate; the router decides
which arm a request goes to without looking at its outcome. For a margin ``delta`` two composite
nulls are tested, each by universal inference (Wasserman, Ramdas and Balakrishnan, PNAS 2020):

- worse, null ``p_canary <= p_stable + delta``: a rollback's evidence;
- no worse, null ``p_canary >= p_stable + delta``: evidence to end a step early.

The statistic is the two arms' likelihoods mixed over their rates (one mixture each, on a prior
that favours low rates: :data:`~gateway.analysis.evalues.LOW_RATES`)
over the likelihood at the null's best fit. For any pair of rates inside the null, the mixture over
the likelihood at that pair is a test martingale; the best fit only makes the denominator larger,
so the statistic is an e-process for the whole null and may be checked after every request.

The best fit lies on the boundary ``p_canary = p_stable + delta`` whenever the plain estimates
leave the null (the log-likelihood is concave); there a bisection on the derivative finds it, a
fixed number of halvings, so an update stays O(1) in the number of requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gateway.analysis.evalues import LOW_RATES, ArrayLike, FloatArray, log_likelihood, log_mixture_likelihood

_HALVINGS = 40  # the best fit to within 2^-40: its log-likelihood is flat there, so the error is far below 1e-12


@dataclass(frozen=True)
class ErrorEvidence:
    """Both directions' log e-values for one arm pair's counts (arrays when the counts were arrays)."""

    log_worse: FloatArray
    log_no_worse: FloatArray


def error_evidence(
    canary_errors: ArrayLike, canary_requests: ArrayLike, stable_errors: ArrayLike, stable_requests: ArrayLike,
    margin: float,
) -> ErrorEvidence:  # fmt: skip
    """The evidence, from cumulative counts, that the canary fails more than ``margin`` above the stable, or not."""
    e_c = np.asarray(canary_errors, dtype=np.float64)
    n_c = np.asarray(canary_requests, dtype=np.float64)
    e_s = np.asarray(stable_errors, dtype=np.float64)
    n_s = np.asarray(stable_requests, dtype=np.float64)
    mixed = log_mixture_likelihood(e_c, n_c, LOW_RATES) + log_mixture_likelihood(e_s, n_s, LOW_RATES)
    rate_c = np.divide(e_c, n_c, out=np.zeros_like(e_c), where=n_c > 0)
    rate_s = np.divide(e_s, n_s, out=np.zeros_like(e_s), where=n_s > 0)
    best = log_likelihood(e_c, n_c, rate_c) + log_likelihood(e_s, n_s, rate_s)
    on_boundary = boundary_log_likelihood(e_c, n_c, e_s, n_s, margin)
    excess = rate_c - rate_s - margin
    # Where the estimates sit inside a null, its best fit is the plain one (and the evidence <= 1).
    worse = mixed - np.where(excess > 0, on_boundary, best)
    no_worse = mixed - np.where(excess < 0, on_boundary, best)
    return ErrorEvidence(np.asarray(worse), np.asarray(no_worse))


def boundary_log_likelihood(
    canary_errors: FloatArray, canary_requests: FloatArray, stable_errors: FloatArray, stable_requests: FloatArray,
    margin: float,
) -> FloatArray:  # fmt: skip
    """The largest joint log-likelihood with ``p_canary = p_stable + margin``, over ``p_stable`` in [0, 1 - margin].

    The log-likelihood is concave in ``p_stable``, so its derivative falls: halve the interval on the
    derivative's sign.
    """
    e_c, n_c, e_s, n_s = canary_errors, canary_requests, stable_errors, stable_requests
    if np.ndim(e_c) == np.ndim(n_c) == np.ndim(e_s) == np.ndim(n_s) == 0:  # the controller's case: plain floats
        best = _best_stable_rate(float(e_c), float(n_c), float(e_s), float(n_s), margin)
        return np.asarray(log_likelihood(e_c, n_c, best + margin) + log_likelihood(e_s, n_s, best))
    low = np.zeros(np.broadcast(e_c, n_c, e_s, n_s).shape)
    high = np.full_like(low, 1.0 - margin)
    for _ in range(_HALVINGS):
        middle = (low + high) / 2
        rising = _slope(middle, e_c, n_c, e_s, n_s, margin) > 0
        low = np.where(rising, middle, low)
        high = np.where(rising, high, middle)
    p_s = (low + high) / 2
    return np.asarray(log_likelihood(e_c, n_c, p_s + margin) + log_likelihood(e_s, n_s, p_s))


def _best_stable_rate(e_c: float, n_c: float, e_s: float, n_s: float, margin: float) -> float:
    """The same bisection as :func:`boundary_log_likelihood`'s, on floats (numpy on scalars costs 50x)."""
    low, high = 0.0, 1.0 - margin
    for _ in range(_HALVINGS):
        p_s = (low + high) / 2
        p_c = p_s + margin
        slope = (e_c / p_c if e_c else 0.0) - ((n_c - e_c) / (1 - p_c) if n_c > e_c else 0.0)
        slope += (e_s / p_s if e_s else 0.0) - ((n_s - e_s) / (1 - p_s) if n_s > e_s else 0.0)
        low, high = (p_s, high) if slope > 0 else (low, p_s)
    return (low + high) / 2


def _slope(
    p_s: FloatArray, e_c: FloatArray, n_c: FloatArray, e_s: FloatArray, n_s: FloatArray, margin: float
) -> FloatArray:
    p_c = p_s + margin
    with np.errstate(divide="ignore", invalid="ignore"):  # 0 / 0 at the ends: a term with no draws adds 0
        terms = (
            np.where(e_c > 0, e_c / p_c, 0.0) - np.where(n_c > e_c, (n_c - e_c) / (1 - p_c), 0.0)
            + np.where(e_s > 0, e_s / p_s, 0.0) - np.where(n_s > e_s, (n_s - e_s) / (1 - p_s), 0.0)
        )  # fmt: skip
    return np.asarray(terms)
