"""A bandit in the real decision transaction: re-weighting, stickiness of history, SRM by period."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import psycopg
import pytest

from service.assignment.sync import allocation_history, sync_experiments
from service.decisions.cycle import analyze_and_decide
from service.decisions.store import decision_log
from service.events.rollup import roll_up_once, windows_from
from service.experiments.schema import Experiment
from tests.experiment_files import minimal_experiment

BANDIT = Experiment.model_validate(
    minimal_experiment(
        "bandit",
        policy={
            "method": "bandit",
            "min_units": 1_000_000,  # no promotion here: only the bandit's own moves
            "min_runtime_hours": 0,
            "bandit": {"control_floor": 0.2, "arm_floor": 0.1, "min_units": 50, "draws": 2000},
        },
    )
)


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db, autocommit=True) as connection:
        yield connection


def expose(
    conn: psycopg.Connection, prefix: str, at: datetime, counts: dict[str, int],
    rates: dict[str, float],
) -> None:  # fmt: skip
    """Expose units at ``at`` and send a conversion for the first ``rate`` share of each arm."""
    exposures, outcomes = [], []
    for variant, n in counts.items():
        for i in range(n):
            unit = f"{prefix}-{variant}-{i}"
            exposures.append((BANDIT.key, BANDIT.seed, unit, variant, at))
            if i < round(n * rates[variant]):
                outcomes.append((BANDIT.key, BANDIT.seed, f"e-{unit}", unit, "conversion", "max",
                                 1.0, at + timedelta(minutes=1), at + timedelta(minutes=1)))  # fmt: skip
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO exposures (experiment_key, seed, unit_id, variant_key, first_exposed_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            exposures,
        )
        cursor.executemany(
            "INSERT INTO outcomes (experiment_key, seed, event_id, unit_id, metric, aggregation,"
            " value, occurred_at, received_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            outcomes,
        )
    for _ in range(10):
        done = roll_up_once(conn, windows_from({BANDIT.key: BANDIT}), timedelta(0))
        if done == (0, 0):
            break


def test_a_bandit_reweights_through_the_allocation_history_and_audits_it(
    conn: psycopg.Connection,
) -> None:
    sync_experiments(conn, [(BANDIT, "bandit.yaml")], settle_seconds=0.0)
    (now,) = conn.execute("SELECT now()").fetchone()
    expose(conn, "p1", now - timedelta(hours=1), {"a": 300, "b": 300}, {"a": 0.1, "b": 0.3})

    outcome = analyze_and_decide(conn, BANDIT)

    assert outcome.decision.kind == "reweight"
    history = allocation_history(conn, BANDIT)
    assert len(history) == 2
    weights = history[-1][0]
    assert weights["b"] > 0.5 and weights["a"] >= 0.2 and abs(sum(weights.values()) - 1) < 1e-9
    entry = decision_log(conn, BANDIT.key)[-1]
    assert entry.kind == "reweight" and entry.decision_id == outcome.decision_id
    assert entry.numbers["bandit"]["weights"] == weights
    assert entry.numbers["bandit"]["weights_before"] == {"a": 0.5, "b": 0.5}
    assert entry.numbers["bandit"]["probability_best"]["b"] > 0.9
    # A restart re-syncs the YAML: the bandit's weights stay (the YAML did not change).
    sync_experiments(conn, [(BANDIT, "bandit.yaml")], settle_seconds=0.0)
    assert allocation_history(conn, BANDIT)[-1][0] == weights

    # Period 2: units after the switch follow the new weights; the SRM test holds, and the
    # comparison is stratified over both periods.
    settled = history[-1][1] + timedelta(minutes=5)
    n = 1000
    split = {"a": round(n * weights["a"]), "b": n - round(n * weights["a"])}
    expose(conn, "p2", settled, split, {"a": 0.1, "b": 0.3})
    second = analyze_and_decide(conn, BANDIT)
    srm = second.numbers["srm"]
    assert srm is not None and not srm["flagged"]
    primary = second.numbers["primary"][0]
    assert primary["method"] == "bandit" and primary["treatment_units"] == 300 + split["b"]
    assert primary["ci_low"] < 0.2 < primary["ci_high"]


def test_srm_is_checked_against_the_weights_in_force_in_each_period(
    conn: psycopg.Connection,
) -> None:
    sync_experiments(conn, [(BANDIT, "bandit.yaml")], settle_seconds=0.0)
    (now,) = conn.execute("SELECT now()").fetchone()
    expose(conn, "p1", now - timedelta(hours=1), {"a": 300, "b": 300}, {"a": 0.1, "b": 0.3})
    assert analyze_and_decide(conn, BANDIT).decision.kind == "reweight"
    switched_at = allocation_history(conn, BANDIT)[-1][1]
    # After the switch the units still arrive 50/50: right for the old weights, not the new.
    expose(conn, "p2", switched_at + timedelta(minutes=5), {"a": 1500, "b": 1500},
           {"a": 0.1, "b": 0.3})  # fmt: skip
    outcome = analyze_and_decide(conn, BANDIT)
    assert outcome.decision.kind == "halt"
    assert "sample ratio mismatch" in outcome.decision.reason
