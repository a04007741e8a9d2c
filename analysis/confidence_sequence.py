"""Asymptotic confidence sequences for a mean and for a difference in means.

Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, "Time-uniform central limit
theory and asymptotic confidence sequences", Annals of Statistics 52(6),
2024 (arXiv:2103.06476). A confidence sequence (CS) is a sequence of
intervals that covers the true value at *all* sample sizes simultaneously
with probability 1 - alpha (asymptotically), so it may be checked after
every batch of data and the experiment stopped whenever it excludes zero.

The CS uses the Gaussian-mixture boundary with a scale-free tuning parameter
``rho`` (per-unit, relative to the metric's standard deviation); choose it
with ``planned_n``, the sample size per arm at which the sequence should be
tightest. One-sided bounds (for guardrails) use the one-sided normal mixture
of Howard, Ramdas, McAuliffe & Sekhon (Annals of Statistics 49(2), 2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import optimize

from analysis.msprt import (
    FloatArray,
    intersect_intervals,
    log_one_sided_mixture_z,
    optimal_variance_ratio,
    two_sided_boundary_z,
)
from analysis.sufficient_stats import SufficientStats


def optimal_rho(planned_n: float, alpha: float = 0.05) -> float:
    """Return the ``rho`` that makes the two-sided CS narrowest at ``n = planned_n``.

    Notes
    -----
    The half-width depends on ``rho`` only through ``x = n rho^2``; its exact
    minimiser at ``n = planned_n`` is ``x* = -W_{-1}(-alpha^2 / e) - 1``
    (:func:`analysis.msprt.optimal_variance_ratio`), so
    ``rho = sqrt(x* / planned_n)``. Waudby-Smith et al. (2024) give the
    closed-form approximation ``rho = sqrt((-2 log alpha + log(-2 log alpha + 1)) / planned_n)``,
    one fixed-point step away; at alpha = 0.05 the two half-widths at
    ``planned_n`` differ by less than 0.1 %.
    """
    _check_positive("planned_n", planned_n)
    return math.sqrt(optimal_variance_ratio(alpha) / planned_n)


def halfwidth(
    n: float,
    sigma: float,
    alpha: float = 0.05,
    rho: float | None = None,
    planned_n: float | None = None,
) -> float:
    """Return the two-sided asymptotic CS half-width for a mean of ``n`` observations.

    Parameters
    ----------
    n : float
        Number of observations (> 0; may be an effective, non-integer count).
    sigma : float
        Standard deviation of one observation (> 0).
    alpha : float
        Miscoverage over all sample sizes together, in (0, 1).
    rho, planned_n : float, optional
        Exactly one: the mixture parameter, or the sample size at which the
        CS should be tightest (see :func:`optimal_rho`).

    Notes
    -----
    Waudby-Smith et al. (2024), Theorem 2.2 (Gaussian-mixture asymptotic CS)::

        halfwidth = sigma * sqrt(2 (n rho^2 + 1) / (n^2 rho^2) * log(sqrt(n rho^2 + 1) / alpha))

    It is two-sided at level alpha as written (alpha, not alpha / 2): the
    mixture over both signs of the drift already covers both tails. This is
    also the form in the authors' R package ``drconfseq``
    (``std_conjmix_margin``).
    """
    _check_positive("n", n)
    _check_positive("sigma", sigma)
    _check_alpha(alpha)
    ratio = n * _resolve_rho(rho, planned_n, alpha) ** 2
    return sigma / math.sqrt(n) * float(two_sided_boundary_z(ratio, alpha))


def halfwidths(n: npt.ArrayLike, sigma: npt.ArrayLike, alpha: float, rho: float) -> FloatArray:
    """Vectorised :func:`halfwidth` over arrays of looks (``rho`` given)."""
    size = np.asarray(n, dtype=np.float64)
    scale = np.asarray(sigma, dtype=np.float64)
    _check_positive_array("n", size)
    _check_positive_array("sigma", scale)
    _check_alpha(alpha)
    _check_positive("rho", rho)
    return np.asarray(scale / np.sqrt(size) * two_sided_boundary_z(size * rho**2, alpha))


def one_sided_halfwidth(
    n: float,
    sigma: float,
    alpha: float = 0.05,
    rho: float | None = None,
    planned_n: float | None = None,
) -> float:
    """Return the distance from the mean to a one-sided always-valid bound at level alpha.

    ``mean - one_sided_halfwidth(...)`` is a lower confidence sequence (and
    ``mean + ...`` an upper one), each missing the truth at some ``n`` with
    probability at most alpha.

    Notes
    -----
    Solves ``Lambda+ = 1/alpha`` for the one-sided normal mixture of Howard
    et al. (2021) (see :func:`analysis.msprt.log_one_sided_mixture_likelihood_ratio`)
    in z units, with the sigma plug-in of Waudby-Smith et al. (2024). The
    root lies between the two-sided boundaries at levels ``2 alpha`` and
    ``alpha``. With ``planned_n``, ``rho`` is tuned as for the two-sided CS
    at level ``2 alpha`` (the rule ``confseq`` uses), so ``alpha < 0.5``.
    """
    _check_positive("n", n)
    _check_positive("sigma", sigma)
    _check_alpha(alpha)
    if planned_n is not None and rho is None and not alpha < 0.5:
        raise ValueError("planned_n tuning of a one-sided bound needs alpha < 0.5")
    tuning_alpha = 2 * alpha if rho is None else alpha
    ratio = n * _resolve_rho(rho, planned_n, tuning_alpha) ** 2
    target = math.log(1.0 / alpha)
    upper = float(two_sided_boundary_z(ratio, alpha))

    def excess(z: float) -> float:
        return float(log_one_sided_mixture_z(z, ratio)) - target

    z_bound = (
        optimize.brentq(excess, 0.0, upper, xtol=1e-13, rtol=1e-13) if excess(upper) > 0 else upper
    )
    return sigma / math.sqrt(n) * float(z_bound)


def one_sided_halfwidths(
    n: npt.ArrayLike, sigma: npt.ArrayLike, alpha: float, rho: float
) -> FloatArray:
    """Vectorised :func:`one_sided_halfwidth` (``rho`` given), by bisection."""
    size = np.asarray(n, dtype=np.float64)
    scale = np.asarray(sigma, dtype=np.float64)
    _check_positive_array("n", size)
    _check_positive_array("sigma", scale)
    _check_alpha(alpha)
    _check_positive("rho", rho)
    ratio = size * rho**2
    target = math.log(1.0 / alpha)
    low = np.zeros_like(ratio)
    high = np.array(two_sided_boundary_z(ratio, alpha))
    # 60 halvings shrink the bracket by 1e-18: float resolution for any start.
    for _ in range(60):
        middle = 0.5 * (low + high)
        above = log_one_sided_mixture_z(middle, ratio) > target
        high = np.where(above, middle, high)
        low = np.where(above, low, middle)
    return np.asarray(scale / np.sqrt(size) * 0.5 * (low + high))


@dataclass(frozen=True)
class ConfidenceSequenceInterval:
    """A confidence-sequence interval at the latest look (running intersection)."""

    estimate: float
    ci_low: float
    ci_high: float
    alpha: float
    rho: float
    effective_n: float

    def excludes(self, value: float = 0.0) -> bool:
        """Whether ``value`` (by default zero difference) lies outside the interval."""
        return not self.ci_low <= value <= self.ci_high


def interval(
    estimate: float,
    estimate_variance: float,
    effective_n: float,
    *,
    alpha: float = 0.05,
    rho: float | None = None,
    planned_n: float | None = None,
    previous: ConfidenceSequenceInterval | None = None,
) -> ConfidenceSequenceInterval:
    """Return the CS interval for an estimate with known sampling variance.

    ``effective_n`` is the number of units the estimate averages over (per
    arm for a balanced difference); ``sigma = sqrt(estimate_variance * n)``.
    ``previous`` (the last look's interval) is intersected in, so the
    interval only shrinks.
    """
    _check_finite("estimate", estimate)
    _check_positive("estimate_variance", estimate_variance)
    _check_positive("effective_n", effective_n)
    resolved_rho = _resolve_rho(rho, planned_n, alpha)
    sigma = math.sqrt(estimate_variance * effective_n)
    width = halfwidth(effective_n, sigma, alpha, rho=resolved_rho)
    bounds = (estimate - width, estimate + width)
    if previous is not None:
        if previous.alpha != alpha or previous.rho != resolved_rho:
            raise ValueError("alpha and rho must not change between looks of one sequence")
        bounds = intersect_intervals((previous.ci_low, previous.ci_high), bounds)
    return ConfidenceSequenceInterval(
        estimate, bounds[0], bounds[1], alpha, resolved_rho, effective_n
    )


def mean_interval(
    stats: SufficientStats,
    *,
    alpha: float = 0.05,
    rho: float | None = None,
    planned_n: float | None = None,
    previous: ConfidenceSequenceInterval | None = None,
) -> ConfidenceSequenceInterval:
    """Return the CS interval for one variant's mean."""
    if stats.variance <= 0:
        raise ValueError("zero estimated variance (all units have the same value)")
    return interval(
        stats.mean,
        stats.variance_of_mean,
        stats.n,
        alpha=alpha,
        rho=rho,
        planned_n=planned_n,
        previous=previous,
    )


def difference_interval(
    control: SufficientStats,
    treatment: SufficientStats,
    *,
    alpha: float = 0.05,
    rho: float | None = None,
    planned_n: float | None = None,
    previous: ConfidenceSequenceInterval | None = None,
) -> ConfidenceSequenceInterval:
    """Return the CS interval for treatment mean minus control mean."""
    variance, effective_n = two_sample_scale(
        control.n, control.variance, treatment.n, treatment.variance
    )
    return interval(
        treatment.mean - control.mean,
        variance,
        effective_n,
        alpha=alpha,
        rho=rho,
        planned_n=planned_n,
        previous=previous,
    )


def two_sample_scale(
    control_n: float, control_variance: float, treatment_n: float, treatment_variance: float
) -> tuple[float, float]:
    """Return ``(V, effective_n)`` for a difference of two independent means.

    ``V = var_a / n_a + var_b / n_b`` and ``effective_n = (var_a + var_b) / V``,
    so the difference behaves like a mean of ``effective_n`` paired
    differences with variance ``var_a + var_b`` (the sum of variances over
    ``n``); with equal arms ``effective_n`` is the per-arm count.
    """
    _check_positive("control_n", control_n)
    _check_positive("treatment_n", treatment_n)
    if control_variance < 0 or treatment_variance < 0:
        raise ValueError("variances must be >= 0")
    variance = control_variance / control_n + treatment_variance / treatment_n
    if not variance > 0:
        raise ValueError("the difference has zero estimated variance; wait for more data")
    return variance, (control_variance + treatment_variance) / variance


def _resolve_rho(rho: float | None, planned_n: float | None, alpha: float) -> float:
    if (rho is None) == (planned_n is None):
        raise ValueError("give exactly one of rho and planned_n")
    if rho is not None:
        _check_positive("rho", rho)
        return rho
    assert planned_n is not None
    return optimal_rho(planned_n, alpha)


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0; got {value}")


def _check_positive_array(name: str, values: FloatArray) -> None:
    if not (np.all(np.isfinite(values)) and np.all(values > 0)):
        raise ValueError(f"{name} must be finite and > 0 everywhere")


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")
