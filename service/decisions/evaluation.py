"""One look at one experiment: every comparison the decision rules and dashboards need. Pure.

Numbers in (per-variant sufficient statistics, exposed units), numbers out;
the statistics themselves are ``analysis/``'s. Dashboards call this same
function, so a page never shows a number the decision did not use.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from datetime import date

from analysis import confidence_sequence, cuped, guardrails, msprt, srm
from analysis.group_sequential import boundary_at_look
from analysis.mixture_tuning import tau2_for_horizon, tau2_from_expected_effect
from analysis.multiple_testing import holm
from analysis.sufficient_stats import SufficientStats
from service.decisions.model_health import (
    MODEL_FALLBACK_RATE,
    MODEL_LATENCY_P99,
    model_guardrail,
)
from service.decisions.results import Comparison, ExperimentAnalysis, GuardrailCheck, SrmCheck
from service.events.sums import ModelHealth
from service.experiments.schema import Experiment, Metric

StatsKey = tuple[str, str]  # variant, metric
__all__ = ["Comparison", "ExperimentAnalysis", "GuardrailCheck", "SrmCheck", "StatsKey", "analyze"]


def _srm(
    experiment: Experiment,
    units: Mapping[str, int],
    weights: Mapping[str, float],
    daily: Mapping[date, Mapping[str, int]],
) -> SrmCheck | None:
    keys = [v.key for v in experiment.variants if weights.get(v.key, 0.0) > 0]
    observed = [units.get(key, 0) for key in keys]
    if len(keys) < 2 or sum(observed) == 0:
        return None
    total = sum(weights[key] for key in keys)
    shares = [weights[key] / total for key in keys]
    threshold = experiment.policy.srm_threshold
    result = srm.srm_check(observed, shares, threshold=threshold)
    days = sorted(daily)
    flagged_days: list[str] = []
    if days:
        by_day = srm.srm_check_daily(
            [[daily[d].get(k, 0) for k in keys] for d in days], shares, threshold
        )
        flagged_days = [days[i].isoformat() for i in by_day.flagged_days]
    return SrmCheck(result.p_value, result.flagged or bool(flagged_days), threshold,
                    dict(zip(keys, observed, strict=True)), dict(zip(keys, shares, strict=True)),
                    flagged_days)  # fmt: skip


def _compare(
    experiment: Experiment, metric: Metric, control: SufficientStats, treatment: SufficientStats,
    variant: str, previous: msprt.MsprtResult | None, looks_so_far: list[float],
) -> tuple[Comparison, msprt.MsprtResult | None]:  # fmt: skip
    policy = experiment.policy
    difference = treatment.mean - control.mean
    variance = treatment.variance_of_mean + control.variance_of_mean
    if not variance > 0:
        raise ValueError("no variance in either arm yet (e.g. no conversions): wait for more data")
    reduction, used_cuped = 0.0, False
    if control.covariate_total is not None and treatment.covariate_total is not None:
        try:
            adjusted = cuped.compare(control, treatment)
        except ValueError:
            adjusted = None
        if adjusted is not None and 0 < adjusted.difference_variance < variance:
            difference, variance = adjusted.difference, adjusted.difference_variance
            reduction, used_cuped = adjusted.variance_reduction, True
    state: msprt.MsprtResult | None = None
    p_value: float | None
    if policy.method == "msprt":
        tau2 = (
            tau2_from_expected_effect(policy.expected_effect)
            if policy.expected_effect and metric.name == experiment.metrics.primary.name
            else tau2_for_horizon(
                variance * min(control.n, treatment.n) / policy.planned_units, policy.alpha
            )
        )
        state = msprt.msprt_look(difference, variance, tau2, policy.alpha, previous)
        low, high, p_value, significant = (
            state.ci_low,
            state.ci_high,
            state.p_value_always_valid,
            state.significant,
        )
    elif policy.method == "confidence_sequence":
        interval = confidence_sequence.interval(
            difference, variance, (control.variance + treatment.variance) / variance,
            alpha=policy.alpha, planned_n=policy.planned_units,
        )  # fmt: skip
        low, high, p_value, significant = (
            interval.ci_low,
            interval.ci_high,
            None,
            interval.excludes(0.0),
        )
    else:
        # Formal looks only when information reaches the next planned fraction k/K.
        information_max = policy.planned_units / (control.variance + treatment.variance)
        fraction = min(1.0, (1.0 / variance) / information_max)
        due = fraction >= (len(looks_so_far) + 1) / policy.looks or fraction >= 1.0
        information = [*looks_so_far, 1.0 / variance] if due else looks_so_far
        p_value = None
        looks_taken = tuple(information)
        if not information:
            low, high, significant = -math.inf, math.inf, False
        else:
            look = boundary_at_look(
                information, information_max, policy.alpha, final=fraction >= 1.0
            )
            half = look.z_critical * math.sqrt(variance)
            low, high = difference - half, difference + half
            significant = due and abs(difference) / math.sqrt(variance) >= look.z_critical
    if policy.method != "group_sequential":
        looks_taken = ()
    higher_is_better = metric.direction == "increase"
    better = None if not significant else (difference > 0) == higher_is_better
    lift = difference / control.mean if control.mean != 0 else None
    return (
        Comparison(metric.name, variant, control.n, treatment.n, control.mean, treatment.mean, difference,
                   lift, low, high, p_value, p_value, significant, better, used_cuped, reduction, policy.method,
                   looks_taken),
        state,
    )  # fmt: skip


def analyze(
    experiment: Experiment,
    units: Mapping[str, int],
    stats: Mapping[StatsKey, SufficientStats],
    weights: Mapping[str, float],
    previous: Mapping[StatsKey, msprt.MsprtResult] | None = None,
    looks_so_far: list[float] | None = None,
    daily_units: Mapping[date, Mapping[str, int]] | None = None,
    health: Mapping[str, ModelHealth] | None = None,
) -> tuple[ExperimentAnalysis, dict[StatsKey, msprt.MsprtResult]]:
    """Compare every treatment with the control on every metric; return the new mSPRT states too."""
    previous = previous or {}
    control = experiment.control
    treatments = [v.key for v in experiment.variants if v.key != control and units.get(v.key)]
    result = ExperimentAnalysis(experiment.key, experiment.seed, experiment.policy.method,
                                experiment.policy.alpha, dict(units),
                                _srm(experiment, units, weights, daily_units or {}))  # fmt: skip
    states: dict[StatsKey, msprt.MsprtResult] = {}
    metrics = experiment.metrics
    for metric, target in [(metrics.primary, result.primary)] + [
        (m, result.secondary) for m in metrics.secondary
    ]:
        for variant in treatments:
            base, other = stats.get((control, metric.name)), stats.get((variant, metric.name))
            if base is None or other is None:
                result.skipped.append(f"{metric.name}/{variant}: no outcomes yet")
                continue
            try:
                comparison, state = _compare(experiment, metric, base, other, variant,
                                             previous.get((variant, metric.name)), looks_so_far or [])  # fmt: skip
            except ValueError as error:
                result.skipped.append(f"{metric.name}/{variant}: {error}")
                continue
            target.append(comparison)
            if state is not None:
                states[(variant, metric.name)] = state
    _adjust_primary(result)
    for guardrail in metrics.guardrails:
        if guardrail.name in (MODEL_FALLBACK_RATE, MODEL_LATENCY_P99):
            for variant in treatments:
                found = model_guardrail(guardrail, variant, control, health or {},
                                         experiment.policy.alpha, experiment.policy.planned_units)  # fmt: skip
                if isinstance(found, str):
                    result.skipped.append(found)
                else:
                    result.guardrails.append(found)
            continue
        for variant in treatments:
            base, other = stats.get((control, guardrail.name)), stats.get((variant, guardrail.name))
            if base is None or other is None:
                result.skipped.append(f"{guardrail.name}/{variant}: no outcomes yet")
                continue
            try:
                check = guardrails.check_guardrail(
                    base, other, margin=guardrail.margin, relative=guardrail.margin_type == "relative",
                    higher_is_better=guardrail.direction == "increase", alpha=experiment.policy.alpha,
                    planned_n=experiment.policy.planned_units,
                )  # fmt: skip
            except ValueError as error:
                result.skipped.append(f"{guardrail.name}/{variant}: {error}")
                continue
            result.guardrails.append(GuardrailCheck(guardrail.name, variant, check.breached, check.holds, check.harm,
                                                    check.harm_lower_bound, check.harm_upper_bound, check.margin,
                                                    check.relative))  # fmt: skip
    return result, states


def _adjust_primary(result: ExperimentAnalysis) -> None:
    """Holm across the treatments' primary comparisons (family-wise error at alpha).

    A Holm rejection implies the unadjusted test rejected too, so a comparison's
    direction (``better``) carries over unchanged when it stays significant.
    """
    with_p = [(i, c) for i, c in enumerate(result.primary) if c.p_value is not None]
    if len(with_p) < 2:
        return
    adjusted = holm([c.p_value for _, c in with_p if c.p_value is not None], alpha=result.alpha)
    for position, (index, comparison) in enumerate(with_p):
        significant = bool(adjusted.reject[position])
        result.primary[index] = replace(
            comparison,
            p_value_adjusted=float(adjusted.p_values_adjusted[position]),
            significant=significant,
            better=comparison.better if significant else None,
        )
