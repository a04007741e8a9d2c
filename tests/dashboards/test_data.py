"""Dashboard data assembled from a seeded database equals what the decisions compute."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import psycopg
import pytest
import yaml
from numpy.testing import assert_allclose

from dashboards.data import experiment_page, index_rows
from service.assignment.sync import weights_in_force
from service.decisions.inputs import run_analysis
from service.demo.seed import FIVE_VARIANTS_YAML, seed_all, seed_predictions, seed_rollups
from service.events.sums import exposed_units
from service.experiments.schema import Experiment
from service.inference.records import recent_health

EXPERIMENT = Experiment.model_validate(yaml.safe_load(FIVE_VARIANTS_YAML))
WEIGHTS = {v.key: v.weight for v in EXPERIMENT.variants}
TODAY = date(2024, 3, 30)
NOW = datetime(2024, 3, 30, 18, tzinfo=UTC)


@pytest.fixture
def conn(db: str) -> psycopg.Connection:
    with psycopg.connect(db, autocommit=True) as connection:
        yield connection


def test_evidence_on_each_day_equals_run_analysis_through_that_day(
    conn: psycopg.Connection,
) -> None:
    seed_all(conn, EXPERIMENT, days=20, units_per_day=3000, predictions=50, today=TODAY)
    page = experiment_page(conn, EXPERIMENT, WEIGHTS, NOW)
    assert {p.day for p in page.evidence} == {TODAY - timedelta(days=d) for d in range(20)}
    for day in (TODAY - timedelta(days=15), TODAY - timedelta(days=7), TODAY):
        expected, _ = run_analysis(conn, EXPERIMENT, WEIGHTS, through=day, use_history=False)
        points = {p.variant: p for p in page.evidence if p.day == day}
        assert set(points) == {c.variant for c in expected.primary}
        for comparison in expected.primary:
            point = points[comparison.variant]
            assert point.treatment_units == comparison.treatment_units
            assert_allclose(
                [point.difference, point.ci_low, point.ci_high, point.p_value_adjusted],
                [comparison.difference, comparison.ci_low, comparison.ci_high,
                 comparison.p_value_adjusted],
                rtol=1e-9,
            )  # fmt: skip
    # The table is run_analysis itself, as of now.
    latest, _ = run_analysis(conn, EXPERIMENT, WEIGHTS, use_history=False)
    assert page.analysis == latest


def test_page_parts_come_from_the_rollups_audit_log_and_predictions(
    conn: psycopg.Connection,
) -> None:
    seed_all(conn, EXPERIMENT, days=10, units_per_day=1000, predictions=400, today=TODAY)
    page = experiment_page(conn, EXPERIMENT, WEIGHTS, NOW)
    assert page.exposures is not None
    units = exposed_units(conn, EXPERIMENT.key, EXPERIMENT.seed)
    assert {v: c[-1] for v, c in page.exposures.cumulative.items()} == units
    assert page.days_running == 10
    assert page.analysis.srm is not None
    assert page.exposures.srm_p_values[-1] == pytest.approx(page.analysis.srm.p_value, rel=1e-12)
    assert [d.kind for d in page.decisions] == ["ramp", "rollback", "promote"]
    assert page.decisions[1].numbers["margin"] == 0.1
    assert page.state is not None and page.state.rolled_back == ["ranker_a"]
    size = page.sample_size
    assert size.actual_units == units
    assert size.information_fraction == pytest.approx(min(units.values()) / 2_000_000)
    assert size.projected_date is not None and size.projected_date > TODAY
    assert {h.variant for h in page.health} == set(EXPERIMENT.variant_keys)
    rows = conn.execute(
        "SELECT latency_ms, failure IS NOT NULL FROM predictions WHERE variant_key = 'ranker_b'"
    ).fetchall()
    ranker_b = next(h for h in page.health if h.variant == "ranker_b")
    latencies = np.array([r[0] for r in rows])
    assert ranker_b.predictions == len(rows) == 400
    assert ranker_b.latency_p95_ms == pytest.approx(np.percentile(latencies, 95), rel=1e-5)
    assert ranker_b.error_rate == pytest.approx(np.mean([r[1] for r in rows]))


def test_model_health_reads_only_the_newest_predictions(conn: psycopg.Connection) -> None:
    seed_predictions(conn, EXPERIMENT, 300, NOW)
    health = recent_health(conn, EXPERIMENT, limit=100)
    assert all(h.predictions == 100 for h in health)
    assert all(h.window_end - h.window_start == timedelta(seconds=99) for h in health)


def test_index_flags_srm_and_names_the_leader(conn: psycopg.Connection) -> None:
    seed_rollups(conn, EXPERIMENT, 14, 5000, TODAY, skew={"ranker_c": 1.2})
    rows = index_rows(conn, [(EXPERIMENT, WEIGHTS)], NOW)
    assert len(rows) == 1
    row = rows[0]
    assert row.exposures == sum(exposed_units(conn, EXPERIMENT.key, EXPERIMENT.seed).values())
    assert row.days_running == 14
    assert any(alert.startswith("SRM") for alert in row.alerts)
    analysis, _ = run_analysis(conn, EXPERIMENT, WEIGHTS, use_history=False)
    best = max(analysis.primary, key=lambda c: c.difference)
    assert best.difference > 0
    assert (row.leader, row.leader_lift) == (best.variant, best.lift_relative)
    assert row.last_decision is None


def test_weights_come_from_the_newest_allocation(conn: psycopg.Connection) -> None:
    assert weights_in_force(conn, EXPERIMENT) == WEIGHTS
    conn.execute(
        "INSERT INTO experiments (key, seed, status, definition, definition_sha256, source_file)"
        " VALUES (%s, %s, 'running', '{}', 'x', 'x.yaml')",
        (EXPERIMENT.key, EXPERIMENT.seed),
    )
    conn.execute(
        "INSERT INTO allocations (experiment_key, seed, weights, fingerprint, effective_at)"
        " VALUES (%s, %s, %s, 'f', now() - interval '1 minute')",
        (EXPERIMENT.key, EXPERIMENT.seed,
         '{"control": 0.6, "ranker_a": 0.1, "ranker_b": 0.1, "ranker_c": 0.1, "ranker_d": 0.1}'),
    )  # fmt: skip
    assert weights_in_force(conn, EXPERIMENT)["control"] == 0.6
