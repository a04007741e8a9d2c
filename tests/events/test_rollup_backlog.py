"""A backlog of outcomes still waiting for their exposures never holds up newer ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from service.events.ingest import ingest_rows
from service.events.rollup import EVENT_CHUNK, roll_up_once


def test_pending_backlog_does_not_starve_new_events(db: str) -> None:
    now = datetime.now(UTC)
    waiting = [
        ("exp", "exp.v1", f"w{i}", f"stranger-{i}", "m", "sum", 1.0, now, now, None)
        for i in range(EVENT_CHUNK + 1000)
    ]
    with psycopg.connect(db) as conn:
        ingest_rows(conn, waiting)
        conn.commit()
        roll_up_once(conn, lambda key: timedelta(days=7), timedelta(hours=1))  # all become pending
        conn.execute(
            "INSERT INTO exposures (experiment_key, seed, unit_id, variant_key, first_exposed_at)"
            " SELECT 'exp', 'exp.v1', 'u' || i, 'a', %s FROM generate_series(1, 100) AS i",
            (now - timedelta(minutes=5),),
        )
        ingest_rows(
            conn,
            [
                ("exp", "exp.v1", f"n{i}", f"u{i}", "m", "sum", 2.0, now, now, None)
                for i in range(1, 101)
            ],
        )
        conn.commit()
        roll_up_once(conn, lambda key: timedelta(days=7), timedelta(hours=1))
        (attributed,) = conn.execute(
            "SELECT count(*) FROM outcomes WHERE status = 'attributed'"
        ).fetchone()  # type: ignore[misc]
        (total,) = conn.execute("SELECT sum(sum_y) FROM metric_stats").fetchone()  # type: ignore[misc]
    assert attributed == 100
    assert total == 200.0
