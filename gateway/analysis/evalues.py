"""E-values for Bernoulli rates: the evidence every check of a rollout is made of.

An e-value here is a nonnegative process whose expectation stays at most 1 under the null
hypothesis at every sample size, whatever the stopping rule; by Ville's inequality the chance it
ever reaches ``1 / alpha`` is at most ``alpha``. That is what lets the controller look after every
request (Ramdas, Grünwald, Vovk and Shafer, "Game-theoretic statistics and safe anytime-valid
inference", Statistical Science 2023).

Two shapes, both functions of counts only (so an update is O(1), and the order in which a batch's
requests are counted does not matter):

- a rate against a fixed one (:func:`log_evalue_above`, :func:`log_evalue_below`): the likelihood
  of the data mixed over rates on the alternative's side (a Beta prior, truncated there), over its
  likelihood at the fixed rate. For any true rate on the null's side each mixed ratio is a
  supermartingale, so their mixture is too. Any prior keeps that true; the prior only decides which
  rates are caught soonest (:data:`JEFFREYS`, :data:`LOW_RATES`). Both e-values are monotone in the
  count of successes, which :func:`critical_above` and :func:`critical_below` turn into thresholds.
- two rates against a composite null (:func:`log_mixture_likelihood`): the mixture likelihood of
  each arm's data over the null's best fit (universal inference: Wasserman, Ramdas and
  Balakrishnan, PNAS 2020); the module :mod:`gateway.analysis.error_rate` builds it.

Every function works elementwise on numpy arrays as well as on numbers, so the simulations run the
very code the controller runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import special

Prior = tuple[float, float]  # Beta(a, b) over the rate
# Jeffreys' prior: no rate favoured (its cost, about log(n)/2, is the same wherever the rate lies).
JEFFREYS: Prior = (0.5, 0.5)
# For rates that are small when all is well (errors, the tail beyond a p99, disagreements): mass
# where such rates lie, so at 1 to 3% an arm needs about a third fewer requests for the same
# evidence than with Jeffreys' (simulated, 2026-12-05); a rate of 50% is still caught at once.
LOW_RATES: Prior = (0.5, 10.0)
_TINY = 1e-300  # a floor under probabilities before their log
_UNDERFLOW = 1e-250  # a posterior mass this small has lost its digits: see _log_evalue

FloatArray = npt.NDArray[np.float64]
ArrayLike = float | int | npt.NDArray[Any]


def log_mixture_likelihood(successes: ArrayLike, trials: ArrayLike, prior: Prior = JEFFREYS) -> FloatArray:
    """log of the likelihood of ``successes`` in ``trials`` Bernoulli draws, mixed over the rate."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    a, b = prior
    return np.asarray(special.betaln(a + k, b + n - k) - special.betaln(a, b))


def log_likelihood(successes: ArrayLike, trials: ArrayLike, rate: ArrayLike) -> FloatArray:
    """log of the Bernoulli likelihood at ``rate`` (0 log 0 counted as 0, so rates 0 and 1 are fine)."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    p = np.asarray(rate, dtype=np.float64)
    return np.asarray(special.xlogy(k, p) + special.xlog1py(n - k, -p))


def log_evalue_above(successes: ArrayLike, trials: ArrayLike, rate0: float, prior: Prior = JEFFREYS) -> FloatArray:
    """Evidence that the rate is above ``rate0`` (null: rate <= rate0), as a log e-value.

    Increasing in ``successes`` for a fixed number of trials: every rate mixed over is above rate0.
    """
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    a, b = prior[0] + k, prior[1] + n - k
    return _log_evalue(k, n, rate0, prior, special.betaincc(a, b, rate0), special.betaincc(*prior, rate0))


def log_evalue_below(successes: ArrayLike, trials: ArrayLike, rate0: float, prior: Prior = JEFFREYS) -> FloatArray:
    """Evidence that the rate is below ``rate0`` (null: rate >= rate0), as a log e-value; decreasing in successes."""
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    a, b = prior[0] + k, prior[1] + n - k
    return _log_evalue(k, n, rate0, prior, special.betainc(a, b, rate0), special.betainc(*prior, rate0))


def _log_evalue(
    k: FloatArray, n: FloatArray, rate0: float, prior: Prior, posterior_side: Any, prior_side: float
) -> FloatArray:
    """log of (mixture likelihood over one side of rate0) / (likelihood at rate0).

    ``posterior_side`` is the Beta posterior's mass on the alternative's side. It underflows only
    when the data sit far on the null's side, where every ratio mixed over is at most 1: the
    e-value is then at most 1, and 0 (its log's upper bound) is what is returned.
    """
    mass = np.asarray(posterior_side, dtype=np.float64)
    mixed = log_mixture_likelihood(k, n, prior) + np.log(np.maximum(mass, _TINY))
    log_e = mixed - np.log(prior_side) - log_likelihood(k, n, rate0)
    return np.asarray(np.where(mass < _UNDERFLOW, np.minimum(log_e, 0.0), log_e))


def critical_above(
    trials: ArrayLike, rate0: float, log_bound: float, prior: Prior = JEFFREYS
) -> npt.NDArray[np.int64]:
    """The fewest successes in ``trials`` whose :func:`log_evalue_above` reaches ``log_bound``; trials + 1 if none.

    A binary search over the count (the e-value is monotone in it): O(log n) evaluations.
    """
    n = np.asarray(trials, dtype=np.int64)
    low = np.zeros_like(n)  # the answer lies in [low, high]; high = n + 1 means "never"
    high = n + 1
    while np.any(low < high):
        middle = (low + high) // 2
        reaches = log_evalue_above(np.minimum(middle, n), n, rate0, prior) >= log_bound
        reaches &= middle <= n
        high = np.where(reaches, middle, high)
        low = np.where(reaches, low, np.minimum(middle + 1, high))
    return high


def critical_below(
    trials: ArrayLike, rate0: float, log_bound: float, prior: Prior = JEFFREYS
) -> npt.NDArray[np.int64]:
    """The most successes in ``trials`` whose :func:`log_evalue_below` reaches ``log_bound``; -1 if none."""
    n = np.asarray(trials, dtype=np.int64)
    low = np.full_like(n, -1)  # the answer lies in [low, high]; -1 means "never"
    high = n.copy()
    while np.any(low < high):
        middle = (low + high + 1) // 2
        reaches = log_evalue_below(np.maximum(middle, 0), n, rate0, prior) >= log_bound
        low = np.where(reaches, middle, low)
        high = np.where(reaches, high, np.maximum(middle - 1, low))
    return low

