"""Guardrail metrics as sequential one-sided non-inferiority tests.

A guardrail (latency, error rate, revenue, ...) must not get worse by more
than a margin, absolute (in metric units) or relative (a fraction of the
control mean). Define the *harm* of the treatment as its change in the bad
direction: ``mean_b - mean_a`` when lower is better, ``mean_a - mean_b`` when
higher is better (divided by ``mean_a`` for a relative margin). At every look
two one-sided always-valid bounds on the harm are updated:

* ``holds`` (non-inferiority shown) once the upper bound is below the margin;
* ``breached`` once the lower bound is above the margin: the treatment is
  worse than the margin allows, and non-inferiority can no longer be shown.

Each bound is a one-sided asymptotic confidence sequence (the one-sided
normal mixture of Howard et al. 2021 with the variance plug-in of
Waudby-Smith et al. 2024), so either verdict may be declared at any look:
P(ever ``breached`` | harm <= margin) <= alpha and
P(ever ``holds`` | harm >= margin) <= alpha. With ``margin = 0`` the rule
reads "breached = any significant deterioration".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from analysis.confidence_sequence import one_sided_halfwidth, one_sided_halfwidths
from analysis.mixture_tuning import one_sided_rho
from analysis.normal_mixture import FloatArray
from analysis.sufficient_stats import SufficientStats

BoolArray = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class GuardrailResult:
    """Verdict of a guardrail at the latest look.

    ``harm`` and its bounds are on the margin's scale: metric units for an
    absolute margin, a fraction of the control mean for a relative one;
    positive means the treatment is worse.
    """

    breached: bool
    holds: bool
    harm: float
    harm_lower_bound: float
    harm_upper_bound: float
    margin: float
    relative: bool
    higher_is_better: bool
    alpha: float
    rho: float


def check_guardrail(
    control: SufficientStats,
    treatment: SufficientStats,
    *,
    margin: float,
    relative: bool = True,
    higher_is_better: bool = False,
    alpha: float = 0.05,
    rho: float | None = None,
    planned_n: float | None = None,
    previous: GuardrailResult | None = None,
) -> GuardrailResult:
    """Update a guardrail with the cumulative statistics of both arms.

    Parameters
    ----------
    control, treatment : SufficientStats
        Cumulative statistics of the guardrail metric in each arm.
    margin : float
        Largest tolerated harm (>= 0): a fraction of the control mean when
        ``relative`` (0.02 = 2 %), else metric units.
    relative : bool
        Whether ``margin`` is relative to the control mean (which must be > 0).
    higher_is_better : bool
        False for latency or error rate (an increase is harm), True for
        revenue or conversion (a decrease is harm).
    alpha : float
        Error probability of each verdict over all looks, in (0, 0.5) when
        ``planned_n`` tunes ``rho``.
    rho, planned_n : float, optional
        Exactly one: the confidence-sequence parameter or the per-arm sample
        size at which the bounds should be tightest.
    previous : GuardrailResult, optional
        The last look's result; bounds are intersected so they only tighten.
    """
    _check_margin(margin)
    tuned_rho = one_sided_rho(rho, planned_n, alpha)
    harm, variance, effective_n = _harm_scale(
        *_arm(control), *_arm(treatment), relative=relative, higher_is_better=higher_is_better
    )
    harm_value, variance_value, n_value = float(harm), float(variance), float(effective_n)
    if not variance_value > 0:
        raise ValueError("the harm has zero estimated variance; wait for more data")
    width = one_sided_halfwidth(n_value, math.sqrt(variance_value * n_value), alpha, rho=tuned_rho)
    low, high = harm_value - width, harm_value + width
    if previous is not None:
        _check_same_design(previous, margin, relative, higher_is_better, alpha, tuned_rho)
        low, high = max(low, previous.harm_lower_bound), min(high, previous.harm_upper_bound)
    return GuardrailResult(
        breached=low > margin,
        holds=high < margin,
        harm=harm_value,
        harm_lower_bound=low,
        harm_upper_bound=high,
        margin=margin,
        relative=relative,
        higher_is_better=higher_is_better,
        alpha=alpha,
        rho=tuned_rho,
    )


@dataclass(frozen=True)
class GuardrailPaths:
    """A guardrail replayed over many looks (looks along the last axis)."""

    harm: FloatArray
    harm_lower_bound: FloatArray
    harm_upper_bound: FloatArray
    breached: BoolArray
    holds: BoolArray


def guardrail_paths(
    control_n: npt.ArrayLike,
    control_total: npt.ArrayLike,
    control_total_squares: npt.ArrayLike,
    treatment_n: npt.ArrayLike,
    treatment_total: npt.ArrayLike,
    treatment_total_squares: npt.ArrayLike,
    *,
    margin: float,
    relative: bool = True,
    higher_is_better: bool = False,
    alpha: float = 0.05,
    rho: float,
) -> GuardrailPaths:
    """Replay :func:`check_guardrail` over arrays of cumulative sums, vectorised.

    Inputs are cumulative per look, with looks along the last axis (leading
    axes, e.g. simulated experiments, broadcast). Bounds are running
    intersections, so ``breached`` and ``holds`` never revert along a path.
    """
    _check_margin(margin)
    arms = [
        _arm_arrays(n, total, squares)
        for n, total, squares in (
            (control_n, control_total, control_total_squares),
            (treatment_n, treatment_total, treatment_total_squares),
        )
    ]
    harm, variance, effective_n = _harm_scale(
        *arms[0], *arms[1], relative=relative, higher_is_better=higher_is_better
    )
    if not np.all(variance > 0):
        raise ValueError("the harm has zero estimated variance at some look")
    width = one_sided_halfwidths(effective_n, np.sqrt(variance * effective_n), alpha, rho)
    low = np.maximum.accumulate(harm - width, axis=-1)
    high = np.minimum.accumulate(harm + width, axis=-1)
    return GuardrailPaths(harm, low, high, low > margin, high < margin)


def _harm_scale(
    control_n: npt.ArrayLike,
    control_mean: npt.ArrayLike,
    control_variance: npt.ArrayLike,
    treatment_n: npt.ArrayLike,
    treatment_mean: npt.ArrayLike,
    treatment_variance: npt.ArrayLike,
    *,
    relative: bool,
    higher_is_better: bool,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Return harm, its sampling variance and the effective n (floats or arrays).

    Absolute: ``harm = s (mean_b - mean_a)``, ``s = -1`` if higher is better.
    Relative: ``harm = s (mean_b / mean_a - 1)`` with the delta-method
    variance ``var_b / (n_b mean_a^2) + mean_b^2 var_a / (n_a mean_a^4)``
    (Deng, Knoblich & Lu 2018, percent change). ``effective_n`` is the sum
    of per-unit variance terms over ``V``, as in
    :func:`analysis.confidence_sequence.two_sample_scale`.
    """
    n_a, mean_a, var_a = (
        np.asarray(v, dtype=np.float64) for v in (control_n, control_mean, control_variance)
    )
    n_b, mean_b, var_b = (
        np.asarray(v, dtype=np.float64) for v in (treatment_n, treatment_mean, treatment_variance)
    )
    sign = -1.0 if higher_is_better else 1.0
    if relative:
        if not np.all(mean_a > 0):
            raise ValueError("a relative margin needs a positive control mean")
        harm = sign * (mean_b / mean_a - 1.0)
        unit_a, unit_b = mean_b**2 * var_a / mean_a**4, var_b / mean_a**2
    else:
        harm = sign * (mean_b - mean_a)
        unit_a, unit_b = var_a, var_b
    variance = unit_a / n_a + unit_b / n_b
    with np.errstate(divide="ignore", invalid="ignore"):
        effective_n = (unit_a + unit_b) / variance
    return np.asarray(harm), np.asarray(variance), np.asarray(effective_n)


def _arm(stats: SufficientStats) -> tuple[float, float, float]:
    return float(stats.n), stats.mean, stats.variance


def _arm_arrays(
    n: npt.ArrayLike, total: npt.ArrayLike, total_squares: npt.ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    size = np.asarray(n, dtype=np.float64)
    if not np.all(size > 0):
        raise ValueError("every look needs n > 0 in both arms")
    mean = np.asarray(total, dtype=np.float64) / size
    variance = np.maximum(np.asarray(total_squares, dtype=np.float64) / size - mean**2, 0.0)
    return size, mean, variance


def _check_margin(margin: float) -> None:
    if not (math.isfinite(margin) and margin >= 0):
        raise ValueError(f"margin must be finite and >= 0; got {margin}")


def _check_same_design(
    previous: GuardrailResult,
    margin: float,
    relative: bool,
    higher_is_better: bool,
    alpha: float,
    rho: float,
) -> None:
    design = (previous.margin, previous.relative, previous.higher_is_better, previous.alpha)
    if design != (margin, relative, higher_is_better, alpha) or previous.rho != rho:
        raise ValueError("margin, direction, alpha and rho must not change between looks")
