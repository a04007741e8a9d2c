"""``abx plan``: how many units and how many days an experiment needs.

Numbers come from ``analysis.planning``; this module only gathers the inputs:
the configured weights, the primary metric's type, and (when the caller does
not give them) the traffic and the control's baseline observed so far.

A lift on a count, continuous or ratio metric is taken as multiplicative by default (the
treatment's outcome is the control's times 1 + lift: revenue, time spent), so the
treatment's standard deviation is the control's times 1 + lift and the sample size is the
unequal-variance one (docs/statistics.md#planning-sample-size-inflation-duration).
``effect="additive"`` keeps equal variances (a shift of every outcome by the effect).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from analysis import planning
from analysis.bandit_sizing import (
    DEFAULT_PERIODS,
    DEFAULT_REPLICATES,
    BanditSampleSize,
    bandit_sample_size,
)
from analysis.inflation_factor import (
    classic_inflation_factor,
    mixture_inflation_factor,
    sequential_inflation_factor,
)
from analysis.mixture_tuning import optimal_variance_ratio
from analysis.multiple_testing import bonferroni_alpha
from service.decisions.ratios import ratio_stats
from service.events.sums import (
    exposed_units,
    exposure_days,
    metric_stats,
    ratio_since,
    ratio_sums,
)
from service.experiments.schema import Experiment

EFFECTS = ("multiplicative", "additive")


@dataclass(frozen=True)
class PlanInputs:
    minimum_detectable_effect: float
    relative: bool = False
    alpha: float = 0.05
    power: float = 0.8
    design: str = "fixed"
    """fixed; obf, pocock (classic) or spending-obf (Lan-DeMets), K equal looks; msprt,
    confidence_sequence or group_sequential (as the decisions run them); policy: the
    experiment's own ``policy.method`` (and ``policy.looks``)."""
    looks: int = 5
    baseline: float | None = None
    """Control conversion rate (binary) or mean (relative effects on means)."""
    standard_deviation: float | None = None
    daily_units: float | None = None
    """Units entering the experiment per day; observed when None."""
    effect: str = "multiplicative"
    """How a count, continuous or ratio metric's lift acts: multiplicative (the treatment's
    standard deviation is the control's times 1 + relative lift; the relative lift is the
    MDE when ``relative``, else MDE / baseline) or additive (equal standard deviations)."""


@dataclass(frozen=True)
class Plan:
    n_control: int
    n_per_treatment: int
    n_total: int
    inflation_factor: float
    alpha_per_comparison: float
    daily_units: float | None
    days: int | None
    baseline: float | None
    standard_deviation: float | None
    sources: dict[str, str]
    treatment_standard_deviation: float | None = None
    """The treatment's standard deviation the plan assumed (None for a binary metric)."""
    bandit: BanditSampleSize | None = None
    """A bandit's plan: the allocation Thompson sampling is expected to run under the
    alternative, which ``n_control``, ``n_per_treatment`` (the better arm's) and
    ``n_total`` are read from; None for a test."""
    bandit_assumption: str = ""
    """What the bandit's plan assumed, in words (``abx plan`` prints it)."""


def observed_inputs(conn: Any, experiment: Experiment) -> dict[str, float]:
    """Traffic per day and the control's mean and standard deviation, from the rollup tables."""
    found: dict[str, float] = {}
    days, units = exposure_days(conn, experiment.key, experiment.seed)
    if days:
        found["daily_units"] = units / days
    exposed = exposed_units(conn, experiment.key, experiment.seed)
    primary = experiment.metrics.primary
    if exposed.get(experiment.control) and primary.type == "ratio":
        found.update(_ratio_baseline(conn, experiment, exposed[experiment.control]))
    elif exposed.get(experiment.control):
        for item in metric_stats(conn, experiment.key, experiment.seed):
            if (
                item.variant_key == experiment.control
                and item.metric == experiment.metrics.primary.name
            ):
                found["baseline"] = item.stats.mean
                found["standard_deviation"] = item.stats.variance**0.5
    return found


def _ratio_baseline(conn: Any, experiment: Experiment, control_units: int) -> dict[str, float]:
    """A ratio primary: the control's ratio and the standard deviation of its linearised unit.

    The delta method's per-unit variance (docs/statistics.md#ratio-metrics) is what a sample
    size for a ratio needs: n units give the ratio a variance of that over n.
    """
    primary, control = experiment.metrics.primary, experiment.control
    assert primary.numerator is not None and primary.denominator is not None
    if ratio_since(conn, experiment.key, experiment.seed, primary.numerator,
                   primary.denominator) is None:  # fmt: skip
        return {}  # the rollup keeps no cross products of this ratio yet
    sums = ratio_sums(conn, experiment.key, experiment.seed, primary.numerator,
                      primary.denominator, {control: control_units})  # fmt: skip
    stats, _, _ = ratio_stats(experiment, {(v, primary.name): s for v, s in sums.items()})
    found = stats.get((control, primary.name))
    if found is None:
        return {}
    return {"baseline": found.mean, "standard_deviation": found.variance**0.5}


def make_plan(experiment: Experiment, inputs: PlanInputs, observed: dict[str, float]) -> Plan:
    sources: dict[str, str] = {}

    def pick(name: str, given: float | None) -> float | None:
        if given is not None:
            sources[name] = "given"
            return given
        if name in observed:
            sources[name] = "observed"
            return observed[name]
        return None

    binary = experiment.metrics.primary.type == "binary"
    if inputs.effect not in EFFECTS:
        raise ValueError(f"unknown effect {inputs.effect!r} (one of {', '.join(EFFECTS)})")
    multiplicative = not binary and inputs.effect == "multiplicative"
    needs_baseline = binary or inputs.relative or multiplicative
    baseline = pick("baseline", inputs.baseline) if needs_baseline else inputs.baseline
    deviation = None if binary else pick("standard_deviation", inputs.standard_deviation)
    daily = pick("daily_units", inputs.daily_units)
    weights = {v.key: v.weight for v in experiment.variants}
    treatments = [k for k in weights if k != experiment.control and weights[k] > 0]
    if not treatments or weights[experiment.control] <= 0:
        raise ValueError("the plan needs a control and at least one treatment with traffic")
    alpha = bonferroni_alpha(inputs.alpha, len(treatments)) if len(treatments) > 1 else inputs.alpha
    ratio = min(weights[t] for t in treatments) / weights[experiment.control]
    treatment_deviation: float | None = None
    if binary:
        if baseline is None:
            raise ValueError("a binary metric needs --baseline (no control data observed yet)")
        plan = planning.sample_size_proportions(
            baseline, inputs.minimum_detectable_effect, relative=inputs.relative,
            alpha=alpha, power=inputs.power, allocation_ratio=ratio,
        )  # fmt: skip
    else:
        if deviation is None:
            raise ValueError(
                "a count or continuous metric needs --sd (no control data observed yet)"
            )
        treatment_deviation = _treatment_deviation(inputs, deviation, baseline, sources)
        plan = planning.sample_size_means(
            deviation, inputs.minimum_detectable_effect, baseline_mean=baseline,
            relative=inputs.relative, alpha=alpha, power=inputs.power, allocation_ratio=ratio,
            treatment_standard_deviation=treatment_deviation,
        )  # fmt: skip
    inflation = 1.0
    design, looks = inputs.design, inputs.looks
    if design == "policy":
        design, looks = experiment.policy.method, experiment.policy.looks
    if design == "group_sequential":
        design = "spending-obf"
    is_bandit = design == "bandit"
    if is_bandit:  # its comparison runs under the confidence sequence
        design = "confidence_sequence"
    if design == "msprt":  # tuned at the family's alpha; Holm's first step rejects at alpha / m
        inflation = mixture_inflation_factor(
            alpha, inputs.power, variance_ratio=optimal_variance_ratio(inputs.alpha)
        )
    elif design == "confidence_sequence":  # tuned and tested at alpha / m (Bonferroni)
        inflation = mixture_inflation_factor(alpha, inputs.power)
    elif design in ("obf", "pocock"):
        inflation = classic_inflation_factor(looks, alpha=alpha, power=inputs.power, kind=design)
    elif design == "spending-obf":
        fractions = [(i + 1) / looks for i in range(looks)]
        inflation = sequential_inflation_factor(fractions, alpha=alpha, power=inputs.power)
    elif design != "fixed":
        raise ValueError(f"unknown design {inputs.design!r}")
    if is_bandit:
        return _bandit_plan(
            experiment, inputs, plan, inflation, alpha, daily, baseline, deviation,
            treatment_deviation, sources,
        )  # fmt: skip
    if inflation > 1.0:
        plan = planning.inflate(plan, inflation)
    needed = [plan.n_control if k == experiment.control else plan.n_treatment for k in weights]
    days = None
    if daily is not None:
        positive = [(n, w) for n, w in zip(needed, weights.values(), strict=True) if w > 0]
        duration = planning.expected_duration(
            [n for n, _ in positive], [w / sum(w for _, w in positive) for _, w in positive],
            daily * sum(w for _, w in positive),
        )  # fmt: skip
        days = duration.days
    return Plan(
        plan.n_control, plan.n_treatment, plan.n_control + plan.n_treatment * len(treatments),
        inflation, alpha, daily, days, baseline, deviation, sources,
        treatment_deviation,
    )  # fmt: skip


def bandit_periods(experiment: Experiment) -> int:
    """Re-weightings the plan simulates: the horizon's, at most one per
    ``min_hours_between_moves``, capped at ``BANDIT_MAX_PERIODS``; else the default."""
    policy = experiment.policy
    move_hours = policy.bandit_settings.min_hours_between_moves
    if policy.horizon_days is None:
        return DEFAULT_PERIODS
    if move_hours <= 0:  # a move at every analysis: as fine as the cap allows
        return BANDIT_MAX_PERIODS
    return max(1, min(BANDIT_MAX_PERIODS, round(policy.horizon_days * 24 / move_hours)))


BANDIT_MAX_PERIODS = 48
"""Finer re-weighting moves the plan by about a point of power at most (docs/statistics.md,
"Planning a bandit"), and each period costs the simulation time."""


def _bandit_plan(
    experiment: Experiment, inputs: PlanInputs, fixed: planning.SampleSizePlan,
    inflation: float, alpha: float, daily: float | None, baseline: float | None,
    deviation: float | None, treatment_deviation: float | None, sources: dict[str, str],
) -> Plan:  # fmt: skip
    """Size a bandit for the allocation Thompson sampling runs when one arm is better.

    The treatment with the smallest configured weight is given the MDE, the others none
    (the alternative the plan is for); ``analysis.bandit_sizing`` simulates the weights
    and finds the total units at which the period-stratified comparison of that arm with
    the control has the power, under the confidence sequence at the comparison's level.
    """
    settings = experiment.policy.bandit_settings
    keys = [v.key for v in experiment.variants if v.weight > 0]
    keys.remove(experiment.control)
    keys.insert(0, experiment.control)
    weights = {v.key: v.weight for v in experiment.variants}
    total_weight = sum(weights[k] for k in keys)
    best = min(range(1, len(keys)), key=lambda i: (weights[keys[i]], -i))
    delta = fixed.effect_absolute
    if (delta > 0) != (experiment.metrics.primary.direction == "increase"):
        raise ValueError(
            f"a bandit is planned for an arm better by the MDE: give it in the direction of "
            f"{experiment.metrics.primary.name} ({experiment.metrics.primary.direction}), "
            f"got {inputs.minimum_detectable_effect:g}"
        )
    if experiment.metrics.primary.type == "binary":
        assert baseline is not None
        control_mean, control_variance = baseline, baseline * (1.0 - baseline)
        treated_variance = (baseline + delta) * (1.0 - baseline - delta)
    else:
        assert deviation is not None and treatment_deviation is not None
        control_mean, control_variance = baseline or 0.0, deviation**2
        treated_variance = treatment_deviation**2
    means = [control_mean] * len(keys)
    means[best] = control_mean + delta
    variances = [control_variance] * len(keys)
    variances[best] = treated_variance
    control_floor = max(settings.control_floor, settings.arm_floor)
    periods = bandit_periods(experiment)
    sized = bandit_sample_size(
        means, variances, [weights[k] / total_weight for k in keys],
        [control_floor] + [settings.arm_floor] * (len(keys) - 1), best=best,
        binary=experiment.metrics.primary.type == "binary", alpha=alpha, power=inputs.power,
        inflation_factor=inflation,
        higher_is_better=experiment.metrics.primary.direction == "increase",
        periods=periods, min_units=settings.min_units,
    )  # fmt: skip
    others = [n for i, n in enumerate(sized.units_by_arm) if i not in (0, best)]
    assumption = (
        f"Thompson sampling's allocation with {keys[best]} better by the MDE and "
        f"{'the other treatments equal to the control' if others else 'no other treatment'}: "
        f"{periods} re-weightings over the planned units (floors: control "
        f"{control_floor:g}, arms {settings.arm_floor:g}), mean power over "
        f"{DEFAULT_REPLICATES} simulated weight paths; expected shares "
        + ", ".join(f"{k} {s:.3f}" for k, s in zip(keys, sized.share_by_arm, strict=True))
        + f"; at the configured weights held fixed: {sized.fixed_total_units} units in all"
    )
    days = None if daily is None else math.ceil(sized.total_units / daily * (1.0 - 1e-12))
    return Plan(
        sized.units_by_arm[0], sized.units_by_arm[best], sized.total_units, inflation, alpha,
        daily, days, baseline, deviation, sources, treatment_deviation, sized, assumption,
    )  # fmt: skip


def _treatment_deviation(
    inputs: PlanInputs, deviation: float, baseline: float | None, sources: dict[str, str]
) -> float:
    """The treatment's standard deviation under the plan's effect model.

    Multiplicative: sigma (1 + lift) with the relative lift known (the MDE when relative,
    else MDE / baseline). Without a baseline an absolute MDE's relative lift is unknown, and
    the plan falls back to equal deviations, which the sources say.
    """
    if inputs.effect == "additive":
        sources["treatment_standard_deviation"] = "equal (additive effect)"
        return deviation
    if inputs.relative:
        lift = inputs.minimum_detectable_effect
    elif baseline:
        lift = inputs.minimum_detectable_effect / baseline
    else:
        sources["treatment_standard_deviation"] = (
            "equal: no baseline, so the relative lift of a multiplicative effect is unknown"
        )
        return deviation
    if not (math.isfinite(lift) and lift > -1.0):
        raise ValueError(f"a multiplicative effect must be a lift above -100 %, got {lift:g}")
    sources["treatment_standard_deviation"] = f"control x (1 + lift {lift:g}), multiplicative"
    return deviation * (1.0 + lift)


def underpowered(experiment: Experiment) -> str | None:
    """Say so when ``planned_units`` gives the policy's own method less than its power.

    Checked only where the policy gives what the sample size needs: ``expected_effect`` and
    the primary metric's ``baseline`` (binary) or ``standard_deviation``. None when enough.
    """
    policy = experiment.policy
    binary = experiment.metrics.primary.type == "binary"
    if policy.expected_effect is None or (
        policy.baseline is None if binary else policy.standard_deviation is None
    ):
        return None
    inputs = PlanInputs(
        minimum_detectable_effect=policy.expected_effect, alpha=policy.alpha,
        power=policy.power, design="policy", baseline=policy.baseline,
        standard_deviation=policy.standard_deviation,
    )  # fmt: skip
    try:
        plan = make_plan(experiment, inputs, {})
    except ValueError:  # no treatment with traffic, or a method with no sample-size formula
        return None
    if plan.bandit is not None:
        return _bandit_underpowered(experiment, plan)
    needed = max(plan.n_control, plan.n_per_treatment)
    if needed <= policy.planned_units:
        return None
    return (
        f"{policy.method} needs {needed} units per variant for power {policy.power:g} at "
        f"expected_effect {policy.expected_effect:g}; planned_units is {policy.planned_units} "
        f"(raise it, or expect less power)"
    )


def planned_bandit_units(experiment: Experiment) -> int:
    """A bandit's planned traffic: ``planned_units`` for each arm with traffic, in all.

    ``planned_units`` is per variant at the configured weights; a bandit moves them, so
    what its plan is checked against is the traffic those units add up to.
    """
    return experiment.policy.planned_units * sum(1 for v in experiment.variants if v.weight > 0)


def _bandit_underpowered(experiment: Experiment, plan: Plan) -> str | None:
    policy = experiment.policy
    planned = planned_bandit_units(experiment)
    if plan.n_total <= planned:
        return None
    return (
        f"bandit needs {plan.n_total} units in all (Thompson sampling's expected allocation) "
        f"for power {policy.power:g} at expected_effect {policy.expected_effect:g}; "
        f"planned_units {policy.planned_units} per arm is {planned} "
        f"(raise it, or expect less power)"
    )
