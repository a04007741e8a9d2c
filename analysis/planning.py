"""Sample size and duration planning for two-arm comparisons.

A plan answers: how many units per arm are needed to detect a minimum detectable effect
(MDE) with a given power at a two-sided level alpha, and how many days of traffic that
takes. Fixed designs use the normal approximation; a group-sequential design needs its
fixed sample size multiplied by an inflation factor (:func:`inflate`), computed with the
same recursive integration as the boundaries (Jennison & Turnbull 2000, section 2.5) in
:mod:`analysis.inflation_factor` and re-exported here.

For m treatments against one control, plan each comparison at
``multiple_testing.bonferroni_alpha(alpha, m)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from statsmodels.stats.power import normal_sample_size_one_tail
from statsmodels.stats.proportion import samplesize_proportions_2indep_onetail

from analysis.inflation_factor import (
    classic_inflation_factor,
    final_look_mixture_inflation_factor,
    mixture_inflation_factor,
    sequential_inflation_factor,
)
from analysis.validation import (
    WEIGHT_SUM_TOLERANCE,
    check_positive,
    check_probability,
    check_weights,
)

__all__ = [
    "WEIGHT_SUM_TOLERANCE",
    "DurationEstimate",
    "SampleSizePlan",
    "classic_inflation_factor",
    "expected_duration",
    "final_look_mixture_inflation_factor",
    "inflate",
    "mixture_inflation_factor",
    "sample_size_means",
    "sample_size_proportions",
    "sequential_inflation_factor",
]


@dataclass(frozen=True)
class SampleSizePlan:
    """Units needed per arm (rounded up), for control (a) and treatment (b).

    ``n_control_exact`` is the unrounded requirement; ``inflation_factor`` is 1 for a
    fixed design and the maximum-sample-size ratio for a group-sequential one.
    """

    n_control: int
    n_treatment: int
    n_total: int
    n_control_exact: float
    effect_absolute: float
    alpha: float
    power: float
    allocation_ratio: float
    inflation_factor: float


@dataclass(frozen=True)
class DurationEstimate:
    """Days of traffic until every variant has the units it needs."""

    days: int
    days_exact: float
    units_per_day_by_variant: tuple[float, ...]
    limiting_variant: int


def sample_size_proportions(
    baseline_rate: float,
    minimum_detectable_effect: float,
    *,
    relative: bool = False,
    alpha: float = 0.05,
    power: float = 0.8,
    allocation_ratio: float = 1.0,
) -> SampleSizePlan:
    """Return the fixed-design sample size for a difference of two proportions.

    For the pooled z-test of :func:`analysis.fixed.two_proportion_z`, with
    r = n_b / n_a, p_b = p_a + delta and pbar = (p_a + r p_b) / (1 + r),

        n_a = [z_{1-alpha/2} sqrt(pbar (1 - pbar) (1 + 1/r))
               + z_{1-beta} sqrt(p_a (1 - p_a) + p_b (1 - p_b) / r)]^2 / delta^2

    (Fleiss, Levin & Paik 2003, "Statistical Methods for Rates and Proportions", 3rd ed.,
    chapter 4, without continuity correction). At r = 1 this is R's ``power.prop.test``;
    it is computed by ``statsmodels.stats.proportion.samplesize_proportions_2indep_onetail``
    (whose group 1 is the control here: ``diff = p_a - p_b``, ``ratio = r``).

    Parameters
    ----------
    baseline_rate : float
        Control rate p_a, in (0, 1).
    minimum_detectable_effect : float
        delta = p_b - p_a (or delta / p_a when ``relative``), non-zero, with p_b in (0, 1).
    relative : bool
        Read the MDE as a relative lift of the baseline.
    alpha, power : float
        Two-sided level and power, both in (0, 1).
    allocation_ratio : float
        n_treatment / n_control, > 0.
    """
    check_probability("baseline_rate", baseline_rate)
    delta = _absolute_effect(minimum_detectable_effect, baseline_rate, relative)
    treatment_rate = baseline_rate + delta
    if not 0.0 < treatment_rate < 1.0:
        raise ValueError(f"baseline + effect must lie in (0, 1), got {treatment_rate}")
    _check_levels(alpha, power)
    check_positive("allocation_ratio", allocation_ratio)
    r = float(allocation_ratio)
    n_control = float(
        samplesize_proportions_2indep_onetail(
            -delta, treatment_rate, power, ratio=r, alpha=alpha, alternative="two-sided"
        )
    )
    return _plan(n_control, delta, alpha, power, r, 1.0)


def sample_size_means(
    standard_deviation: float,
    minimum_detectable_effect: float,
    *,
    baseline_mean: float | None = None,
    relative: bool = False,
    alpha: float = 0.05,
    power: float = 0.8,
    allocation_ratio: float = 1.0,
    treatment_standard_deviation: float | None = None,
) -> SampleSizePlan:
    """Return the fixed-design sample size for a difference of two means.

    With control and treatment standard deviations sigma_a and sigma_b and r = n_b / n_a,

        n_a = (z_{1-alpha/2} + z_{1-beta})^2 (sigma_a^2 + sigma_b^2 / r) / delta^2,

    the normal approximation for the unpooled (Welch-type) z-test the decisions run (Chow,
    Shao & Wang 2008, "Sample Size Calculations in Clinical Research", 2nd ed., section
    3.2.4, unequal variances; section 3.2.1 when sigma_b = sigma_a, which gives
    sigma^2 (1 + 1/r)). Computed in closed form by
    ``statsmodels.stats.power.normal_sample_size_one_tail`` at alpha / 2 with
    ``std_null = sqrt(sigma_a^2 + sigma_b^2 / r)``. With equal deviations it equals
    ``NormalIndPower().solve_power`` with ``alternative="larger"`` at alpha / 2 (the
    two-sided version there adds the negligible opposite tail). For small samples the
    t-test needs a few units more.

    Parameters
    ----------
    standard_deviation : float
        Outcome standard deviation sigma_a of the control, > 0 (of both arms unless
        ``treatment_standard_deviation`` is given).
    minimum_detectable_effect : float
        delta = mean_b - mean_a, or a relative lift of ``baseline_mean`` when ``relative``.
    baseline_mean : float, optional
        Control mean, required (and non-zero) when ``relative``.
    relative, alpha, power, allocation_ratio
        As in :func:`sample_size_proportions`.
    treatment_standard_deviation : float, optional
        sigma_b, >= 0; default sigma_a. Under a multiplicative effect (the treatment's
        outcome is the control's times 1 + lift) it is sigma_a |1 + lift|.
    """
    check_positive("standard_deviation", standard_deviation)
    other = (
        standard_deviation if treatment_standard_deviation is None else treatment_standard_deviation
    )
    if not (math.isfinite(other) and other >= 0.0):
        raise ValueError(f"treatment_standard_deviation must be finite and >= 0, got {other}")
    if relative and (baseline_mean is None or not math.isfinite(baseline_mean)):
        raise ValueError("a relative effect needs a finite baseline_mean")
    delta = _absolute_effect(minimum_detectable_effect, baseline_mean or 0.0, relative)
    _check_levels(alpha, power)
    check_positive("allocation_ratio", allocation_ratio)
    r = float(allocation_ratio)
    n_control = float(
        normal_sample_size_one_tail(
            abs(delta), power, alpha / 2.0,
            std_null=math.sqrt(standard_deviation**2 + other**2 / r),
        )
    )  # fmt: skip
    return _plan(n_control, delta, alpha, power, r, 1.0)


def inflate(plan: SampleSizePlan, inflation_factor: float) -> SampleSizePlan:
    """Return the maximum sample size of a group-sequential design built on ``plan``."""
    if not (math.isfinite(inflation_factor) and inflation_factor >= 1.0):
        raise ValueError(f"inflation_factor must be finite and >= 1, got {inflation_factor}")
    return _plan(
        plan.n_control_exact * inflation_factor,
        plan.effect_absolute,
        plan.alpha,
        plan.power,
        plan.allocation_ratio,
        plan.inflation_factor * inflation_factor,
    )


def expected_duration(
    units_needed_by_variant: Sequence[float],
    weights: Sequence[float],
    daily_eligible_units: float,
    coverage: float = 1.0,
) -> DurationEstimate:
    """Return the days until each variant reaches its required number of units.

    Variant i receives daily_eligible_units * coverage * w_i new units a day, so it needs
    n_i / (daily * coverage * w_i) days; the experiment runs until the slowest is done.
    For a two-arm plan pass ``(plan.n_control, plan.n_treatment)``; for m treatments
    pass ``(plan.n_control,) + (plan.n_treatment,) * m``.

    Parameters
    ----------
    units_needed_by_variant : sequence of float
        Required units per variant, >= 0, in the order of ``weights``.
    weights : sequence of float
        Traffic share of each variant, positive, summing to 1 within 1e-9.
    daily_eligible_units : float
        New eligible units per day, > 0.
    coverage : float
        Share of eligible units that enter the experiment, in (0, 1].
    """
    needed = [float(n) for n in units_needed_by_variant]
    shares = [float(w) for w in weights]
    if len(needed) != len(shares) or not needed:
        raise ValueError("need one weight per variant")
    if not all(math.isfinite(n) and n >= 0.0 for n in needed):
        raise ValueError(f"units needed must be finite and >= 0, got {needed}")
    check_weights(shares)
    if not (math.isfinite(daily_eligible_units) and daily_eligible_units > 0.0):
        raise ValueError(f"daily_eligible_units must be > 0, got {daily_eligible_units}")
    if not (math.isfinite(coverage) and 0.0 < coverage <= 1.0):
        raise ValueError(f"coverage must lie in (0, 1], got {coverage}")
    per_day = [daily_eligible_units * coverage * w for w in shares]
    days_by_variant = [n / rate for n, rate in zip(needed, per_day, strict=True)]
    days_exact = max(days_by_variant)
    return DurationEstimate(
        days=_ceil(days_exact),
        days_exact=days_exact,
        units_per_day_by_variant=tuple(per_day),
        limiting_variant=days_by_variant.index(days_exact),
    )


def _plan(
    n_control: float, delta: float, alpha: float, power: float, ratio: float, inflation: float
) -> SampleSizePlan:
    control = _ceil(n_control)
    treatment = _ceil(n_control * ratio)
    return SampleSizePlan(
        n_control=control,
        n_treatment=treatment,
        n_total=control + treatment,
        n_control_exact=n_control,
        effect_absolute=delta,
        alpha=alpha,
        power=power,
        allocation_ratio=ratio,
        inflation_factor=inflation,
    )


def _ceil(value: float) -> int:
    # Round up, but not past a value that is integral up to floating-point noise.
    return math.ceil(value * (1.0 - 1e-12))


def _check_levels(alpha: float, power: float) -> None:
    check_probability("alpha", alpha)
    check_probability("power", power)


def _absolute_effect(effect: float, baseline: float, relative: bool) -> float:
    if not math.isfinite(effect) or effect == 0.0:
        raise ValueError(f"minimum_detectable_effect must be finite and non-zero, got {effect}")
    delta = effect * baseline if relative else effect
    if delta == 0.0:
        raise ValueError("a relative effect of a zero baseline is zero")
    return delta
