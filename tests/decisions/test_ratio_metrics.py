"""Ratio metrics through the decision workers' code: rollup, analysis, rules, every method.

Revenue per session, with users randomised: each simulated user has a habit (how often they
come) and a spend per session, both carried over from before the experiment, so the
pre-period ratio is a strong CUPED covariate. The numbers the workers store are checked
against the same ratios computed here from the raw units.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner

from service.cli.main import main
from service.events.ingest import ingest_rows
from service.observability import metrics
from tests.decisions.test_cli import reset_worker_context
from tests.experiment_files import minimal_experiment, write_experiment

UNITS = 1500
RATIO = {"name": "revenue_per_session", "type": "ratio", "numerator": "revenue",
         "denominator": "sessions"}  # fmt: skip
COMPONENTS = [{"name": "revenue", "type": "continuous"}, {"name": "sessions", "type": "count"}]
POLICY = {"min_units": 100, "min_runtime_hours": 0, "planned_units": 3000, "looks": 2}


def simulate(url: str, key: str, spend_lift: dict[str, float], seed: int) -> dict[str, Any]:
    """Exposures two days ago, a pre-period and an in-experiment total per unit and metric."""
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    exposures, events, raw = [], [], {}
    for variant, lift in spend_lift.items():
        habit = rng.gamma(2.0, 1.0, UNITS)
        spend = rng.gamma(2.0, 1.0, UNITS)
        pre_sessions, sessions = 1 + rng.poisson(habit), 1 + rng.poisson(habit)
        pre_revenue = rng.gamma(pre_sessions * 4.0, spend / 4.0)
        revenue = rng.gamma(sessions * 4.0, spend * (1 + lift) / 4.0)
        raw[variant] = (revenue, sessions)
        for i in range(UNITS):
            unit = f"{variant}-{i}"
            exposed = now - timedelta(days=2, seconds=i)
            exposures.append((key, f"{key}.v1", unit, variant, exposed))
            for period, at, values in (
                ("pre", exposed - timedelta(days=1), (pre_revenue[i], pre_sessions[i])),
                ("post", exposed + timedelta(hours=1), (revenue[i], sessions[i])),
            ):
                for metric, value in zip(("revenue", "sessions"), values, strict=True):
                    events.append((key, f"{key}.v1", f"{unit}-{period}-{metric}", unit, metric,
                                   "sum", float(value), at, at, None))  # fmt: skip
    with psycopg.connect(url) as conn:
        with conn.cursor().copy(
            "COPY exposures (experiment_key, seed, unit_id, variant_key, first_exposed_at) FROM STDIN"
        ) as copy:
            for row in exposures:
                copy.write_row(row)
        ingest_rows(conn, events)
        conn.commit()
    return raw


def analyze(runner: CliRunner, key: str, env: dict[str, str]) -> tuple[str, dict[str, Any]]:
    reset_worker_context()
    result = runner.invoke(main, ["analyze", key], env=env)
    assert result.exit_code == 0, result.output
    output = result.output[result.output.index(f"{key}: ") :]
    head, _, body = output.partition("\n  state:")
    return head, json.loads(body[body.index("{") :])


def ratio_reads(key: str) -> float:
    """How many ratio reads ``abx_ratio_sums_duration_seconds`` has timed for the experiment."""
    for family in metrics.RATIO_SUMS_DURATION.collect():
        for sample in family.samples:
            if sample.name.endswith("_count") and sample.labels.get("experiment") == key:
                return sample.value
    return 0.0


def environment(db: str, tmp_path: Path) -> dict[str, str]:
    return {"ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(tmp_path / "experiments"),
            "ABX_DATA_DIR": str(tmp_path / "data")}  # fmt: skip


@pytest.mark.parametrize("method", ["msprt", "confidence_sequence", "group_sequential"])
def test_primary_ratio_promotes_the_better_variant_with_cuped(
    runner: CliRunner, db: str, tmp_path: Path, method: str
) -> None:
    key = f"rps_{method}"
    metrics = {"primary": RATIO, "secondary": COMPONENTS}
    write_experiment(tmp_path / "experiments",
                     minimal_experiment(key, metrics=metrics, policy=POLICY | {"method": method}))  # fmt: skip
    raw = simulate(db, key, {"a": 0.0, "b": 0.25}, seed=11)
    reads = ratio_reads(key)
    head, numbers = analyze(runner, key, environment(db, tmp_path))
    assert ratio_reads(key) == reads + 1
    [comparison] = numbers["primary"]
    revenue, sessions = raw["a"]
    assert comparison["control_mean"] == pytest.approx(revenue.sum() / sessions.sum(), rel=1e-9)
    revenue, sessions = raw["b"]
    assert comparison["treatment_mean"] == pytest.approx(revenue.sum() / sessions.sum(), rel=1e-9)
    assert comparison["control_units"] == comparison["treatment_units"] == UNITS
    assert comparison["method"] == method
    assert comparison["cuped"] and comparison["variance_reduction"] > 0.2
    assert comparison["significant"] and comparison["better"]
    assert comparison["ci_low"] <= comparison["difference"] <= comparison["ci_high"]
    assert head.startswith(f"{key}: promote b"), head


def test_ratio_guardrail_rolls_back_and_secondary_is_reported(
    runner: CliRunner, db: str, tmp_path: Path
) -> None:
    guardrail = RATIO | {"name": "rps_guard", "direction": "increase", "margin": 0.05}
    secondary = [*COMPONENTS, RATIO]
    metrics = {"primary": {"name": "sessions", "type": "count"},
               "secondary": [m for m in secondary if m["name"] != "sessions"],
               "guardrails": [guardrail]}  # fmt: skip
    write_experiment(tmp_path / "experiments",
                     minimal_experiment("rps_guarded", metrics=metrics, policy=POLICY))  # fmt: skip
    simulate(db, "rps_guarded", {"a": 0.0, "b": -0.3}, seed=12)
    head, numbers = analyze(runner, "rps_guarded", environment(db, tmp_path))
    [check] = [g for g in numbers["guardrails"] if g["metric"] == "rps_guard"]
    assert check["breached"], check
    assert head.startswith("rps_guarded: rollback b"), head
    with psycopg.connect(db) as conn:
        (stored,) = conn.execute(
            "SELECT numbers FROM analysis_runs WHERE experiment_key = 'rps_guarded'"
        ).fetchone()  # type: ignore[misc]
    [secondary_ratio] = [c for c in stored["secondary"] if c["metric"] == RATIO["name"]]
    assert secondary_ratio["lift_relative"] == pytest.approx(-0.3, abs=0.06)
    assert secondary_ratio["better"] is False


def test_a_ratio_without_denominator_waits(runner: CliRunner, db: str, tmp_path: Path) -> None:
    metrics = {"primary": RATIO, "secondary": COMPONENTS}
    write_experiment(tmp_path / "experiments", minimal_experiment("rps_empty", metrics=metrics,
                                                                  policy=POLICY))  # fmt: skip
    with psycopg.connect(db) as conn:
        for variant in ("a", "b"):
            conn.execute(
                "INSERT INTO exposures (experiment_key, seed, unit_id, variant_key,"
                " first_exposed_at) VALUES ('rps_empty', 'rps_empty.v1', %s, %s, now())",
                (f"{variant}-1", variant),
            )
    head, numbers = analyze(runner, "rps_empty", environment(db, tmp_path))
    assert numbers["primary"] == []
    assert (
        "revenue_per_session/a: no sessions yet (the ratio's denominator is zero)"
        in numbers["skipped"]
    )
    assert not head.startswith("rps_empty: promote")
