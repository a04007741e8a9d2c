"""Gather what one analysis needs from PostgreSQL and run it (shared by workers and dashboards)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime, timedelta
from typing import Any

from analysis.sufficient_stats import SufficientStats
from service.decisions.evaluation import ExperimentAnalysis, analyze
from service.decisions.results import json_safe
from service.decisions.sequential import design_for
from service.decisions.store import fix_design, last_run_numbers, stored_design
from service.events.sums import exposed_units, exposed_units_by_day, metric_stats, model_health
from service.experiments.schema import Experiment


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
    result, state = analyze(
        experiment, units, stats, weights, design=design, carried=carried,
        daily_units=daily, health=health, today=today,
    )  # fmt: skip
    numbers = json_safe(dataclasses.asdict(result))
    numbers["design"] = design.to_json()
    numbers["carried"] = json_safe(state)
    return result, numbers
