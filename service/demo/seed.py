"""Seed the rollup tables, the audit log and predictions as days of real traffic would leave them.

Used by the dashboard tests and ``benchmarks/dashboard.py``. Per-unit outcomes are drawn
with numpy and reduced to the per-day sufficient statistics the rollup writes, so the
pages read exactly the rows a live experiment produces (without simulating every event).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import numpy.typing as npt

from service.events.attribution import CrossDelta, RatioKey
from service.events.ratios import write_deltas
from service.experiments.schema import Experiment

FIVE_VARIANTS_YAML = """\
key: ranker_bakeoff
description: Five rankers head to head (dashboard readability and speed).
owner: ranking-team@example.com
status: running
control: control
variants:
  - {key: control, weight: 0.2}
  - {key: ranker_a, weight: 0.2}
  - {key: ranker_b, weight: 0.2}
  - {key: ranker_c, weight: 0.2}
  - {key: ranker_d, weight: 0.2}
metrics:
  primary: {name: conversion, type: binary, direction: increase}
  secondary:
    - {name: order_value, type: continuous, direction: increase}
  guardrails:
    - {name: model_latency_p99_ms, type: continuous, direction: decrease, margin: 0.10}
policy:
  planned_units: 2000000
  horizon_days: 90
"""


@dataclass(frozen=True)
class MetricModel:
    """How one metric behaves: a base rate or mean, and each variant's relative lift."""

    base: float
    lift: Mapping[str, float]
    spread: float = 1.0
    """Standard deviation of continuous metrics (relative to the mean)."""


def default_models(experiment: Experiment) -> dict[str, MetricModel]:
    treatments = [v for v in experiment.variant_keys if v != experiment.control]
    lifts = {v: 0.03 * (index + 1) - 0.02 for index, v in enumerate(treatments)}
    models = {}
    for metric in experiment.metrics.all_metrics():
        if "latency" in metric.name:
            models[metric.name] = MetricModel(40.0, {v: 0.02 for v in treatments}, 0.3)
        elif metric.type == "binary":
            models[metric.name] = MetricModel(0.08 if "refund" not in metric.name else 0.01, lifts)
        else:
            models[metric.name] = MetricModel(25.0, lifts, 0.8)
    return models


def _metric_values(
    rng: np.random.Generator, metric_type: str, model: MetricModel, variant: str, n: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per-unit values y of n new units, and x: the same metric before exposure."""
    latent = rng.standard_normal(n)
    factor = 1.0 + model.lift.get(variant, 0.0)
    if metric_type == "binary":
        base = model.base * factor
        y = (rng.random(n) < base * (1 + 0.5 * np.tanh(latent))).astype(float)
        x = (rng.random(n) < model.base * (1 + 0.5 * np.tanh(latent))).astype(float)
    else:
        mean = model.base * factor
        y = np.maximum(
            0.0, mean + model.spread * model.base * (0.7 * latent + 0.7 * rng.standard_normal(n))
        )
        x = np.maximum(
            0.0,
            model.base + model.spread * model.base * (0.7 * latent + 0.7 * rng.standard_normal(n)),
        )
    return y, x


def seed_rollups(
    conn: Any, experiment: Experiment, days: int, units_per_day: int, last_day: date,
    rng_seed: int = 9, skew: Mapping[str, float] | None = None,
) -> int:  # fmt: skip
    """Write ``exposure_counts`` and ``metric_stats`` for ``days`` days ending ``last_day``.

    ``skew`` multiplies a variant's traffic (an SRM on purpose). The metrics a ratio divides
    also get their units' totals (``unit_outcomes``) and the ratio its cross products
    (``ratio_stats``, ``ratio_pairs``), as the rollup keeps them. Returns the exposed units.
    """
    rng = np.random.default_rng(rng_seed)
    weights = np.array([v.weight for v in experiment.variants])
    traffic = weights * np.array([(skew or {}).get(v.key, 1.0) for v in experiment.variants])
    models = default_models(experiment)
    exposures: list[tuple[Any, ...]] = []
    stats: list[tuple[Any, ...]] = []
    units: list[tuple[Any, ...]] = []
    pairs = sorted({
        (m.numerator, m.denominator) for m in experiment.metrics.ratio_metrics()
        if m.numerator is not None and m.denominator is not None
    })  # fmt: skip
    parts = {name for pair in pairs for name in pair}
    cross: dict[RatioKey, CrossDelta] = {}
    total = 0
    for offset in range(days):
        day = last_day - timedelta(days=days - 1 - offset)
        counts = rng.multinomial(units_per_day, traffic / traffic.sum())
        for variant, n in zip(experiment.variant_keys, counts, strict=True):
            if n == 0:
                continue
            total += int(n)
            exposures.append((experiment.key, experiment.seed, variant, day, int(n)))
            drawn: dict[str, tuple[Any, Any]] = {}
            for metric in experiment.metrics.all_metrics():
                if metric.type == "ratio":
                    continue  # computed from its parts' unit totals
                y, x = _metric_values(rng, metric.type, models[metric.name], variant, int(n))
                sums = (y.sum(), y @ y, x.sum(), x @ x, x @ y)
                stats.append((experiment.key, experiment.seed, variant, metric.name, day,
                              *(float(s) for s in sums)))  # fmt: skip
                if metric.name in parts:
                    drawn[metric.name] = (y, x)
                    units.extend((experiment.key, experiment.seed, metric.name,
                                  f"seed-{day}-{variant}-{i}", variant, float(y[i]), float(x[i]))
                                 for i in range(int(n)))  # fmt: skip
            for numerator, denominator in pairs:
                (x, xp), (y, yp) = drawn[numerator], drawn[denominator]
                key = (experiment.key, experiment.seed, numerator, denominator, "", "",
                       variant, day)  # fmt: skip
                cross[key] = CrossDelta(float(x @ y), float(xp @ yp), float(x @ yp),
                                        float(xp @ y))  # fmt: skip
    with conn.cursor() as cursor:
        with cursor.copy(
            "COPY exposure_counts (experiment_key, seed, variant_key, bucket, units) FROM STDIN"
        ) as copy:
            for row in exposures:
                copy.write_row(row)
        with cursor.copy(
            "COPY metric_stats (experiment_key, seed, variant_key, metric, bucket,"
            " sum_y, sum_y2, sum_x, sum_x2, sum_xy) FROM STDIN"
        ) as copy:
            for row in stats:
                copy.write_row(row)
        with cursor.copy(
            "COPY unit_outcomes (experiment_key, seed, metric, unit_id, variant_key, y_total,"
            " x_total) FROM STDIN"
        ) as copy:
            for row in units:
                copy.write_row(row)
        cursor.executemany(
            "INSERT INTO ratio_pairs (experiment_key, seed, numerator, denominator, since)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            [(experiment.key, experiment.seed, *pair, last_day - timedelta(days=days - 1))
             for pair in pairs],
        )  # fmt: skip
    # The rollup's cross products of the same units, kept from the first seeded day unless
    # the rollup already keeps the ratio (then they add up).
    write_deltas(conn, cross)
    return total


def seed_predictions(
    conn: Any, experiment: Experiment, per_variant: int, end: datetime, rng_seed: int = 11
) -> None:
    """Served predictions with lognormal latencies, a few failures answered by the control."""
    rng = np.random.default_rng(rng_seed)
    with conn.cursor() as cursor, cursor.copy(
        "COPY predictions (experiment_key, unit_id, variant_key, reason, in_experiment, served_by,"
        " model_sha256, provider, batch_rows, latency_ms, fallback, failure, cached, shadow,"
        " predicted_at) FROM STDIN"
    ) as copy:  # fmt: skip
        for index, variant in enumerate(experiment.variants):
            if variant.weight == 0 and variant.shadow is None:
                continue
            shadow = variant.shadow is not None
            sha = (variant.model.sha256 if variant.model else None) or f"{index:064x}"
            latencies = rng.lognormal(np.log(3.0 + 2.0 * index), 0.4, per_variant)
            failures = rng.random(per_variant) < 0.002 * (index + 1)
            for row in range(per_variant):
                failed = bool(failures[row])
                copy.write_row((
                    experiment.key, f"u{row}", variant.key, "shadow" if shadow else "hashed", True,
                    experiment.control if failed else variant.key, sha, "CPUExecutionProvider", 1,
                    float(latencies[row]), failed and not shadow, "error" if failed else None,
                    False, shadow, end - timedelta(seconds=per_variant - row),
                ))  # fmt: skip


def seed_decisions(conn: Any, experiment: Experiment, start: datetime) -> list[str]:
    """A ramp, a rollback with its numbers, and a promotion awaiting approval; returns their ids."""
    treatments = [v for v in experiment.variant_keys if v != experiment.control]
    plan = [
        ("ramp", None, "applied", "worker", "guardrails hold: coverage 10 % -> 50 %",
         {"ramp_step": 1, "coverage": 0.5}, "ramping", "ramping", timedelta(days=2)),
        ("rollback", treatments[0], "applied", "worker",
         "guardrail model_latency_p99_ms breached", {"harm": 0.12, "harm_lower_bound": 0.105,
         "margin": 0.1, "units": 41234}, "ramping", "ramping", timedelta(days=5)),
        ("promote", treatments[-1], "awaiting_approval", "worker",
         "primary better after Holm", {"p_value_adjusted": 0.0012, "lift_relative": 0.071,
         "ci_low": 0.002, "ci_high": 0.009}, "ramping", None, timedelta(days=9)),
    ]  # fmt: skip
    ids = []
    for kind, variant, status, actor, reason, numbers, before, after, offset in plan:
        decision_id = str(uuid.uuid4())
        ids.append(decision_id)
        conn.execute(
            "INSERT INTO decisions (decision_id, experiment_key, seed, kind, variant_key, status,"
            " actor, reason, numbers, state_before, state_after, created_at, applied_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (decision_id, experiment.key, experiment.seed, kind, variant, status, actor, reason,
             json.dumps(numbers), before, after, start + offset,
             start + offset if status == "applied" else None),
        )  # fmt: skip
    conn.execute(
        "INSERT INTO experiment_state (experiment_key, seed, state, rolled_back, ramp_step)"
        " VALUES (%s, %s, 'ramping', %s, 1)",
        (experiment.key, experiment.seed, [treatments[0]]),
    )
    conn.execute(
        "INSERT INTO analysis_runs (experiment_key, seed, created_at, numbers) VALUES (%s, %s, %s, '{}')",
        (experiment.key, experiment.seed, start + timedelta(days=9)),
    )
    return ids


def seed_all(conn: Any, experiment: Experiment, days: int = 30, units_per_day: int = 2000,
             predictions: int = 500, today: date | None = None) -> None:  # fmt: skip
    """Everything a page shows, ending today (UTC)."""
    last_day = today or datetime.now(UTC).date()
    seed_rollups(conn, experiment, days, units_per_day, last_day)
    seed_predictions(conn, experiment, predictions, datetime.now(UTC))
    first = datetime.combine(last_day - timedelta(days=days - 1), datetime.min.time(), UTC)
    seed_decisions(conn, experiment, first)


def seeded_dashboard_experiments(database_url: str, experiments_dir: Any) -> list[Experiment]:
    """Add the five-variant experiment to ``experiments_dir`` and seed it and checkout_ranker.

    90 days for the five variants (the readability case), 30 for checkout_ranker.
    """
    from service.experiments.validation import load_experiments

    (experiments_dir / "ranker_bakeoff.yaml").write_text(FIVE_VARIANTS_YAML)
    loaded = {
        i.experiment.key: i.experiment for i in load_experiments([experiments_dir]).experiments
    }
    chosen = [loaded["ranker_bakeoff"], loaded["checkout_ranker"]]
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        seed_all(conn, chosen[0], days=90, units_per_day=2000, predictions=300)
        seed_all(conn, chosen[1], days=30, units_per_day=1500, predictions=300)
    return chosen
