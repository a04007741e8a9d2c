"""Mixture sequential probability ratio test (mSPRT) for A/B differences.

Always-valid p-values and confidence intervals for the difference of two
means or two proportions (treatment minus control), following Johari,
Pekelis & Walsh, "Always valid inference: continuous monitoring of A/B
tests", Operations Research 70(3), 2022 (arXiv:1512.04922). A dashboard or a
worker may look after every batch of data: the chance that the p-value *ever*
drops below alpha under the null is at most alpha.

Everything is expressed through the estimate of the difference and its
sampling variance ``V``, so unequal arms, proportions and CUPED-adjusted
differences all plug in. The mixing distribution is ``N(theta0, tau2)``;
``tau2`` is in squared metric units (see :func:`tau2_from_expected_effect`
and :func:`tau2_for_horizon`, from :mod:`analysis.mixture_tuning`).

The mixture likelihood ratio itself (:func:`log_mixture_likelihood_ratio` and
its one-sided and vectorised forms) lives in :mod:`analysis.normal_mixture`,
which the confidence sequences share, and the choice of ``tau2`` in
:mod:`analysis.mixture_tuning`; this module re-exports both, so callers need
only ``analysis.msprt``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis.mixture_tuning import (
    optimal_variance_ratio,
    tau2_for_horizon,
    tau2_from_expected_effect,
)
from analysis.normal_mixture import (
    FloatArray,
    intersect_intervals,
    log_mixture_likelihood_ratio,
    log_mixture_likelihood_ratios,
    log_one_sided_mixture_likelihood_ratio,
    log_one_sided_mixture_z,
    log_two_sided_mixture_z,
    mixture_likelihood_ratio,
    two_sided_boundary_z,
    variance_ratio,
)
from analysis.sufficient_stats import SufficientStats
from analysis.validation import check_alpha, check_finite

__all__ = [
    "FloatArray",
    "MsprtResult",
    "always_valid_confidence_intervals",
    "always_valid_p_values",
    "compare_means",
    "compare_proportions",
    "confidence_halfwidth",
    "intersect_intervals",
    "log_mixture_likelihood_ratio",
    "log_mixture_likelihood_ratios",
    "log_one_sided_mixture_likelihood_ratio",
    "log_one_sided_mixture_z",
    "log_two_sided_mixture_z",
    "mixture_likelihood_ratio",
    "msprt_look",
    "optimal_variance_ratio",
    "tau2_for_horizon",
    "tau2_from_expected_effect",
    "two_sided_boundary_z",
]


def always_valid_p_values(
    estimates: Sequence[float], variances: Sequence[float], tau2: float
) -> list[float]:
    """Return the running always-valid p-values over a sequence of looks.

    Notes
    -----
    Johari et al. (2022), the always-valid p-value of the mSPRT: ``p_0 = 1``
    and ``p_n = min(p_{n-1}, 1 / Lambda_n)``. They never increase, and
    ``P(p_n <= alpha for some n) <= alpha`` under the null.
    """
    if len(estimates) != len(variances):
        raise ValueError("estimates and variances must have the same length")
    log_ratios = log_mixture_likelihood_ratios(list(estimates), list(variances), tau2)
    inverse_ratios = np.exp(-np.maximum(log_ratios, 0.0))
    return [float(p) for p in np.minimum.accumulate(inverse_ratios)]


def confidence_halfwidth(variance: float, tau2: float, alpha: float = 0.05) -> float:
    """Return the half-width of the always-valid interval at one look.

    Notes
    -----
    Johari et al. (2022): the always-valid interval is the set of
    ``theta0`` with ``Lambda_n(theta0) < 1/alpha``. Solving the quadratic in
    ``theta0`` from :func:`log_mixture_likelihood_ratio`::

        halfwidth = sqrt(V (V + tau2) / tau2 * (2 log(1/alpha) + log((V + tau2) / V)))
    """
    ratio = variance_ratio(tau2, variance)
    check_alpha(alpha)
    return math.sqrt(variance) * float(two_sided_boundary_z(ratio, alpha))


def always_valid_confidence_intervals(
    estimates: Sequence[float], variances: Sequence[float], tau2: float, alpha: float = 0.05
) -> list[tuple[float, float]]:
    """Return the running (intersected) always-valid intervals over a sequence of looks."""
    if len(estimates) != len(variances):
        raise ValueError("estimates and variances must have the same length")
    intervals: list[tuple[float, float]] = []
    for estimate, variance in zip(estimates, variances, strict=True):
        check_finite("estimate", estimate)
        halfwidth = confidence_halfwidth(variance, tau2, alpha)
        current = (estimate - halfwidth, estimate + halfwidth)
        intervals.append(intersect_intervals(intervals[-1] if intervals else None, current))
    return intervals


@dataclass(frozen=True)
class MsprtResult:
    """State of an mSPRT after the latest look (all differences: treatment minus control)."""

    difference: float
    difference_variance: float
    tau2: float
    alpha: float
    log_likelihood_ratio: float
    p_value_always_valid: float
    ci_low: float
    ci_high: float
    looks: int

    @property
    def significant(self) -> bool:
        """Whether the null of no difference is rejected at level ``alpha``."""
        return self.p_value_always_valid <= self.alpha


def msprt_look(
    difference: float,
    difference_variance: float,
    tau2: float,
    alpha: float = 0.05,
    previous: MsprtResult | None = None,
) -> MsprtResult:
    """Fold one look into the running always-valid p-value and interval.

    ``previous`` is the result of the last look (``None`` at the first); the
    p-value only goes down and the interval only shrinks. ``tau2`` and
    ``alpha`` must stay fixed over the life of a test.
    """
    log_ratio = log_mixture_likelihood_ratio(difference, difference_variance, tau2)
    halfwidth = confidence_halfwidth(difference_variance, tau2, alpha)
    p_value = math.exp(-max(log_ratio, 0.0))
    interval = (difference - halfwidth, difference + halfwidth)
    if previous is not None:
        if previous.tau2 != tau2 or previous.alpha != alpha:
            raise ValueError("tau2 and alpha must not change between looks of one test")
        p_value = min(p_value, previous.p_value_always_valid)
        interval = intersect_intervals((previous.ci_low, previous.ci_high), interval)
    return MsprtResult(
        difference=difference,
        difference_variance=difference_variance,
        tau2=tau2,
        alpha=alpha,
        log_likelihood_ratio=log_ratio,
        p_value_always_valid=p_value,
        ci_low=interval[0],
        ci_high=interval[1],
        looks=1 if previous is None else previous.looks + 1,
    )


def compare_means(
    control: SufficientStats,
    treatment: SufficientStats,
    tau2: float,
    alpha: float = 0.05,
    previous: MsprtResult | None = None,
) -> MsprtResult:
    """Run one mSPRT look on the difference of two means from sufficient statistics.

    The variance of the difference is ``var_a / n_a + var_b / n_b`` (plug-in
    variances), the normal approximation Johari et al. (2022) use for
    continuous metrics with unknown variance.
    """
    variance = _difference_variance(control, treatment)
    return msprt_look(treatment.mean - control.mean, variance, tau2, alpha, previous)


def compare_proportions(
    control_n: int,
    control_successes: int,
    treatment_n: int,
    treatment_successes: int,
    tau2: float,
    alpha: float = 0.05,
    previous: MsprtResult | None = None,
) -> MsprtResult:
    """Run one mSPRT look on the difference of two proportions.

    Uses ``V = p_a (1 - p_a) / n_a + p_b (1 - p_b) / n_b``, the
    normal approximation of Johari et al. (2022) for Bernoulli streams.
    """
    control = SufficientStats.from_binary(control_n, control_successes)
    treatment = SufficientStats.from_binary(treatment_n, treatment_successes)
    return compare_means(control, treatment, tau2, alpha, previous)


def _difference_variance(control: SufficientStats, treatment: SufficientStats) -> float:
    variance = control.variance_of_mean + treatment.variance_of_mean
    if variance <= 0:
        raise ValueError(
            "the difference has zero estimated variance (every unit in both arms has the "
            "same value); wait for more data"
        )
    return variance
