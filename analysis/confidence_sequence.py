"""Asymptotic confidence sequences for a mean and for a difference in means.

Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, "Time-uniform central limit
theory and asymptotic confidence sequences", Annals of Statistics 52(6),
2024 (arXiv:2103.06476). A confidence sequence (CS) is a sequence of
intervals that covers the true value at *all* sample sizes simultaneously
with probability 1 - alpha (asymptotically), so it may be checked after
every batch of data and the experiment stopped whenever it excludes zero.

The CS uses the Gaussian-mixture boundary of :mod:`analysis.normal_mixture`
with a scale-free tuning parameter ``rho`` (per-unit, relative to the
metric's standard deviation); choose it with ``planned_n``, the sample size
per arm at which the sequence should be tightest (:func:`optimal_rho`, from
:mod:`analysis.mixture_tuning` and re-exported here). One-sided bounds (for guardrails) use the one-sided normal mixture
of Howard, Ramdas, McAuliffe & Sekhon (Annals of Statistics 49(2), 2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analysis.mixture_tuning import one_sided_rho, optimal_rho, resolve_rho
from analysis.normal_mixture import (
    FloatArray,
    intersect_intervals,
    one_sided_boundary_z,
    one_sided_boundary_zs,
    two_sided_boundary_z,
)
from analysis.sufficient_stats import SufficientStats
from analysis.validation import check_alpha, check_finite, check_positive, check_positive_array

__all__ = [
    "ConfidenceSequenceInterval",
    "difference_interval",
    "halfwidth",
    "halfwidths",
    "interval",
    "mean_interval",
    "one_sided_halfwidth",
    "one_sided_halfwidths",
    "one_sided_rho",
    "optimal_rho",
    "two_sample_scale",
]


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
    check_positive("n", n)
    check_positive("sigma", sigma)
    check_alpha(alpha)
    ratio = n * resolve_rho(rho, planned_n, alpha) ** 2
    check_positive("n rho^2", ratio)
    return sigma / math.sqrt(n) * float(two_sided_boundary_z(ratio, alpha))


def halfwidths(n: npt.ArrayLike, sigma: npt.ArrayLike, alpha: float, rho: float) -> FloatArray:
    """Vectorised :func:`halfwidth` over arrays of looks (``rho`` given)."""
    size, scale, ratio = _look_arrays(n, sigma, alpha, rho)
    return np.asarray(scale / np.sqrt(size) * two_sided_boundary_z(ratio, alpha))


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
    et al. (2021) (see :func:`analysis.normal_mixture.log_one_sided_mixture_likelihood_ratio`)
    in z units, with the sigma plug-in of Waudby-Smith et al. (2024). The
    root lies between the two-sided boundaries at levels ``2 alpha`` and
    ``alpha``. With ``planned_n``, ``rho`` is tuned as for the two-sided CS
    at level ``2 alpha`` (the rule ``confseq`` uses), so ``alpha < 0.5``.
    """
    check_positive("n", n)
    check_positive("sigma", sigma)
    check_alpha(alpha)
    ratio = n * one_sided_rho(rho, planned_n, alpha) ** 2
    check_positive("n rho^2", ratio)
    return sigma / math.sqrt(n) * one_sided_boundary_z(ratio, alpha)


def one_sided_halfwidths(
    n: npt.ArrayLike, sigma: npt.ArrayLike, alpha: float, rho: float
) -> FloatArray:
    """Vectorised :func:`one_sided_halfwidth` (``rho`` given), by bisection."""
    size, scale, ratio = _look_arrays(n, sigma, alpha, rho)
    return np.asarray(scale / np.sqrt(size) * one_sided_boundary_zs(ratio, alpha))


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
    check_finite("estimate", estimate)
    check_positive("estimate_variance", estimate_variance)
    check_positive("effective_n", effective_n)
    resolved_rho = resolve_rho(rho, planned_n, alpha)
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
    check_positive("control_n", control_n)
    check_positive("treatment_n", treatment_n)
    if control_variance < 0 or treatment_variance < 0:
        raise ValueError("variances must be >= 0")
    # An infinite variance would make effective_n inf / inf = NaN.
    check_finite("control_variance", control_variance)
    check_finite("treatment_variance", treatment_variance)
    variance = control_variance / control_n + treatment_variance / treatment_n
    if not variance > 0:
        raise ValueError("the difference has zero estimated variance; wait for more data")
    return variance, (control_variance + treatment_variance) / variance


def _look_arrays(
    n: npt.ArrayLike, sigma: npt.ArrayLike, alpha: float, rho: float
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Return ``n``, ``sigma`` and ``x = n rho^2`` as arrays, checking every look."""
    size = np.asarray(n, dtype=np.float64)
    scale = np.asarray(sigma, dtype=np.float64)
    check_positive_array("n", size)
    check_positive_array("sigma", scale)
    check_alpha(alpha)
    check_positive("rho", rho)
    ratio = np.asarray(size * rho**2, dtype=np.float64)
    check_positive_array("n rho^2", ratio)
    return size, scale, ratio
