"""Evidence over time: the primary comparison as it stood at the end of each day. Pure.

Each day's point is ``service.decisions.evaluation.analyze`` (the function the decision
workers call) on the sufficient statistics summed up to that day, exactly what
``run_analysis(conn, experiment, weights, through=day, use_history=False)`` computes.
The page reads the buckets once and sums them here instead of issuing a query per day:
90 days cost two queries rather than 270 (a test checks the two agree).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta

from analysis import srm
from analysis.sufficient_stats import SufficientStats
from service.decisions.evaluation import analyze
from service.experiments.schema import Experiment, Metrics


@dataclass(frozen=True)
class MetricBucket:
    """One row of ``metric_stats``: the increments recorded on ``day``."""

    variant: str
    metric: str
    day: date
    sums: tuple[float, float, float, float, float]  # y, y², x, x², xy


@dataclass(frozen=True)
class ExposureBucket:
    """One row of ``exposure_counts``: units first exposed on ``day``."""

    variant: str
    day: date
    units: int


@dataclass(frozen=True)
class EvidencePoint:
    day: date
    variant: str
    control_units: int
    treatment_units: int
    difference: float
    ci_low: float
    ci_high: float
    lift_relative: float | None
    p_value: float | None
    p_value_adjusted: float | None
    significant: bool


@dataclass(frozen=True)
class ExposureSeries:
    """Units per variant per day (daily and cumulative) and the SRM test on each running total."""

    days: list[date]
    daily: dict[str, list[int]]
    cumulative: dict[str, list[int]]
    expected_share: dict[str, float]
    srm_p_values: list[float | None]
    """The sequential SRM test's evidence in the running totals up to each day, as
    ``min(1, 1 / e-value)`` (None: nothing to test); the decision's anytime-valid p-value
    is the running minimum of this over every look the workers took."""
    srm_daily_p_values: list[float | None]
    srm_threshold: float


def day_range(first: date, last: date) -> list[date]:
    return [first + timedelta(days=offset) for offset in range((last - first).days + 1)]


def exposure_series(
    experiment: Experiment, weights: Mapping[str, float], buckets: Iterable[ExposureBucket]
) -> ExposureSeries | None:
    """Daily and cumulative exposures, the sequential SRM test on the running totals and each
    day's own chi-square, against the weights in force."""
    rows = list(buckets)
    if not rows:
        return None
    days = day_range(min(r.day for r in rows), max(r.day for r in rows))
    index = {day: position for position, day in enumerate(days)}
    daily = {variant: [0] * len(days) for variant in experiment.variant_keys}
    for row in rows:
        daily.setdefault(row.variant, [0] * len(days))[index[row.day]] += row.units
    cumulative = {}
    for variant, counts in daily.items():
        running, total = [], 0
        for count in counts:
            total += count
            running.append(total)
        cumulative[variant] = running
    tested = [v for v in experiment.variant_keys if weights.get(v, 0.0) > 0]
    share_total = sum(weights[v] for v in tested)
    expected = {v: weights[v] / share_total for v in tested}
    threshold = experiment.policy.srm_threshold
    p_values: list[float | None] = [None] * len(days)
    daily_p: list[float | None] = [None] * len(days)
    if len(tested) >= 2:
        result = srm.srm_check_daily(
            [[daily[v][d] for v in tested] for d in range(len(days))],
            [expected[v] for v in tested],
            threshold=threshold,
        )
        shares = [expected[v] for v in tested]
        p_values = [
            None if r is None
            else math.exp(-max(srm.log_e_value(list(r.observed_counts), shares), 0.0))
            for r in result.cumulative
        ]  # fmt: skip
        daily_p = [r.p_value if r is not None else None for r in result.by_day]
    return ExposureSeries(days, daily, cumulative, expected, p_values, daily_p, threshold)


def primary_only(experiment: Experiment) -> Experiment:
    """The experiment with its primary metric alone (Holm runs over primaries only, so the
    primary comparisons are the same as in the full analysis)."""
    return experiment.model_copy(update={"metrics": Metrics(primary=experiment.metrics.primary)})


def evidence_over_time(
    experiment: Experiment,
    weights: Mapping[str, float],
    exposures: Iterable[ExposureBucket],
    metrics: Iterable[MetricBucket],
) -> list[EvidencePoint]:
    """The primary comparisons of every treatment as of the end of each day (UTC).

    None for a bandit: day sums pool its allocation periods, which its analysis never does.
    """
    if experiment.policy.method == "bandit":
        return []
    primary = experiment.metrics.primary.name
    metric_rows = [m for m in metrics if m.metric == primary]
    exposure_rows = list(exposures)
    if not metric_rows or not exposure_rows:
        return []
    first = min(min(r.day for r in exposure_rows), min(m.day for m in metric_rows))
    last = max(max(r.day for r in exposure_rows), max(m.day for m in metric_rows))
    units_by_day: dict[date, list[ExposureBucket]] = defaultdict(list)
    for row in exposure_rows:
        units_by_day[row.day].append(row)
    sums_by_day: dict[date, list[MetricBucket]] = defaultdict(list)
    for bucket in metric_rows:
        sums_by_day[bucket.day].append(bucket)
    trimmed = primary_only(experiment)
    units: dict[str, int] = defaultdict(int)
    sums: dict[str, list[float]] = {}
    points: list[EvidencePoint] = []
    for day in day_range(first, last):
        for row in units_by_day.get(day, ()):
            units[row.variant] += row.units
        for bucket in sums_by_day.get(day, ()):
            running = sums.setdefault(bucket.variant, [0.0] * 5)
            for position, value in enumerate(bucket.sums):
                running[position] += value
        stats = {
            (variant, primary): SufficientStats(units[variant], *values)
            for variant, values in sums.items()
            if units.get(variant, 0) > 0
        }
        try:
            result, _ = analyze(trimmed, dict(units), stats, weights)
        except ValueError:
            continue  # e.g. moments not yet consistent on a day with almost no data
        points.extend(
            EvidencePoint(
                day,
                c.variant,
                c.control_units,
                c.treatment_units,
                c.difference,
                c.ci_low,
                c.ci_high,
                c.lift_relative,
                c.p_value,
                c.p_value_adjusted,
                c.significant,
            )
            for c in result.primary
        )
    return points
