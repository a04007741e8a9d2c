"""Rows written before a nullable column was appended to their stream are still stored."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg

from service.inference.records import PREDICTIONS, PredictionRecord
from service.storage.staging import copy_to_stage


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
