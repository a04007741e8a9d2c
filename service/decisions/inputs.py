"""Gather what one analysis needs from PostgreSQL and run it (shared by workers and dashboards)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from typing import Any

from analysis.sufficient_stats import SufficientStats
from service.assignment.sync import allocation_history
from service.decisions.bandit import Period
from service.decisions.drift import DriftCheck, check_drift, comparisons, group, window_starts
from service.decisions.evaluation import ExperimentAnalysis, StatsKey, analyze
from service.decisions.ratios import period_ratio, ratio_stats
from service.decisions.results import MetricMaturity, json_safe
from service.decisions.segments import analyze_segments, srm_drill_down
from service.decisions.sequential import Design, design_for
from service.decisions.store import fix_design, last_run_numbers, stored_design
from service.events.periods import period_sums, settle_guard
from service.events.segments import (
    SegmentStats,
    SegmentUnits,
    segment_stats,
    segment_units,
    segment_units_by_day,
)
from service.events.sums import (
    RatioSums,
    exposed_units,
    exposed_units_by_day,
    mature_metric_stats,
    mature_ratio_sums,
    metric_stats,
    model_health,
    ratio_parts,
    ratio_since,
    ratio_sums,
)
from service.experiments.schema import Experiment
from service.experiments.segments import CLIENT
from service.inference.sketches import load_profile, read_sketches
from service.observability import metrics
from service.settings import current_settings


def _mature_only(
    conn: Any,
    experiment: Experiment,
    units: dict[str, int],
    stats: dict[StatsKey, SufficientStats],
    through: date | None,
) -> dict[str, MetricMaturity]:
    """Replace each windowed metric's statistics by those of its mature units only.

    A variant without mature units has no statistics for that metric, so nothing compares or
    decides on it yet; its exposed units are reported as pending.
    """
    found = {}
    for metric in experiment.metrics.all_metrics():
        hours = metric.maturity_hours
        if hours is None:
            continue
        cutoff, mature_units, mature = mature_metric_stats(
            conn, experiment.key, experiment.seed, metric.name, hours, through
        )
        for variant in units:
            stats.pop((variant, metric.name), None)
            if variant in mature:
                stats[(variant, metric.name)] = mature[variant]
        found[metric.name] = MetricMaturity(
            metric.name, hours, cutoff.isoformat(),
            {v: mature_units.get(v, 0) for v in units},
            {v: n - mature_units.get(v, 0) for v, n in units.items()},
        )  # fmt: skip
    return found


def _ratio_stats(
    conn: Any, experiment: Experiment, units: dict[str, int],
    stats: dict[StatsKey, SufficientStats], through: date | None,
) -> tuple[set[str], list[str], list[str]]:  # fmt: skip
    """Put each ratio metric's linearised statistics in ``stats``; return what waits, and why.

    The first set holds the generic "no outcomes yet" lines the analysis would write for the
    variants whose ratio waits (replaced by the reason). The rollup keeps a ratio's cross
    products from its first round after the ratio appeared (``events/ratios.py``): until
    then, and as of a day before that, the ratio waits.
    """
    replaced: set[str] = set()
    waiting: list[str] = []
    sums: dict[StatsKey, RatioSums] = {}
    for metric in experiment.metrics.ratio_metrics():
        for variant in units:
            stats.pop((variant, metric.name), None)
            replaced.add(f"{metric.name}/{variant}: no outcomes yet")
        assert metric.numerator is not None and metric.denominator is not None
        since = ratio_since(conn, experiment.key, experiment.seed, metric.numerator,
                            metric.denominator)  # fmt: skip
        if since is None:
            waiting.append(f"{metric.name}: its cross products are not rolled up yet")
            continue
        if through is not None and through < since:
            waiting.append(f"{metric.name}: its cross products are kept since {since},"
                           f" after {through}")  # fmt: skip
            continue
        hours = metric.maturity_hours
        with metrics.RATIO_SUMS_DURATION.labels(experiment.key).time():
            found = (
                ratio_sums(conn, experiment.key, experiment.seed, metric.numerator,
                           metric.denominator, units, through)
                if hours is None  # a windowed ratio: its mature units only (_mature_only)
                else mature_ratio_sums(conn, experiment.key, experiment.seed, metric.numerator,
                                       metric.denominator, hours, through)
            )  # fmt: skip
        sums.update({(variant, metric.name): value for variant, value in found.items()})
    linearized, reasons, errors = ratio_stats(experiment, sums)
    stats.update(linearized)
    return replaced, waiting + reasons, errors


def drift_checks(
    conn: Any, experiment: Experiment, history_windows: int | None = None
) -> list[DriftCheck]:
    """Every drift guardrail of the policy for every treatment serving a model, as of now: one
    check per comparison its ``against`` asks for (reference profile, control, or both)."""
    guardrails = experiment.policy.drift
    if not guardrails:
        return []
    (now,) = conn.execute("SELECT now()").fetchone()
    since = min(window_starts(now, g, max(history_windows or 0, g.windows))[0] for g in guardrails)
    grouped = group(read_sketches(conn, experiment.key, since))
    # Against a reference profile every variant with one is checked, the control too.
    treatments = [
        v.key for v in experiment.variants
        if v.model is not None and (v.key != experiment.control or v.model.reference is not None)
    ]  # fmt: skip
    profiles = {}
    for variant in experiment.variants:
        if variant.model is not None and variant.model.reference is not None:
            profiles[variant.key] = load_profile(current_settings().models, variant.model.reference)
    return [
        check_drift(guardrail, variant, experiment.control, grouped, now, history_windows,
                    profiles.get(variant) if against == "reference" else None)
        for guardrail in guardrails
        for variant in treatments
        for against in comparisons(guardrail, variant, experiment.control, variant in profiles)
    ]  # fmt: skip


def bandit_periods(conn: Any, experiment: Experiment) -> list[Period]:
    """A bandit's allocation periods with their units and sums (``events.periods``).

    Units exposed within a few state polls after a switch are left out of the SRM counts:
    a process may not have switched yet (``allocation.py``; heartbeats live 10 s). Each
    ratio metric is linearised period by period (``ratios.period_ratio``); until the rollup
    keeps its cross products (``ratio_pairs``) it has no units in any period, so it waits.
    """
    guard = settle_guard(current_settings().state_poll_seconds)
    found = period_sums(
        conn, experiment.key, experiment.seed, allocation_history(conn, experiment), guard
    )
    ratios = [
        m for m in experiment.metrics.ratio_metrics()
        if m.numerator is not None and m.denominator is not None
        and ratio_since(conn, experiment.key, experiment.seed, m.numerator, m.denominator)
    ]  # fmt: skip
    periods = []
    for p in found:
        stats = dict(p.stats)
        for metric in ratios:
            assert metric.numerator is not None and metric.denominator is not None
            for variant, n in p.units.items():
                none = SufficientStats(n, 0.0, 0.0)
                stats[(variant, metric.name)] = period_ratio(
                    p.stats.get((variant, metric.numerator), none),
                    p.stats.get((variant, metric.denominator), none),
                    p.cross.get((variant, metric.numerator, metric.denominator), 0.0),
                )
        for metric in experiment.metrics.ratio_metrics():
            for variant in p.units:
                stats.setdefault((variant, metric.name), SufficientStats(0, 0.0, 0.0))
        periods.append(Period(p.weights, p.settled_units, stats, p.units))
    return periods


def _segment_ratio_stats(
    conn: Any, experiment: Experiment, units: SegmentUnits, through: date | None
) -> tuple[SegmentStats, list[str]]:
    """A ratio primary's linearised statistics per segment, and the lines of what waits."""
    metric = experiment.metrics.primary
    assert metric.numerator is not None and metric.denominator is not None
    since = ratio_since(conn, experiment.key, experiment.seed, metric.numerator,
                        metric.denominator)  # fmt: skip
    if since is None:
        return {}, [f"{metric.name}: its cross products are not rolled up yet"]
    if through is not None and through < since:
        return {}, [f"{metric.name}: its cross products are kept since {since}, after {through}"]
    parts = ratio_parts(conn, experiment.key, experiment.seed, metric.numerator,
                        metric.denominator, units, through, per_segment=True)  # fmt: skip
    stats: SegmentStats = {}
    lines: list[str] = []
    for (attribute, segment), by_variant in units.items():
        sums = {
            (variant, metric.name): parts[(attribute, segment, variant)]
            for variant in by_variant
            if (attribute, segment, variant) in parts
        }
        linearized, waiting, errors = ratio_stats(experiment, sums)
        stats[(attribute, segment)] = linearized
        lines.extend(f"{attribute}={segment}: {line}" for line in waiting + errors)
    return stats, lines


def _with_segments(
    conn: Any, experiment: Experiment, design: Design, result: ExperimentAnalysis,
    state: dict[str, Any], through: date | None,
) -> ExperimentAnalysis:  # fmt: skip
    """Add the per-segment results and, when the SRM test flags, its per-segment drill-down.

    A ratio primary is compared per segment on its linearised statistics, as the whole
    experiment's is (``ratios.py``), from the rollup's sums per segment.
    """
    if not experiment.segment_attributes:
        return result
    units = segment_units(conn, experiment.key, experiment.seed, through)
    primary = experiment.metrics.primary.name  # what the segment analysis compares
    waiting: list[str] = []
    if experiment.metrics.primary.type == "ratio":
        stats, waiting = _segment_ratio_stats(conn, experiment, units, through)
    else:
        stats = segment_stats(conn, experiment.key, experiment.seed, units, [primary], through)
    report = analyze_segments(experiment, design, units, stats)
    if report is not None:
        report.skipped.extend(waiting)
    check = result.srm
    if check is not None and check.flagged and report is not None:
        period = state.get("srm") or {}
        days = segment_units_by_day(conn, experiment.key, experiment.seed, through)
        drill = srm_drill_down([*report.attributes, CLIENT], days, check.expected_weights,
                               period.get("started_on"), design.srm_threshold,
                               design.srm_concentration)  # fmt: skip
        check = dataclasses.replace(check, segments=drill)
    return dataclasses.replace(result, srm=check, segments=report)


def run_analysis(
    conn: Any,
    experiment: Experiment,
    weights: dict[str, float],
    through: date | None = None,
    use_history: bool = True,
) -> tuple[ExperimentAnalysis, dict[str, Any]]:
    """Analyse from the rollup tables; return the analysis and the numbers to store for the next run.

    ``use_history`` is the decision cycle's look: it fixes the experiment's design at its first
    analysis and carries each test's running state over from the previous stored run (what
    keeps p-values from going up between looks). Without it (dashboards, the API) nothing is
    written: the analysis runs under the stored design and, up to now (``through`` unset),
    from the last run's state, so a page shows what the next look of the workers would.
    """
    units = exposed_units(conn, experiment.key, experiment.seed, through)
    stats = {
        (s.variant_key, s.metric): s.stats
        for s in metric_stats(conn, experiment.key, experiment.seed, through)
    }
    for variant, n in units.items():  # exposed units without any outcome count as zeros
        for metric in experiment.metrics.all_metrics():
            stats.setdefault((variant, metric.name), SufficientStats(n, 0.0, 0.0, 0.0, 0.0, 0.0))
    maturity = _mature_only(conn, experiment, units, stats, through)
    ratios, waiting, ratio_errors = _ratio_stats(conn, experiment, units, stats, through)
    if use_history:
        design = fix_design(conn, experiment)
        carried = last_run_numbers(conn, experiment).get("carried", {})
    else:
        design = stored_design(conn, experiment) or design_for(experiment)
        carried = {} if through else last_run_numbers(conn, experiment).get("carried", {})
    daily = exposed_units_by_day(conn, experiment.key, experiment.seed, through)
    health = model_health(conn, experiment.key, through)
    today = datetime.now(UTC).date()
    if through is not None:
        today = min(today, through + timedelta(days=1))
    periods = bandit_periods(conn, experiment) if design.method == "bandit" else None
    result, state = analyze(
        experiment, units, stats, weights, design=design, carried=carried,
        daily_units=daily, health=health, today=today, periods=periods or None,
    )  # fmt: skip
    result.maturity.update(maturity)
    result.skipped[:] = [line for line in result.skipped if line not in ratios] + waiting
    result.errors.extend(ratio_errors)
    result.drift.extend(drift_checks(conn, experiment))
    result = _with_segments(conn, experiment, design, result, state, through)
    numbers = json_safe(dataclasses.asdict(result))
    numbers["design"] = design.to_json()
    numbers["carried"] = json_safe(state)
    return result, numbers
