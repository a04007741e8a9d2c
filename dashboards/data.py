"""Everything a dashboard page shows, read from PostgreSQL's rollup tables in one place.

The per-variant table is ``service.decisions.inputs.run_analysis`` (what the decision
workers and ``GET /v1/experiments/<key>/analysis`` run), so a page never shows a number
the decisions did not use. Cost: a handful of queries over (variants x metrics x days)
bucket rows plus a bounded read of recent predictions, never a scan of raw events. Model
lineage is one grouped read of ``predictions`` joined with the registry versions loaded
(``records.experiment_lineage``, the API's).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from dashboards.evidence import (
    EvidencePoint,
    ExposureBucket,
    ExposureSeries,
    MetricBucket,
    evidence_over_time,
    exposure_series,
)
from dashboards.sample_size import SampleSize, sample_size
from service.assignment.state import ServingState, initial_state, serving_state
from service.decisions.drift import DriftCheck
from service.decisions.evaluation import Comparison, ExperimentAnalysis
from service.decisions.graduation import GraduationCheck
from service.decisions.inputs import drift_checks, run_analysis
from service.decisions.shadows import graduation_checks
from service.decisions.store import DecisionRecord, decision_log, last_analysis_at
from service.events.sums import exposure_buckets, metric_buckets
from service.experiments.schema import Experiment
from service.inference.records import (
    VariantHealth,
    VariantLineage,
    experiment_lineage,
    recent_health,
    shadow_reports,
)
from service.inference.shadow_report import ShadowReport


@dataclass(frozen=True)
class ExperimentPage:
    experiment: Experiment
    weights: dict[str, float]
    generated_at: datetime
    analysis: ExperimentAnalysis
    evidence: list[EvidencePoint]
    exposures: ExposureSeries | None
    health: list[VariantHealth]
    decisions: list[DecisionRecord]
    state: ServingState | None
    last_analysis_at: datetime | None
    sample_size: SampleSize
    days_running: int
    state_name: str
    drift: list[DriftCheck] = field(default_factory=list)
    """Drift guardrails with their last ``DRIFT_WINDOWS`` windows."""
    shadows: list[ShadowReport] = field(default_factory=list)
    """Each shadow over the last ``SHADOW_HOURS`` hours."""
    maturity: list[MaturitySeries] = field(default_factory=list)
    graduation: list[GraduationCheck] = field(default_factory=list)
    """Each shadow's hours toward ``policy.shadow_graduation`` (none without the policy)."""
    lineage: list[VariantLineage] = field(default_factory=list)
    """Every model version that served each variant: ``GET /v1/experiments/<key>/models``."""


@dataclass(frozen=True)
class MaturitySeries:
    """A windowed metric's mature and pending units per variant, as of each day."""

    metric: str
    window: str
    days: list[date]
    mature: dict[str, list[int]]
    pending: dict[str, list[int]]


DRIFT_WINDOWS = 72
SHADOW_HOURS = 48


def maturity_series(
    experiment: Experiment, buckets: Sequence[ExposureBucket], now: datetime
) -> list[MaturitySeries]:
    """Per windowed metric and day: units whose window had closed by the day's end, and the rest.

    Pure; the same whole-day cohort rule as the analysis (``events.sums.mature_metric_stats``).
    """
    days = sorted({b.day for b in buckets})
    variants = sorted({b.variant for b in buckets})
    found = []
    for metric in experiment.metrics.all_metrics():
        hours = metric.maturity_hours
        if hours is None or not days:
            continue
        mature: dict[str, list[int]] = {v: [] for v in variants}
        pending: dict[str, list[int]] = {v: [] for v in variants}
        for day in days:
            end = min(now, datetime.combine(day + timedelta(days=1), time.min, UTC))
            cutoff = (end - timedelta(hours=hours)).date()
            for variant in variants:
                exposed = sum(b.units for b in buckets if b.variant == variant and b.day <= day)
                ripe = sum(b.units for b in buckets if b.variant == variant and b.day < cutoff)
                mature[variant].append(ripe)
                pending[variant].append(exposed - ripe)
        found.append(MaturitySeries(metric.name, metric.window or "", days, mature, pending))
    return found


@dataclass(frozen=True)
class IndexRow:
    experiment: Experiment
    weights: dict[str, float]
    state: str
    exposures: int
    days_running: int
    leader: str | None
    leader_lift: float | None
    leader_significant: bool
    last_decision: DecisionRecord | None
    alerts: list[str]


def _exposure_buckets(conn: Any, experiment: Experiment) -> list[ExposureBucket]:
    rows = exposure_buckets(conn, experiment.key, experiment.seed)
    return [ExposureBucket(variant, day, units) for variant, day, units in rows]


def _metric_buckets(conn: Any, experiment: Experiment, metric: str) -> list[MetricBucket]:
    rows = metric_buckets(conn, experiment.key, experiment.seed, metric)
    return [MetricBucket(v, metric, d, sums) for v, d, sums in rows]


def _days_running(exposures: ExposureSeries | None, today: date) -> int:
    return (today - exposures.days[0]).days + 1 if exposures else 0


def state_name(experiment: Experiment, state: ServingState | None) -> str:
    """The file's status unless it is running; then the decision state (as the decisions API says)."""
    if experiment.status != "running":
        return experiment.status
    return state.state if state else initial_state(experiment).state


def experiment_page(
    conn: Any, experiment: Experiment, weights: dict[str, float], now: datetime
) -> ExperimentPage:
    analysis, _ = run_analysis(conn, experiment, weights, use_history=False)
    exposure_rows = _exposure_buckets(conn, experiment)
    exposures = exposure_series(experiment, weights, exposure_rows)
    evidence = evidence_over_time(
        experiment,
        weights,
        exposure_rows,
        _metric_buckets(conn, experiment, experiment.metrics.primary.name),
    )
    state = serving_state(conn, experiment.key, experiment.seed)
    return ExperimentPage(
        experiment,
        weights,
        now,
        analysis,
        evidence,
        exposures,
        recent_health(conn, experiment),
        decision_log(conn, experiment.key),
        state,
        last_analysis_at(conn, experiment.key, experiment.seed),
        sample_size(conn, experiment, exposures),
        _days_running(exposures, now.date()),
        state_name(experiment, state),
        drift_checks(conn, experiment, history_windows=DRIFT_WINDOWS),
        shadow_reports(conn, experiment, now.replace(minute=0, second=0, microsecond=0)
                       - timedelta(hours=SHADOW_HOURS - 1)),
        maturity_series(experiment, exposure_rows, now),
        graduation_checks(conn, experiment),
        experiment_lineage(conn, experiment),
    )  # fmt: skip


def leader(experiment: Experiment, comparisons: Sequence[Comparison]) -> Comparison | None:
    """The treatment furthest ahead of the control in the primary metric's direction, if any is."""
    sign = 1.0 if experiment.metrics.primary.direction == "increase" else -1.0
    ahead = [c for c in comparisons if sign * c.difference > 0]
    return max(ahead, key=lambda c: sign * c.difference, default=None)


def alerts(analysis: ExperimentAnalysis, state: ServingState | None,
           decisions: Sequence[DecisionRecord]) -> list[str]:  # fmt: skip
    found = []
    if analysis.srm is not None and analysis.srm.flagged:
        found.append(f"SRM p={analysis.srm.p_value:.2g}")
    found.extend(f"not computed: {error}" for error in analysis.errors)
    found.extend(f"guardrail {g.metric} breached by {g.variant}" for g in analysis.guardrails
                 if g.breached)  # fmt: skip
    found.extend(
        f"{d.kind} awaiting approval" for d in decisions if d.status == "awaiting_approval"
    )
    if state is not None and state.rolled_back:
        found.append("rolled back: " + ", ".join(state.rolled_back))
    return found


def index_rows(
    conn: Any, experiments: Sequence[tuple[Experiment, dict[str, float]]], now: datetime
) -> list[IndexRow]:
    rows = []
    for experiment, weights in experiments:
        analysis, _ = run_analysis(conn, experiment, weights, use_history=False)
        exposures = exposure_series(experiment, weights, _exposure_buckets(conn, experiment))
        state = serving_state(conn, experiment.key, experiment.seed)
        history = [d for d in decision_log(conn, experiment.key) if d.seed == experiment.seed]
        best = leader(experiment, analysis.primary)
        rows.append(
            IndexRow(
                experiment,
                weights,
                state.state if state else experiment.status,
                sum(analysis.units.values()),
                _days_running(exposures, now.date()),
                best.variant if best else (experiment.control if analysis.primary else None),
                best.lift_relative if best else None,
                bool(best and best.better),
                history[-1] if history else None,
                alerts(analysis, state, history),
            )
        )
    return rows
