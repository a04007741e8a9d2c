"""The normal-mixture likelihood ratio and its boundaries, shared by the always-valid methods.

An estimate of the difference (treatment minus control) that is approximately
``N(theta, V)`` has, against ``theta0``, the likelihood ratio
``exp((theta - theta0) S / V - (theta - theta0)^2 / (2 V))`` with ``S = estimate - theta0``.
Mixing it over a normal distribution of ``theta`` gives a nonnegative martingale under
the null (Robbins 1970), so by Ville's inequality it ever exceeds ``1/alpha`` with
probability at most ``alpha``. The same martingale is behind

* the mSPRT of Johari, Pekelis & Walsh (2022) (:mod:`analysis.msprt`: two-sided
  mixture, tuned by ``tau2``);
* the asymptotic confidence sequences of Waudby-Smith et al. (2024)
  (:mod:`analysis.confidence_sequence`: tuned by ``rho``, ``tau2 / V = n rho^2``);
* the one-sided bounds of the guardrails (:mod:`analysis.guardrails`: the half-normal
  mixture of Howard, Ramdas, McAuliffe & Sekhon 2021).

The public functions in metric units validate their input. The kernels in standardised
units (``x = tau2 / V``, ``z = (estimate - theta0) / sqrt(V)``) work on floats and arrays
alike and expect validated input (``x > 0``, finite ``z``, alpha in (0, 1)): they sit in
the inner loops of the vectorised replays and simulations.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy import optimize, special

from analysis.validation import check_finite, check_positive

FloatArray = npt.NDArray[np.float64]

_LOG_MAX_FLOAT = math.log(np.finfo(np.float64).max)
BISECTION_STEPS = 60
"""Halvings in :func:`one_sided_boundary_zs`: they shrink the bracket by 1e-18, float
resolution for any start."""


def log_mixture_likelihood_ratio(
    estimate: float, variance: float, tau2: float, null_value: float = 0.0
) -> float:
    """Return log Lambda, the log normal-mixture likelihood ratio at one look.

    Parameters
    ----------
    estimate : float
        Observed difference, treatment minus control.
    variance : float
        Sampling variance ``V`` of ``estimate`` (> 0).
    tau2 : float
        Variance of the normal mixing distribution over the true difference (> 0).
    null_value : float
        The null difference ``theta0`` (0 for "no effect").

    Notes
    -----
    Johari et al. (2022), the normal-mixture mSPRT (mixing distribution
    ``H = N(theta0, tau2)``) for two normal streams of ``n`` pairs with
    variance ``sigma2`` each:
    ``Lambda_n = sqrt(2 sigma2 / (2 sigma2 + n tau2))
    * exp(n^2 tau2 (ybar - xbar - theta0)^2 / (4 sigma2 (2 sigma2 + n tau2)))``.
    Substituting ``V = 2 sigma2 / n`` gives the form used here, which holds for
    any estimate that is approximately ``N(theta, V)``::

        Lambda = sqrt(V / (V + tau2)) * exp(tau2 (estimate - theta0)^2 / (2 V (V + tau2)))

    Computed in log space: Lambda overflows a float once the z statistic
    passes about 38.
    """
    ratio = _check_look(estimate, variance, tau2, null_value)
    z_squared = (estimate - null_value) ** 2 / variance
    return float(log_two_sided_mixture_z(z_squared, ratio))


def mixture_likelihood_ratio(
    estimate: float, variance: float, tau2: float, null_value: float = 0.0
) -> float:
    """Return Lambda (see :func:`log_mixture_likelihood_ratio`); ``inf`` on overflow."""
    log_ratio = log_mixture_likelihood_ratio(estimate, variance, tau2, null_value)
    return math.exp(log_ratio) if log_ratio < _LOG_MAX_FLOAT else math.inf


def log_one_sided_mixture_likelihood_ratio(
    estimate: float, variance: float, tau2: float, null_value: float = 0.0
) -> float:
    """Return the log likelihood ratio mixing only over differences above ``null_value``.

    Notes
    -----
    Mixing ``exp(theta S / V - theta^2 / (2 V))`` over the half-normal
    ``2 N(0, tau2)`` on ``theta >= 0`` (Howard, Ramdas, McAuliffe & Sekhon,
    "Time-uniform, nonparametric, nonasymptotic confidence sequences", Annals
    of Statistics 49(2), 2021; ``OneSidedNormalMixture`` in their ``confseq``)
    gives, with ``x = tau2 / V`` and ``z = (estimate - theta0) / sqrt(V)``::

        log Lambda+ = log 2 - log(1 + x) / 2 + x z^2 / (2 (1 + x)) + log Phi(z sqrt(x / (1 + x)))

    It is a nonnegative supermartingale under ``theta <= theta0``, so
    ``Lambda+ >= 1/alpha`` is a one-sided always-valid test at level alpha.
    """
    ratio = _check_look(estimate, variance, tau2, null_value)
    z = (estimate - null_value) / math.sqrt(variance)
    # An infinite z would meet log Phi(-inf) = -inf in the kernel: inf - inf = NaN.
    check_finite("(estimate - null_value) / sqrt(variance)", z)
    return float(log_one_sided_mixture_z(z, ratio))


def log_mixture_likelihood_ratios(
    estimates: npt.ArrayLike, variances: npt.ArrayLike, tau2: float
) -> FloatArray:
    """Vectorised :func:`log_mixture_likelihood_ratio` (null 0) over arrays of looks."""
    estimate = np.asarray(estimates, dtype=np.float64)
    variance = np.asarray(variances, dtype=np.float64)
    check_positive("tau2", tau2)
    if not np.all(np.isfinite(estimate)):
        raise ValueError("estimates must be finite")
    if not np.all(variance > 0) or not np.all(np.isfinite(variance)):
        raise ValueError("variances must be finite and > 0")
    return np.asarray(
        log_two_sided_mixture_z(estimate**2 / variance, tau2 / variance), dtype=np.float64
    )


def log_two_sided_mixture_z(z_squared: npt.ArrayLike, ratio: npt.ArrayLike) -> FloatArray:
    """Return log Lambda from ``z^2`` and ``x = tau2 / V``: ``-log(1+x)/2 + x z^2 / (2 (1+x))``."""
    x = np.asarray(ratio, dtype=np.float64)
    return np.asarray(-0.5 * np.log1p(x) + x * np.asarray(z_squared) / (2.0 * (1.0 + x)))


def log_one_sided_mixture_z(z: npt.ArrayLike, ratio: npt.ArrayLike) -> FloatArray:
    """Return log Lambda+ (:func:`log_one_sided_mixture_likelihood_ratio`) from ``z``, ``x``."""
    x = np.asarray(ratio, dtype=np.float64)
    z_value = np.asarray(z, dtype=np.float64)
    shrink = x / (1.0 + x)
    return np.asarray(
        math.log(2.0)
        - 0.5 * np.log1p(x)
        + shrink * z_value**2 / 2.0
        + special.log_ndtr(z_value * np.sqrt(shrink))
    )


def two_sided_boundary_z(ratio: npt.ArrayLike, alpha: float) -> FloatArray:
    """Return the z at which Lambda = 1/alpha: ``sqrt((1+x)/x (2 log(1/alpha) + log(1+x)))``."""
    x = np.asarray(ratio, dtype=np.float64)
    return np.asarray(np.sqrt((1.0 + x) / x * (2.0 * math.log(1.0 / alpha) + np.log1p(x))))


def one_sided_boundary_z(ratio: float, alpha: float) -> float:
    """Return the z at which Lambda+ = 1/alpha (one-sided mixture of Howard et al. 2021).

    No closed form: the root lies between the two-sided boundaries at levels ``2 alpha``
    and ``alpha``, so it is bracketed by 0 and :func:`two_sided_boundary_z` at ``alpha``.
    """
    target = math.log(1.0 / alpha)
    upper = float(two_sided_boundary_z(ratio, alpha))

    def excess(z: float) -> float:
        return float(log_one_sided_mixture_z(z, ratio)) - target

    if excess(upper) <= 0:
        return upper
    return float(optimize.brentq(excess, 0.0, upper, xtol=1e-13, rtol=1e-13))


def one_sided_boundary_zs(ratio: FloatArray, alpha: float) -> FloatArray:
    """Vectorised :func:`one_sided_boundary_z`, by bisection on the same bracket."""
    target = math.log(1.0 / alpha)
    low = np.zeros_like(ratio)
    high = np.array(two_sided_boundary_z(ratio, alpha))
    for _ in range(BISECTION_STEPS):
        middle = 0.5 * (low + high)
        above = log_one_sided_mixture_z(middle, ratio) > target
        high = np.where(above, middle, high)
        low = np.where(above, low, middle)
    return np.asarray(0.5 * (low + high))


def intersect_intervals(
    previous: tuple[float, float] | None, current: tuple[float, float]
) -> tuple[float, float]:
    """Return the running intersection of two always-valid intervals.

    Johari et al. (2022) intersect the intervals of all looks so far. An
    empty intersection has probability <= alpha when the model holds (it
    signals, e.g., an effect drifting over time); the current interval, valid
    on its own, is reported then rather than an empty set.
    """
    if previous is None:
        return current
    low, high = max(previous[0], current[0]), min(previous[1], current[1])
    return (low, high) if low <= high else current


def variance_ratio(tau2: float, variance: float) -> float:
    """Return ``x = tau2 / V``, the mixing variance in units of the sampling variance.

    Refuses a ratio that over- or underflows (``tau2`` and ``V`` some 300 orders of
    magnitude apart): at ``x = inf`` the kernels would compute ``inf / inf = NaN``.
    """
    check_positive("variance", variance)
    check_positive("tau2", tau2)
    ratio = tau2 / variance
    check_positive("tau2 / variance", ratio)
    return ratio


def _check_look(estimate: float, variance: float, tau2: float, null_value: float) -> float:
    """Check one look's inputs and return ``x = tau2 / V``."""
    ratio = variance_ratio(tau2, variance)
    check_finite("estimate", estimate)
    # A NaN null would give a NaN ratio, and an infinite one an infinite ratio (p = 0).
    check_finite("null_value", null_value)
    return ratio
