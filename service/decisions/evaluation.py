"""One look at one experiment: every comparison the decision rules and dashboards need. Pure.

Numbers in (per-variant sufficient statistics, exposed units), numbers out;
the statistics themselves are ``analysis/``'s. Dashboards call this same
function, so a page never shows a number the decision did not use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import date

from analysis import cuped, guardrails, srm
from analysis.mixture_tuning import tau2_from_expected_effect
from analysis.multiple_testing import holm
from analysis.sufficient_stats import SufficientStats
from service.decisions import bandit
from service.decisions.model_health import (
    MODEL_FALLBACK_RATE,
    MODEL_LATENCY_P99,
    model_guardrail,
)
from service.decisions.results import Comparison, ExperimentAnalysis, GuardrailCheck, SrmCheck
from service.decisions.sequential import (
    Carried,
    Design,
    design_for,
    group_sequential_look,
    information,
    mixture_look,
)
from service.events.sums import ModelHealth
from service.experiments.schema import Experiment, Metric

StatsKey = tuple[str, str]  # variant, metric
__all__ = [
    "Comparison",
    "ExperimentAnalysis",
    "GuardrailCheck",
    "SrmCheck",
    "SrmPeriod",
    "StatsKey",
    "analyze",
    "srm_check_of",
    "srm_day_flagged",
    "srm_look",
    "srm_period",
]
WEIGHT_TOLERANCE = 1e-9


class NotYet(Exception):
    """Not decidable yet (no outcomes, no variance): wait for data, not an error."""


@dataclass(frozen=True)
class SrmPeriod:
    """The anytime-valid SRM test of the current allocation period after one look."""

    keys: list[str]
    """The variants with weight in force, in the order of ``shares``."""
    shares: dict[str, float]
    result: srm.SequentialSrmResult
    started_on: str | None
    """The day the current period began (None: the first period); days after it are its own."""
    state: Carried


def srm_period(
    design: Design, units: Mapping[str, int], weights: Mapping[str, float],
    carried: Carried | None, today: date | None,
) -> SrmPeriod | None:  # fmt: skip
    """The anytime-valid SRM test on the cumulative counts of each allocation period.

    A change of the weights in force (a YAML edit, a rolled-back variant) closes the period:
    its final log e-value is kept and a new one starts from the counts of the last look.
    None when fewer than two variants have weight or no unit has arrived.
    """
    keys = [key for key, w in weights.items() if w > 0]
    if len(keys) < 2 or sum(units.get(key, 0) for key in keys) == 0:
        return None
    total = sum(weights[key] for key in keys)
    shares = {key: weights[key] / total for key in keys}
    closed, started_on = 0.0, None
    start = {key: 0 for key in keys}
    if carried:
        old = {str(k): float(v) for k, v in carried["weights"].items()}
        same = old.keys() == shares.keys() and all(
            abs(old[k] - shares[k]) <= WEIGHT_TOLERANCE for k in keys
        )
        last = {str(k): int(v) for k, v in carried["last"].items()}
        closed = float(carried["closed_log_e"])
        if same:
            start = {key: int(carried["start"].get(key, 0)) for key in keys}
            started_on = carried.get("started_on")
        else:
            ended = [last.get(k, 0) - int(carried["start"].get(k, 0)) for k in old]
            if sum(ended) > 0:
                closed += srm.log_e_value(ended, list(old.values()), design.srm_concentration)
            start = {key: last.get(key, units.get(key, 0)) for key in keys}
            started_on = today.isoformat() if today else None
    counts = [max(units.get(key, 0) - start[key], 0) for key in keys]
    result = srm.sequential_srm(
        counts, [shares[k] for k in keys], design.srm_threshold,
        concentration=design.srm_concentration, closed_log_e_value=closed,
        previous_max_log_e_value=float(carried["max_log_e"]) if carried else 0.0,
    )  # fmt: skip
    state = {"weights": shares, "start": start, "last": {k: units.get(k, 0) for k in keys},
             "closed_log_e": closed, "max_log_e": result.max_log_e_value,
             "started_on": started_on}  # fmt: skip
    return SrmPeriod(keys, shares, result, started_on, state)


def srm_day_flagged(
    design: Design, period: SrmPeriod, day: date, day_number: int, counts: Mapping[str, int]
) -> bool:
    """Whether one completed day of the current period fails its own chi-square test.

    ``day_number`` is the day's 1-based position among the experiment's days; its test runs
    at its share of a second budget of ``srm_threshold`` (``srm.daily_threshold``). A day
    before the period began, or without units, is not tested. Nothing here reads a later
    look: once a day is complete, its answer stays the same while the period lasts.
    """
    if period.started_on is not None and day.isoformat() <= period.started_on:
        return False
    observed = [counts.get(k, 0) for k in period.keys]
    if sum(observed) == 0:
        return False
    threshold = srm.daily_threshold(design.srm_threshold, day_number)
    return srm.srm_check(observed, [period.shares[k] for k in period.keys], threshold).flagged


def srm_look(
    design: Design, units: Mapping[str, int], weights: Mapping[str, float],
    daily: Mapping[date, Mapping[str, int]], carried: Carried | None, today: date | None,
) -> tuple[SrmCheck | None, Carried | None]:  # fmt: skip
    """The SRM check of one look: :func:`srm_period`, and each completed day of the period.

    Per-day chi-square tests run on completed days of the current period only, each at
    its share of a second budget of ``srm_threshold`` (:func:`srm_day_flagged`).
    """
    period = srm_period(design, units, weights, carried, today)
    if period is None:
        return None, carried
    flagged_days = [
        day.isoformat()
        for number, day in enumerate(sorted(daily), start=1)
        if (today is None or day < today)
        and srm_day_flagged(design, period, day, number, daily[day])
    ]
    return srm_check_of(period, units, flagged_days), period.state


def srm_check_of(period: SrmPeriod, units: Mapping[str, int], flagged_days: list[str]) -> SrmCheck:
    """The check the rules read: flagged by the period's test or by any completed day."""
    result = period.result
    return SrmCheck(result.p_value_always_valid, result.flagged or bool(flagged_days),
                    result.threshold, {k: units.get(k, 0) for k in period.keys}, period.shares,
                    flagged_days, result.log_e_value)  # fmt: skip


def _compare(
    experiment: Experiment, design: Design, metric: Metric, control: SufficientStats,
    treatment: SufficientStats, variant: str, carried: Carried | None,
) -> tuple[Comparison, Carried]:  # fmt: skip
    difference = treatment.mean - control.mean
    variance = treatment.variance_of_mean + control.variance_of_mean
    if not variance > 0:
        raise NotYet("no variance in either arm yet (e.g. no conversions): wait for more data")
    reduction, used_cuped = 0.0, False
    if control.covariate_total is not None and treatment.covariate_total is not None:
        try:
            adjusted = cuped.compare(control, treatment)
        except ValueError:
            adjusted = None
        if adjusted is not None and 0 < adjusted.difference_variance < variance:
            difference, variance = adjusted.difference, adjusted.difference_variance
            reduction, used_cuped = adjusted.variance_reduction, True
    units = information(control.n, treatment.n)
    if design.method == "group_sequential":
        look, state = group_sequential_look(design, difference, variance, units, carried)
    else:
        tau2 = None  # the standardized mixture, fixed by the design
        primary = metric.name == experiment.metrics.primary.name
        if design.method == "msprt" and design.expected_effect is not None and primary:
            tau2 = tau2_from_expected_effect(design.expected_effect)  # in the metric's units
        look, state = mixture_look(design, difference, variance, units, tau2, carried)
    higher_is_better = metric.direction == "increase"
    better = None if not look.significant else (look.estimate > 0) == higher_is_better
    lift = difference / control.mean if control.mean != 0 else None
    return (
        Comparison(metric.name, variant, control.n, treatment.n, control.mean, treatment.mean, difference,
                   lift, look.ci_low, look.ci_high, look.p_value, look.p_value, look.significant, better,
                   used_cuped, reduction, design.method, look.information_looks, look.z_critical),
        state,
    )  # fmt: skip


def analyze(
    experiment: Experiment,
    units: Mapping[str, int],
    stats: Mapping[StatsKey, SufficientStats],
    weights: Mapping[str, float],
    *,
    design: Design | None = None,
    carried: Carried | None = None,
    daily_units: Mapping[date, Mapping[str, int]] | None = None,
    health: Mapping[str, ModelHealth] | None = None,
    today: date | None = None,
    periods: Sequence[bandit.Period] | None = None,
) -> tuple[ExperimentAnalysis, Carried]:
    """Compare every treatment with the control on every metric; return what the next look needs.

    ``design`` is the experiment's stored design (:func:`design_for` when absent: a
    what-if analysis); ``carried`` what the previous look returned. ``today`` marks the
    days still filling (no per-day SRM test on them). A comparison that waits for data is
    listed in ``skipped``; one that cannot be computed for any other reason in ``errors``.
    A bandit's comparisons and SRM test go by allocation period (``periods``; one period of
    the pooled sums when absent), see ``bandit.py``.
    """
    design = design or design_for(experiment)
    if design.method == "bandit" and periods is None:
        periods = [bandit.Period(weights, units, stats, units)]
    carried = carried or {}
    previous: dict[str, Carried] = carried.get("comparisons", {})
    control = experiment.control
    treatments = [v.key for v in experiment.variants if v.key != control and units.get(v.key)]
    if periods is not None:
        active = [k for k, w in weights.items() if w > 0]
        srm_check, srm_state = bandit.period_srm(design, periods, active, carried.get("srm"))
    else:
        srm_check, srm_state = srm_look(
            design, units, weights, daily_units or {}, carried.get("srm"), today
        )
    result = ExperimentAnalysis(experiment.key, experiment.seed, design.method, design.alpha,
                                dict(units), srm_check)  # fmt: skip
    states: dict[str, Carried] = {}
    metrics = experiment.metrics
    for metric, target in [(metrics.primary, result.primary)] + [
        (m, result.secondary) for m in metrics.secondary
    ]:
        for variant in treatments:
            name = f"{variant}/{metric.name}"
            base, other = stats.get((control, metric.name)), stats.get((variant, metric.name))
            if name in previous:
                states[name] = previous[name]  # kept when this look cannot be taken
            if base is None or other is None:
                result.skipped.append(f"{metric.name}/{variant}: no outcomes yet")
                continue
            try:
                if periods is not None:
                    comparison, state = bandit.compare(
                        design, metric, control, variant, periods, previous.get(name)
                    )
                else:
                    comparison, state = _compare(
                        experiment, design, metric, base, other, variant, previous.get(name)
                    )
            except (NotYet, bandit.WaitForData) as waiting:
                result.skipped.append(f"{metric.name}/{variant}: {waiting}")
                continue
            except (ValueError, ArithmeticError) as error:
                result.errors.append(f"{metric.name}/{variant}: {error}")
                continue
            target.append(comparison)
            states[name] = state
    _adjust_primary(result, design)
    _guardrails(experiment, design, treatments, stats, health or {}, result, periods)
    return result, {"comparisons": states, "srm": srm_state, "design_version": design.version}


def _guardrails(
    experiment: Experiment, design: Design, treatments: list[str],
    stats: Mapping[StatsKey, SufficientStats], health: Mapping[str, ModelHealth],
    result: ExperimentAnalysis, periods: Sequence[bandit.Period] | None = None,
) -> None:  # fmt: skip
    control = experiment.control
    for guardrail in experiment.metrics.guardrails:
        if guardrail.name in (MODEL_FALLBACK_RATE, MODEL_LATENCY_P99):
            for variant in treatments:
                try:
                    found = model_guardrail(guardrail, variant, control, health,
                                            design.alpha, design.planned_units)  # fmt: skip
                except (ValueError, ArithmeticError) as error:  # e.g. relative, control at 0
                    result.errors.append(f"{guardrail.name}/{variant}: {error}")
                    continue
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
            if base.variance <= 0 and other.variance <= 0:
                result.skipped.append(f"{guardrail.name}/{variant}: no variance in either arm yet")
                continue
            if periods is not None:  # a bandit: stratified by allocation period
                try:
                    result.guardrails.append(
                        bandit.guardrail_check(design, guardrail, control, variant, periods)
                    )
                except bandit.WaitForData as waiting:
                    result.skipped.append(f"{guardrail.name}/{variant}: {waiting}")
                except (ValueError, ArithmeticError) as error:
                    result.errors.append(f"{guardrail.name}/{variant}: {error}")
                continue
            try:
                check = guardrails.check_guardrail(
                    base, other, margin=guardrail.margin, relative=guardrail.margin_type == "relative",
                    higher_is_better=guardrail.direction == "increase", alpha=design.alpha,
                    planned_n=design.planned_units,
                )  # fmt: skip
            except (ValueError, ArithmeticError) as error:
                result.errors.append(f"{guardrail.name}/{variant}: {error}")
                continue
            result.guardrails.append(GuardrailCheck(guardrail.name, variant, check.breached, check.holds, check.harm,
                                                    check.harm_lower_bound, check.harm_upper_bound, check.margin,
                                                    check.relative))  # fmt: skip


def _adjust_primary(result: ExperimentAnalysis, design: Design) -> None:
    """Family-wise error across the treatments' primary comparisons, for every method.

    mSPRT: Holm on the always-valid p-values (valid at every look, since each p-value is).
    Confidence sequences and group-sequential boundaries already run at alpha / m (the
    design's Bonferroni split); the confidence sequence's p-value is shown adjusted by m.
    A Holm rejection implies the unadjusted test rejected too, so a comparison's
    direction (``better``) carries over unchanged when it stays significant.
    """
    if design.method == "confidence_sequence":
        for index, comparison in enumerate(result.primary):
            if comparison.p_value is not None:
                adjusted_p = min(1.0, comparison.p_value * design.treatments)
                result.primary[index] = replace(comparison, p_value_adjusted=adjusted_p)
        return
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
