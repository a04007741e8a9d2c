"""The staging helpers: rows from before a nullable column was appended are still stored;
merges add, replace and keep as told."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
import pytest

from service.inference.records import PREDICTIONS, PredictionRecord
from service.storage.staging import copy_to_stage, merge_rows


def test_a_row_from_before_mean_abs_diff_is_stored_with_null(db: str) -> None:
    at = datetime(2026, 12, 1, tzinfo=UTC)
    new = PredictionRecord("e", "u1", "s", "shadow", False, "s", "sha", "cpu", 1, 1.0, False,
                           None, False, True, 1.0, 0.2, at, 0.1)  # fmt: skip
    old = tuple(new)[:-1]  # as a spool segment of the previous version holds it
    with psycopg.connect(db) as conn, conn.transaction():
        stage = copy_to_stage(conn, PREDICTIONS.table, PREDICTIONS.columns, [new, old])
        conn.execute(PREDICTIONS.insert_from_stage.format(stage=stage))
        rows = conn.execute(
            "SELECT max_abs_diff, mean_abs_diff FROM predictions ORDER BY prediction_id"
        ).fetchall()
    assert [(round(a, 3), None if b is None else round(b, 3)) for a, b in rows] == [
        (0.2, 0.1),
        (0.2, None),
    ]


def test_merge_rows_adds_replaces_and_keeps_as_told(db: str) -> None:
    """Sums add, totals replace, kept columns stay; floats arrive bit for bit (binary COPY)."""
    day = datetime(2026, 12, 1, tzinfo=UTC).date()
    sums = ("sum_y", "sum_y2", "sum_x", "sum_x2", "sum_xy")
    stats_key = ("experiment_key", "seed", "variant_key", "metric", "bucket")
    unit_key = ("experiment_key", "seed", "metric", "unit_id")
    third = 1 / 3  # no short decimal: a text round trip that lost a bit would show
    with psycopg.connect(db) as conn, conn.transaction():
        merge_rows(conn, "metric_stats", stats_key, sums, [("e", "s", "a", "m", day, third, 1.0,
                                                           0.0, 0.0, 0.0)])  # fmt: skip
        # The same table twice in one transaction: the stage is empty again.
        merge_rows(conn, "metric_stats", stats_key, sums, [("e", "s", "a", "m", day, third, 2.0,
                                                           0.5, 0.0, 0.0),
                                                           ("e", "s", "b", "m", day, 1e-300,
                                                           0.0, 0.0, 0.0, 0.0)])  # fmt: skip
        merge_rows(conn, "metric_stats", stats_key, sums, [])
        merge_rows(
            conn,
            "unit_outcomes",
            unit_key,
            ("y_total", "x_total"),
            [("e", "s", "m", "u", "a", 1.0, 0.0)],
            add=False,
            kept=("variant_key",),
        )
        merge_rows(
            conn,
            "unit_outcomes",
            unit_key,
            ("y_total", "x_total"),
            [("e", "s", "m", "u", "b", third, 2.0)],
            add=False,
            kept=("variant_key",),
        )
        stats = conn.execute(
            "SELECT variant_key, sum_y, sum_y2, sum_x FROM metric_stats ORDER BY variant_key"
        ).fetchall()
        unit = conn.execute("SELECT variant_key, y_total, x_total FROM unit_outcomes").fetchall()
    assert stats == [("a", third + third, 3.0, 0.5), ("b", 1e-300, 0.0, 0.0)]
    assert unit == [("a", third, 2.0)]


def test_merge_rows_refuses_a_key_twice_and_writes_nothing(db: str) -> None:
    """Each key once per merge: a repeated one is PostgreSQL's error, and the batch is undone."""
    day = datetime(2026, 12, 1, tzinfo=UTC).date()
    row = ("e", "s", "a", "m", day, 1.0, 1.0, 0.0, 0.0, 0.0)
    with psycopg.connect(db) as conn:
        with pytest.raises(psycopg.errors.CardinalityViolation), conn.transaction():
            merge_rows(conn, "metric_stats", ("experiment_key", "seed", "variant_key", "metric",
                       "bucket"), ("sum_y", "sum_y2", "sum_x", "sum_x2", "sum_xy"), [row, row])  # fmt: skip
        assert conn.execute("SELECT count(*) FROM metric_stats").fetchone() == (0,)
