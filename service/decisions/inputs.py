"""Gather what one analysis needs from PostgreSQL and run it (shared by workers and dashboards)."""

from __future__ import annotations

import dataclasses
import math
from datetime import date
from typing import Any

from analysis.msprt import MsprtResult
from analysis.sufficient_stats import SufficientStats
from service.decisions.drift import DriftCheck, check_drift, group, window_starts
from service.decisions.evaluation import ExperimentAnalysis, StatsKey, analyze
from service.decisions.results import MetricMaturity, json_safe
from service.decisions.store import last_run_numbers
from service.events.sums import (
    exposed_units,
    exposed_units_by_day,
    mature_metric_stats,
    metric_stats,
    model_health,
)
from service.experiments.schema import Experiment
from service.inference.sketches import load_profile, read_sketches
from service.settings import Settings


def _previous_states(numbers: dict[str, Any]) -> dict[StatsKey, MsprtResult]:
    states = {}
    for item in numbers.get("msprt_states", []):
        fields = {f.name: item[f.name] for f in dataclasses.fields(MsprtResult)}
        # Stored as null when infinite (JSON has no infinity): an interval not yet bounded.
        fields["ci_low"] = -math.inf if fields["ci_low"] is None else fields["ci_low"]
        fields["ci_high"] = math.inf if fields["ci_high"] is None else fields["ci_high"]
        states[(item["variant"], item["metric"])] = MsprtResult(**fields)
    return states


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


def drift_checks(
    conn: Any, experiment: Experiment, history_windows: int | None = None
) -> list[DriftCheck]:
    """Every drift guardrail of the policy for every treatment serving a model, as of now."""
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
            profiles[variant.key] = load_profile(Settings().models, variant.model.reference)
    return [
        check_drift(guardrail, variant, experiment.control, grouped, now, history_windows,
                    profiles.get(variant))
        for guardrail in guardrails
        for variant in treatments
    ]  # fmt: skip


def run_analysis(
    conn: Any,
    experiment: Experiment,
    weights: dict[str, float],
    through: date | None = None,
    use_history: bool = True,
) -> tuple[ExperimentAnalysis, dict[str, Any]]:
    """Analyse from the rollup tables; return the analysis and the numbers to store for the next run.

    ``use_history`` carries the running mSPRT minimum and group-sequential looks over from the
    previous stored run (what keeps p-values from going up between looks).
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
    previous = last_run_numbers(conn, experiment) if use_history else {}
    looks = [float(x) for x in previous.get("gs_information", [])]
    daily = exposed_units_by_day(conn, experiment.key, experiment.seed, through)
    health = model_health(conn, experiment.key, through)
    result, states = analyze(
        experiment, units, stats, weights, _previous_states(previous), looks, daily, health
    )
    result.maturity.update(maturity)
    result.drift.extend(drift_checks(conn, experiment))
    numbers = json_safe(dataclasses.asdict(result))
    numbers["msprt_states"] = [
        {"variant": variant, "metric": metric, **json_safe(dataclasses.asdict(state))}
        for (variant, metric), state in states.items()
    ]
    primary_looks = [c.information_looks for c in result.primary if c.information_looks]
    numbers["gs_information"] = list(primary_looks[0]) if primary_looks else looks
    return result, numbers
