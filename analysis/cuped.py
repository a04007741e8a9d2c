"""CUPED variance reduction from sufficient statistics.

Deng, Xu, Kohavi & Walker, "Improving the sensitivity of online controlled
experiments by utilizing pre-experiment data", WSDM 2013. The metric ``y`` is
adjusted with a pre-period covariate ``x`` (usually the same metric measured
before the experiment)::

    y_cv = y - theta (x - E[x]),    theta = cov(x, y) / var(x)

which keeps the mean of ``y`` and shrinks its variance by the factor
``1 - rho^2``, ``rho = corr(x, y)``. For a comparison the same ``theta`` must
be used in both arms (else the covariate imbalance is weighted differently
per arm and the difference is biased); :func:`compare` pools it across arms.

All variances are plug-in (denominator ``n``), like
:class:`analysis.sufficient_stats.SufficientStats`; ``theta`` does not depend
on that choice.
"""

from __future__ import annotations

from dataclasses import dataclass

from analysis.sufficient_stats import SufficientStats
from analysis.validation import check_finite, check_positive

# A covariate whose centred sum of squares is below this fraction of its raw
# sum of squares is constant up to rounding error.
_ZERO_VARIANCE = 1e-12


def theta(n: float, sum_x: float, sum_y: float, sum_x2: float, sum_xy: float) -> float:
    """Return ``theta = cov(x, y) / var(x)`` from sums (x: covariate, y: metric).

    Notes
    -----
    Deng et al. (2013), Section 3.2 (control variates): the variance-minimising
    coefficient, which is also the OLS slope of ``y`` on ``x``::

        theta = (sum_xy - sum_x sum_y / n) / (sum_x2 - sum_x^2 / n)
    """
    check_positive("n", n)
    for name, value in (("sum_x", sum_x), ("sum_y", sum_y), ("sum_x2", sum_x2)):
        check_finite(name, value)
    check_finite("sum_xy", sum_xy)
    centred_xx = _centred_squares(n, sum_x, sum_x2)
    return (sum_xy - sum_x * sum_y / n) / centred_xx


@dataclass(frozen=True)
class CupedAdjustment:
    """CUPED-adjusted mean and per-unit variance of one arm."""

    theta: float
    adjusted_mean: float
    adjusted_variance: float
    variance_reduction: float
    n: float

    @property
    def adjusted_variance_of_mean(self) -> float:
        """Sampling variance of :attr:`adjusted_mean`, ``adjusted_variance / n``."""
        return self.adjusted_variance / self.n


def adjust(
    n: float,
    sum_x: float,
    sum_y: float,
    sum_x2: float,
    sum_y2: float,
    sum_xy: float,
    *,
    shared_theta: float | None = None,
    covariate_mean: float | None = None,
) -> CupedAdjustment:
    """Return the CUPED-adjusted mean and variance of one arm from its sums.

    Parameters
    ----------
    n, sum_x, sum_y, sum_x2, sum_y2, sum_xy : float
        Unit count and sums of covariate x, metric y, x^2, y^2 and x*y.
    shared_theta : float, optional
        The ``theta`` to use (pooled across arms for a comparison); by default
        this arm's own :func:`theta`.
    covariate_mean : float, optional
        The centre ``E[x]`` (the pooled covariate mean for a comparison); by
        default this arm's covariate mean, which leaves the mean unchanged.

    Notes
    -----
    Deng et al. (2013), Section 3.2: ``adjusted_mean = ybar - theta (xbar - E[x])``
    and ``var(y_cv) = var(y) - 2 theta cov(x, y) + theta^2 var(x)``, which
    equals ``var(y) (1 - rho^2)`` at the arm's own theta; so
    ``variance_reduction = 1 - var(y_cv) / var(y)`` is ``rho^2`` there. The
    extra variance from estimating theta is O(1/n^2) and ignored, as in the
    paper.
    """
    own_theta = theta(n, sum_x, sum_y, sum_x2, sum_xy)
    check_finite("sum_y2", sum_y2)
    used_theta = own_theta if shared_theta is None else shared_theta
    check_finite("shared_theta", used_theta)
    mean_x, mean_y = sum_x / n, sum_y / n
    variance_x = _centred_squares(n, sum_x, sum_x2) / n
    variance_y = (sum_y2 - sum_y * mean_y) / n
    if not variance_y > _ZERO_VARIANCE * abs(sum_y2) / n:
        raise ValueError("the metric has zero variance; CUPED has nothing to reduce")
    covariance = own_theta * variance_x
    adjusted_variance = max(
        variance_y - 2 * used_theta * covariance + used_theta**2 * variance_x, 0.0
    )
    centre = mean_x if covariate_mean is None else covariate_mean
    check_finite("covariate_mean", centre)
    return CupedAdjustment(
        theta=used_theta,
        adjusted_mean=mean_y - used_theta * (mean_x - centre),
        adjusted_variance=adjusted_variance,
        variance_reduction=1.0 - adjusted_variance / variance_y,
        n=n,
    )


def adjust_stats(
    stats: SufficientStats,
    *,
    shared_theta: float | None = None,
    covariate_mean: float | None = None,
) -> CupedAdjustment:
    """Apply :func:`adjust` to a :class:`SufficientStats` that carries covariate sums."""
    sum_x, sum_x2, sum_xy = _covariate_sums(stats)
    return adjust(
        stats.n,
        sum_x,
        stats.total,
        sum_x2,
        stats.total_squares,
        sum_xy,
        shared_theta=shared_theta,
        covariate_mean=covariate_mean,
    )


def pooled_theta(control: SufficientStats, treatment: SufficientStats) -> float:
    """Return the ``theta`` shared by both arms: the within-arm pooled slope.

    ``sum over arms of centred S_xy / sum over arms of centred S_xx``. This is
    the covariate coefficient of the OLS fit ``y ~ 1 + treatment + x``, and it
    is not inflated by the treatment effect the way a slope over the merged
    arms would be.
    """
    cross, squares = 0.0, 0.0
    for stats in (control, treatment):
        sum_x, sum_x2, sum_xy = _covariate_sums(stats)
        check_positive("n", stats.n)
        squares += _centred_squares(stats.n, sum_x, sum_x2)
        cross += sum_xy - sum_x * stats.total / stats.n
    return cross / squares


@dataclass(frozen=True)
class CupedComparison:
    """CUPED-adjusted difference, treatment minus control, and its variance."""

    theta: float
    difference: float
    difference_variance: float
    unadjusted_difference: float
    unadjusted_difference_variance: float
    variance_reduction: float
    control: CupedAdjustment
    treatment: CupedAdjustment


def compare(control: SufficientStats, treatment: SufficientStats) -> CupedComparison:
    """Return the CUPED-adjusted difference of means with a pooled theta.

    Notes
    -----
    Deng et al. (2013), Section 3.2 applied to the difference: with one theta
    for both arms, ``delta_cv = (ybar_b - ybar_a) - theta (xbar_b - xbar_a)``
    and ``Var = var_a(y_cv) / n_a + var_b(y_cv) / n_b``. Randomisation makes
    ``E[xbar_b - xbar_a] = 0``, so the adjustment removes noise, not effect.
    """
    shared = pooled_theta(control, treatment)
    covariate_totals = _covariate_sums(control)[0] + _covariate_sums(treatment)[0]
    centre = covariate_totals / (control.n + treatment.n)
    adjusted_control = adjust_stats(control, shared_theta=shared, covariate_mean=centre)
    adjusted_treatment = adjust_stats(treatment, shared_theta=shared, covariate_mean=centre)
    variance = (
        adjusted_control.adjusted_variance_of_mean + adjusted_treatment.adjusted_variance_of_mean
    )
    unadjusted_variance = control.variance_of_mean + treatment.variance_of_mean
    return CupedComparison(
        theta=shared,
        difference=adjusted_treatment.adjusted_mean - adjusted_control.adjusted_mean,
        difference_variance=variance,
        unadjusted_difference=treatment.mean - control.mean,
        unadjusted_difference_variance=unadjusted_variance,
        variance_reduction=1.0 - variance / unadjusted_variance,
        control=adjusted_control,
        treatment=adjusted_treatment,
    )


def _covariate_sums(stats: SufficientStats) -> tuple[float, float, float]:
    if (
        stats.covariate_total is None
        or stats.covariate_total_squares is None
        or stats.covariate_cross_total is None
    ):
        raise ValueError("CUPED needs covariate sums (covariate_total, ...) in both arms")
    return stats.covariate_total, stats.covariate_total_squares, stats.covariate_cross_total


def _centred_squares(n: float, total: float, total_squares: float) -> float:
    centred = total_squares - total * total / n
    if not centred > _ZERO_VARIANCE * abs(total_squares):
        raise ValueError("the covariate has zero variance; theta is undefined")
    return centred
