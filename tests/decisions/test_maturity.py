"""Delayed labels: a windowed metric is analysed on mature units only, through the workers' code.

The simulated treatment converts *sooner* but *less*: 24 % of its units convert within 6 hours
of exposure, while 30 % of the control's units convert uniformly over the 7 days after theirs.
Nine days in, most units' windows are still open, and an analysis of every exposed unit sees
the fast variant ahead (it sees 24 % against about 18 %) and promotes it. With ``window: 7d``,
only the cohorts whose window has closed count, where the control is truly ahead.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner

from service.cli.main import main
from service.events.attribution import Event, Exposure, Status, apply_events
from service.events.ingest import ingest_rows
from tests.decisions.test_cli import reset_worker_context
from tests.experiment_files import minimal_experiment, write_experiment

UNITS_PER_DAY = 1500
DAYS = 9
RATES = {"a": 0.30, "b": 0.24}
DELAY_HOURS = {"a": 7 * 24.0, "b": 6.0}  # each conversion happens uniformly within this
POLICY = {"min_units": 100, "min_runtime_hours": 0, "planned_units": 20_000}


def simulate_lagged(url: str, key: str, now: datetime, random_seed: int = 7) -> None:
    """Exposures spread over the last ``DAYS`` days; only labels that have happened by now."""
    rng = np.random.default_rng(random_seed)
    exposures, events = [], []
    for variant, rate in RATES.items():
        for i in range(UNITS_PER_DAY * DAYS):
            unit = f"{variant}-{i}"
            exposed = now - timedelta(seconds=float(rng.uniform(60, DAYS * 86400)))
            exposures.append((key, f"{key}.v1", unit, variant, exposed))
            if rng.random() < rate:
                at = exposed + timedelta(hours=float(rng.uniform(0, DELAY_HOURS[variant])))
                if at < now:
                    events.append((key, f"{key}.v1", f"{unit}-c", unit, "converted", "max", 1.0,
                                   at, at, None))  # fmt: skip
    with psycopg.connect(url) as conn:
        with conn.cursor().copy(
            "COPY exposures (experiment_key, seed, unit_id, variant_key, first_exposed_at) FROM STDIN"
        ) as copy:
            for row in exposures:
                copy.write_row(row)
        ingest_rows(conn, events)
        conn.commit()


@pytest.fixture
def env(db: str, tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "experiments"
    now = datetime.now(UTC)
    for key, window in (("naive", None), ("mature", "7d")):
        primary = {"name": "converted", "type": "binary"} | ({"window": window} if window else {})
        write_experiment(
            folder, minimal_experiment(key, metrics={"primary": primary}, policy=POLICY)
        )
        simulate_lagged(db, key, now)
    reset_worker_context()
    yield {"ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(folder),
           "ABX_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    reset_worker_context()


def analyze(runner: CliRunner, key: str, env: dict[str, str]) -> tuple[str, dict]:  # type: ignore[type-arg]
    reset_worker_context()
    result = runner.invoke(main, ["analyze", key], env=env)
    assert result.exit_code == 0, result.output
    output = result.output[result.output.index(f"{key}: ") :]  # after any log lines
    head, _, body = output.partition("\n  state:")
    return head, json.loads(body[body.index("{") :])


def test_immature_units_would_promote_the_wrong_variant_and_abx_does_not(
    runner: CliRunner, db: str, env: dict[str, str]
) -> None:
    naive, naive_numbers = analyze(runner, "naive", env)
    assert naive.startswith("naive: promote b"), naive  # what analysing every unit does
    [fast] = naive_numbers["primary"]
    assert fast["treatment_mean"] > fast["control_mean"]

    mature, numbers = analyze(runner, "mature", env)
    assert not mature.startswith("mature: promote"), mature
    assert mature.startswith("mature: rollback b"), mature  # the truth, seen on mature units
    [comparison] = numbers["primary"]
    assert comparison["treatment_mean"] < comparison["control_mean"]
    assert abs(comparison["control_mean"] - RATES["a"]) < 0.03  # mature: the full 30 %
    maturity = numbers["maturity"]["converted"]
    assert maturity["maturity_hours"] == 168.0
    total = UNITS_PER_DAY * DAYS
    for variant in ("a", "b"):
        mature_units, pending = (
            maturity["mature_units"][variant],
            maturity["pending_units"][variant],
        )
        assert mature_units + pending == total
        # Exposed more than 8 days ago (whole days before the cutoff): about 1/9 to 2/9 of them.
        assert 0.05 * total < mature_units < 0.25 * total
    assert comparison["control_units"] == maturity["mature_units"]["a"]
    with psycopg.connect(db) as conn:
        (reason,) = conn.execute(
            "SELECT reason FROM decisions WHERE experiment_key = 'mature'"
        ).fetchone()  # type: ignore[misc]
    assert "b is worse on converted" in reason


def test_no_mature_units_means_no_decision(runner: CliRunner, db: str, tmp_path: Path) -> None:
    folder = tmp_path / "experiments"
    primary = {"name": "converted", "type": "binary", "window": "7d", "maturity": {"delay": "3d"}}
    write_experiment(
        folder, minimal_experiment("young", metrics={"primary": primary}, policy=POLICY)
    )
    simulate_lagged(db, "young", datetime.now(UTC))  # 9 days < 7 d window + 3 d delay + a day
    env = {"ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(folder),
           "ABX_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    head, numbers = analyze(runner, "young", env)
    assert head.startswith("young: continue"), head
    assert "waiting for 100 mature units per variant on converted" in head
    assert numbers["primary"] == []
    assert numbers["maturity"]["converted"]["mature_units"] == {"a": 0, "b": 0}
    reset_worker_context()


def test_cohort_sums_follow_the_exposure_day_for_windowed_metrics_only() -> None:
    exposed = datetime(2026, 11, 1, 23, 0, tzinfo=UTC)
    later = exposed + timedelta(days=3)
    events = [
        (Event(1, "e", "e.v1", "u", "windowed", "sum", 2.0, later, later), Status.ATTRIBUTED),
        (Event(2, "e", "e.v1", "u", "plain", "sum", 5.0, later, later), Status.ATTRIBUTED),
    ]
    exposures = {("e", "e.v1", "u"): Exposure("b", exposed)}
    rollup = apply_events(events, exposures, {}, cohort_metrics={("e", "windowed")})
    assert set(rollup.deltas) == {
        ("e", "e.v1", "b", "windowed", later.date()),
        ("e", "e.v1", "b", "plain", later.date()),
    }
    [(key, delta)] = rollup.cohort_deltas.items()
    assert key == ("e", "e.v1", "b", "windowed", exposed.date())
    assert (delta.sum_y, delta.sum_y2) == (2.0, 4.0)
