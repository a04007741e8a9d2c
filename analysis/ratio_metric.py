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
