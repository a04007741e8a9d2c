"""Ratio metrics (e.g. revenue per session) by the delta method.

Deng, Knoblich & Lu, "Applying the Delta Method in Metric Analytics: A
Practical Guide with Novel Ideas", KDD 2018. When the unit of randomisation
(the user) differs from the unit of analysis (the session), the metric is a
ratio of two per-user sums, ``R = sum_x / sum_y``: ``x`` the numerator
(revenue of the user), ``y`` the denominator (sessions of the user). Users
are independent; sessions of one user are not, so treating sessions as
independent understates the variance. The delta method linearises the ratio
around the means and needs only per-user sufficient statistics.

Notation follows the paper: ``x`` numerator, ``y`` denominator (unlike
:mod:`analysis.cuped`, where ``x`` is the covariate and ``y`` the metric).
"""

from __future__ import annotations

from dataclasses import dataclass

from analysis.sufficient_stats import SufficientStats
from analysis.validation import check_finite, check_positive


@dataclass(frozen=True)
class RatioEstimate:
    """A ratio metric in one arm and the delta-method variance of its estimate."""

    ratio: float
    variance: float
    n: float

    @property
    def unit_variance(self) -> float:
        """Per-unit variance of the linearised metric, ``variance * n``."""
        return self.variance * self.n


def ratio_estimate(
    n: float, sum_x: float, sum_y: float, sum_x2: float, sum_y2: float, sum_xy: float
) -> RatioEstimate:
    """Return ``R = sum_x / sum_y`` and its delta-method variance from per-unit sums.

    Parameters
    ----------
    n : float
        Number of randomisation units (users), > 0.
    sum_x, sum_y : float
        Sums over users of the numerator and of the denominator.
    sum_x2, sum_y2, sum_xy : float
        Sums over users of x^2, y^2 and x*y.

    Notes
    -----
    Deng et al. (2018), the delta method for a ratio of means::

        Var(xbar / ybar) ~ (1 / (n mu_y^2)) (var_x - 2 R cov_xy + R^2 var_y)

    with plug-in moments. Because ``mu_x - R mu_y = 0`` this simplifies
    exactly to ``(sum_x2 - 2 R sum_xy + R^2 sum_y2) / sum_y^2``, which is how
    it is computed (no cancellation between means).
    """
    check_positive("n", n)
    sums = {"sum_x": sum_x, "sum_y": sum_y, "sum_x2": sum_x2, "sum_y2": sum_y2, "sum_xy": sum_xy}
    for name, value in sums.items():
        check_finite(name, value)
    if sum_x2 < 0 or sum_y2 < 0:
        raise ValueError("sums of squares must be >= 0")
    if sum_y == 0:
        raise ValueError("the denominator total sum_y is zero; the ratio is undefined")
    ratio = sum_x / sum_y
    residual_squares = sum_x2 - 2 * ratio * sum_xy + ratio**2 * sum_y2
    return RatioEstimate(ratio=ratio, variance=max(residual_squares, 0.0) / sum_y**2, n=n)


@dataclass(frozen=True)
class RatioComparison:
    """Treatment minus control for a ratio metric, absolute and relative."""

    difference: float
    difference_variance: float
    lift_relative: float
    lift_relative_variance: float


def compare_ratios(control: RatioEstimate, treatment: RatioEstimate) -> RatioComparison:
    """Return the difference and the relative lift of two independent ratio estimates.

    Notes
    -----
    Arms are independent, so ``Var(R_b - R_a) = Var(R_a) + Var(R_b)``. The
    relative lift ``R_b / R_a - 1`` gets the delta method again (Deng et al.
    2018, percent change)::

        Var(R_b / R_a) ~ Var(R_b) / R_a^2 + R_b^2 Var(R_a) / R_a^4
    """
    for arm, estimate in (("control", control), ("treatment", treatment)):
        check_finite(f"{arm} ratio", estimate.ratio)
        check_finite(f"{arm} variance", estimate.variance)
    if control.ratio == 0:
        raise ValueError("the control ratio is zero; the relative lift is undefined")
    variance = control.variance + treatment.variance
    if not variance > 0:
        raise ValueError("the difference has zero estimated variance; wait for more data")
    lift_variance = (
        treatment.variance / control.ratio**2
        + treatment.ratio**2 * control.variance / control.ratio**4
    )
    return RatioComparison(
        difference=treatment.ratio - control.ratio,
        difference_variance=variance,
        lift_relative=treatment.ratio / control.ratio - 1.0,
        lift_relative_variance=lift_variance,
    )


@dataclass(frozen=True)
class RatioCrossSums:
    """Per-unit cross products a ratio needs beyond its two metrics' own sums.

    ``x`` the unit's numerator total, ``y`` its denominator total, ``x'`` and ``y'`` the same
    over the pre-period (each metric's CUPED covariate). The four pre-period products are
    given together or not at all.
    """

    sum_xy: float
    """Sum over units of x * y."""
    sum_xy_pre: float | None = None
    """Sum of x' * y' (the pre-period ratio's own cross product)."""
    sum_x_ypre: float | None = None
    """Sum of x * y'."""
    sum_xpre_y: float | None = None
    """Sum of x' * y."""


def linearized_stats(
    numerator: SufficientStats, denominator: SufficientStats, cross: RatioCrossSums
) -> SufficientStats:
    """Return one arm's ratio metric as the sums of its per-unit linearisation.

    Parameters
    ----------
    numerator, denominator : SufficientStats
        The arm's sums of the per-unit numerator ``x`` and denominator ``y`` (same units);
        their covariate sums, when both have them, are the pre-period ``x'`` and ``y'``.
    cross : RatioCrossSums
        The arm's cross products of ``x`` and ``y`` (and of their pre-period values).

    Notes
    -----
    The delta method (Deng, Knoblich & Lu 2018) is a first-order expansion: to first order
    ``R_hat - R = mean_i l_i`` with the per-unit linearisation (influence function)
    ``l_i = R + (x_i - R y_i) / ybar``. Its sums follow from the ones above, because
    ``sum_i (x_i - R y_i) = 0`` at ``R = sum_x / sum_y``::

        sum l   = n R
        sum l^2 = n R^2 + (sum_x2 - 2 R sum_xy + R^2 sum_y2) / ybar^2

    so ``variance_of_mean`` of the result is exactly :func:`ratio_estimate`'s delta-method
    variance, and every method that takes a :class:`SufficientStats` (the sequential tests,
    the guardrails) analyses the ratio unchanged. The pre-period ratio
    ``R' = sum_x' / sum_y'`` is linearised the same way and becomes the covariate, which is
    CUPED (Deng et al. 2013, Section 3.2) applied to the linearised values: CUPED for ratio
    metrics::

        sum l l' = n R R' + (sum_xx' - R' sum_xy' - R sum_x'y + R R' sum_yy') / (ybar ybar')

    The covariate is left out when the pre-period has no denominator (``sum_y' == 0``).
    """
    n = numerator.n
    if denominator.n != n:
        raise ValueError(f"numerator and denominator must count the same units ({n} != "
                         f"{denominator.n})")  # fmt: skip
    check_positive("n", n)
    check_finite("sum_xy", cross.sum_xy)
    estimate = ratio_estimate(n, numerator.total, denominator.total, numerator.total_squares,
                              denominator.total_squares, cross.sum_xy)  # fmt: skip
    ratio, mean_y = estimate.ratio, denominator.total / n
    residual_squares = estimate.variance * denominator.total**2
    total_squares = n * ratio**2 + residual_squares / mean_y**2
    pre = _pre_period(numerator, denominator, cross)
    if pre is None:
        return SufficientStats(n, n * ratio, total_squares)
    (pre_x, pre_y, pre_x2, pre_y2, pre_xy, x_xpre, y_ypre), (x_ypre, xpre_y) = pre
    pre_estimate = ratio_estimate(n, pre_x, pre_y, pre_x2, pre_y2, pre_xy)
    pre_ratio, pre_mean_y = pre_estimate.ratio, pre_y / n
    pre_residual_squares = pre_estimate.variance * pre_y**2
    residual_cross = (x_xpre - pre_ratio * x_ypre - ratio * xpre_y
                      + ratio * pre_ratio * y_ypre)  # fmt: skip
    return SufficientStats(
        n,
        n * ratio,
        total_squares,
        n * pre_ratio,
        n * pre_ratio**2 + pre_residual_squares / pre_mean_y**2,
        n * ratio * pre_ratio + residual_cross / (mean_y * pre_mean_y),
    )


def _pre_period(
    numerator: SufficientStats, denominator: SufficientStats, cross: RatioCrossSums
) -> tuple[tuple[float, ...], tuple[float, float]] | None:
    """The pre-period sums when complete and the pre-period ratio is defined, else None."""
    extra = (cross.sum_xy_pre, cross.sum_x_ypre, cross.sum_xpre_y)
    if any(value is None for value in extra) and any(value is not None for value in extra):
        raise ValueError("the pre-period cross sums must be given together")
    if not numerator.has_covariate or not denominator.has_covariate or extra[0] is None:
        return None
    own = (
        numerator.covariate_total, denominator.covariate_total,
        numerator.covariate_total_squares, denominator.covariate_total_squares,
        cross.sum_xy_pre, numerator.covariate_cross_total, denominator.covariate_cross_total,
    )  # fmt: skip
    values = tuple(float(value or 0.0) for value in own)
    for name, value in zip(("sum_xy_pre", "sum_x_ypre", "sum_xpre_y"), extra, strict=True):
        check_finite(name, float(value or 0.0))
    if values[1] == 0:
        return None  # no pre-period denominator: nothing to adjust with
    return values, (float(cross.sum_x_ypre or 0.0), float(cross.sum_xpre_y or 0.0))
