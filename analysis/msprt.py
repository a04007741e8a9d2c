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
and :func:`tau2_for_horizon`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import special

from analysis.sufficient_stats import SufficientStats

FloatArray = npt.NDArray[np.float64]


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
    _check_positive("variance", variance)
    _check_positive("tau2", tau2)
    _check_finite("estimate", estimate)
    z_squared = (estimate - null_value) ** 2 / variance
    return float(log_two_sided_mixture_z(z_squared, tau2 / variance))


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
    _check_positive("variance", variance)
    _check_positive("tau2", tau2)
    _check_finite("estimate", estimate)
    z = (estimate - null_value) / math.sqrt(variance)
    return float(log_one_sided_mixture_z(z, tau2 / variance))


def log_mixture_likelihood_ratios(
    estimates: npt.ArrayLike, variances: npt.ArrayLike, tau2: float
) -> FloatArray:
    """Vectorised :func:`log_mixture_likelihood_ratio` (null 0) over arrays of looks."""
    estimate = np.asarray(estimates, dtype=np.float64)
    variance = np.asarray(variances, dtype=np.float64)
    _check_positive("tau2", tau2)
    if not np.all(np.isfinite(estimate)):
        raise ValueError("estimates must be finite")
    if not np.all(variance > 0) or not np.all(np.isfinite(variance)):
        raise ValueError("variances must be finite and > 0")
    return np.asarray(
        log_two_sided_mixture_z(estimate**2 / variance, tau2 / variance), dtype=np.float64
    )


def always_valid_p_values(
    estimates: Sequence[float], variances: Sequence[float], tau2: float
) -> list[float]:
    """Return the running always-valid p-values over a sequence of looks.

    Notes
    -----
    Johari et al. (2022), the always-valid p-value of the mSPRT: ``p_0 = 1`` and ``p_n = min(p_{n-1}, 1 / Lambda_n)``. They never
    increase, and ``P(p_n <= alpha for some n) <= alpha`` under the null.
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
    _check_positive("variance", variance)
    _check_positive("tau2", tau2)
    _check_alpha(alpha)
    return math.sqrt(variance) * float(two_sided_boundary_z(tau2 / variance, alpha))


def always_valid_confidence_intervals(
    estimates: Sequence[float], variances: Sequence[float], tau2: float, alpha: float = 0.05
) -> list[tuple[float, float]]:
    """Return the running (intersected) always-valid intervals over a sequence of looks."""
    if len(estimates) != len(variances):
        raise ValueError("estimates and variances must have the same length")
    intervals: list[tuple[float, float]] = []
    for estimate, variance in zip(estimates, variances, strict=True):
        _check_finite("estimate", estimate)
        halfwidth = confidence_halfwidth(variance, tau2, alpha)
        current = (estimate - halfwidth, estimate + halfwidth)
        intervals.append(intersect_intervals(intervals[-1] if intervals else None, current))
    return intervals


def tau2_from_expected_effect(expected_effect: float) -> float:
    """Return the mixing variance ``tau2 = expected_effect**2``.

    Notes
    -----
    Johari et al. (2022) choose the mixing distribution by matching ``H`` to
    the distribution of true effects seen across past experiments: with
    ``H = N(0, tau2)`` that means ``tau2 = E[theta^2]``, the mean squared
    effect. A single anticipated effect size (in metric units, e.g. the
    minimum effect worth detecting) gives ``tau2 = effect^2``; the test then
    has most power for differences of that order. Any ``tau2 > 0`` keeps the
    type-I guarantee; only power and time to detection depend on it.
    """
    _check_finite("expected_effect", expected_effect)
    if expected_effect == 0:
        raise ValueError("expected_effect must be nonzero (tau2 must be > 0)")
    return float(expected_effect) ** 2


def tau2_for_horizon(variance_at_horizon: float, alpha: float = 0.05) -> float:
    """Return the ``tau2`` whose always-valid interval is narrowest at a planned horizon.

    Parameters
    ----------
    variance_at_horizon : float
        Expected sampling variance of the difference at the planned sample
        size, e.g. ``(sigma_a**2 + sigma_b**2) / n_per_arm``.

    Notes
    -----
    The half-width ``sqrt(V (1 + x) / x (2 log(1/alpha) + log(1 + x)))`` with
    ``x = tau2 / V`` is minimised where ``x = 2 log(1/alpha) + log(1 + x)``;
    see :func:`optimal_variance_ratio`. Equivalent to the ``planned_n`` rule
    for confidence sequences (Waudby-Smith et al. 2024).
    """
    _check_positive("variance_at_horizon", variance_at_horizon)
    return optimal_variance_ratio(alpha) * variance_at_horizon


def optimal_variance_ratio(alpha: float = 0.05) -> float:
    """Return ``x* = tau2 / V`` that minimises the two-sided normal-mixture half-width.

    Notes
    -----
    Setting the derivative of ``(1 + x) / x * (a + log(1 + x))`` with
    ``a = 2 log(1/alpha)`` to zero gives ``x = a + log(1 + x)``, i.e.
    ``u = 1 + x`` solves ``u e^{-u} = alpha^2 / e``, so
    ``x* = -W_{-1}(-alpha^2 / e) - 1`` (Lambert W, lower branch). One
    fixed-point step from ``x = a`` gives the approximation
    ``a + log(1 + a)`` that Waudby-Smith et al. (2024) give for tuning rho
    after their Theorem 2.2, and that Howard et al. (2021) use in ``confseq``.
    """
    _check_alpha(alpha)
    return float(-special.lambertw(-(alpha**2) / math.e, k=-1).real - 1.0)


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


_LOG_MAX_FLOAT = math.log(np.finfo(np.float64).max)

# The normal-mixture kernels below work on floats and on arrays alike, in
# standardised units: ``x = tau2 / V`` (the mixing variance over the sampling
# variance; ``n rho^2`` in the confidence-sequence parameterisation) and
# ``z = (estimate - theta0) / sqrt(V)``.


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


def _difference_variance(control: SufficientStats, treatment: SufficientStats) -> float:
    variance = control.variance_of_mean + treatment.variance_of_mean
    if variance <= 0:
        raise ValueError(
            "the difference has zero estimated variance (every unit in both arms has the "
            "same value); wait for more data"
        )
    return variance


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0; got {value}")


def _check_finite(name: str, value: float) -> None:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")


def _check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must lie in (0, 1); got {alpha}")
