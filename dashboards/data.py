"""Everything a dashboard page shows, read from PostgreSQL's rollup tables in one place.

The per-variant table is ``service.decisions.inputs.run_analysis`` (what the decision
workers and ``GET /v1/experiments/<key>/analysis`` run), so a page never shows a number
the decisions did not use. Cost: a handful of queries over (variants x metrics x days)
bucket rows plus a bounded read of recent predictions, never a scan of raw events.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from dashboards import audit_log
from dashboards.evidence import (
    EvidencePoint,
    ExposureBucket,
    ExposureSeries,
    MetricBucket,
    evidence_over_time,
    exposure_series,
)
from dashboards.model_health import VariantHealth, model_health
from dashboards.sample_size import SampleSize, sample_size
from service.assignment.state import initial_state
from service.decisions.evaluation import Comparison, ExperimentAnalysis
from service.decisions.inputs import run_analysis
from service.experiments.schema import Experiment


@dataclass(frozen=True)
class ExperimentPage:
    experiment: Experiment
    weights: dict[str, float]
    generated_at: datetime
    analysis: ExperimentAnalysis
    evidence: list[EvidencePoint]
    exposures: ExposureSeries | None
    health: list[VariantHealth]
    decisions: list[audit_log.Decision]
    state: audit_log.ServingState | None
    last_analysis_at: datetime | None
    sample_size: SampleSize
    days_running: int
    state_name: str


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
    last_decision: audit_log.Decision | None
    alerts: list[str]


def weights_from_database(conn: Any, experiment: Experiment) -> dict[str, float]:
    """The newest allocation in force under the experiment's seed, else the YAML weights.

    The serving processes know this already (their registry); ``abx report`` has no
    registry and reads what they wrote.
    """
    row = conn.execute(
        "SELECT weights FROM allocations WHERE experiment_key = %s AND seed = %s"
        " AND effective_at <= now() ORDER BY effective_at DESC, allocation_id DESC LIMIT 1",
        (experiment.key, experiment.seed),
    ).fetchone()
    stored = dict(row[0]) if row else {}
    return {v.key: float(stored.get(v.key, v.weight)) for v in experiment.variants}


def _exposure_buckets(conn: Any, experiment: Experiment) -> list[ExposureBucket]:
    rows = conn.execute(
        "SELECT variant_key, bucket, units FROM exposure_counts"
        " WHERE experiment_key = %s AND seed = %s",
        (experiment.key, experiment.seed),
    ).fetchall()
    return [ExposureBucket(variant, day, int(units)) for variant, day, units in rows]


def _metric_buckets(conn: Any, experiment: Experiment, metric: str) -> list[MetricBucket]:
    rows = conn.execute(
        "SELECT variant_key, metric, bucket, sum_y, sum_y2, sum_x, sum_x2, sum_xy"
        " FROM metric_stats WHERE experiment_key = %s AND seed = %s AND metric = %s",
        (experiment.key, experiment.seed, metric),
    ).fetchall()
    return [MetricBucket(v, m, d, (y, y2, x, x2, xy)) for v, m, d, y, y2, x, x2, xy in rows]


def _days_running(exposures: ExposureSeries | None, today: date) -> int:
    return (today - exposures.days[0]).days + 1 if exposures else 0


def state_name(experiment: Experiment, state: audit_log.ServingState | None) -> str:
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
    state = audit_log.serving_state(conn, experiment.key, experiment.seed)
    return ExperimentPage(
        experiment,
        weights,
        now,
        analysis,
        evidence,
        exposures,
        model_health(conn, experiment),
        audit_log.decisions(conn, experiment.key),
        state,
        audit_log.last_analysis_at(conn, experiment.key, experiment.seed),
        sample_size(conn, experiment, exposures),
        _days_running(exposures, now.date()),
        state_name(experiment, state),
    )


def leader(experiment: Experiment, comparisons: Sequence[Comparison]) -> Comparison | None:
    """The treatment furthest ahead of the control in the primary metric's direction, if any is."""
    sign = 1.0 if experiment.metrics.primary.direction == "increase" else -1.0
    ahead = [c for c in comparisons if sign * c.difference > 0]
    return max(ahead, key=lambda c: sign * c.difference, default=None)


def alerts(analysis: ExperimentAnalysis, state: audit_log.ServingState | None,
           decisions: Sequence[audit_log.Decision]) -> list[str]:  # fmt: skip
    found = []
    if analysis.srm is not None and analysis.srm.flagged:
        found.append(f"SRM p={analysis.srm.p_value:.2g}")
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
        state = audit_log.serving_state(conn, experiment.key, experiment.seed)
        history = [
            d for d in audit_log.decisions(conn, experiment.key) if d.seed == experiment.seed
        ]
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
