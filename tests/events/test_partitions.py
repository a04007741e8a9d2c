"""Outcomes are partitioned by month, with partitions created ahead and a default for the rest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg

from service.events.ingest import ingest_rows


def partitions(conn: psycopg.Connection) -> set[str]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'outcomes'::regclass"
    ).fetchall()
    return {row[0] for row in rows}


def test_partitions_exist_ahead_and_rows_land_in_them(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("SELECT abx_ensure_outcome_partitions(6)")
        names = partitions(conn)
        now = datetime.now(UTC)
        for months in range(0, 6):
            month = (now.replace(day=1) + timedelta(days=31 * months)).strftime("%Y_%m")
            assert f"outcomes_{month}" in names
        conn.execute("SELECT abx_ensure_outcome_partitions(6)")  # idempotent
        assert partitions(conn) == names
        old = now - timedelta(days=800)
        with conn.transaction():
            ingest_rows(conn, [
                ("e", "e.v1", "recent", "u", "m", "sum", 1.0, now, now, None),
                ("e", "e.v1", "ancient", "u", "m", "sum", 1.0, old, now, None),
            ])  # fmt: skip
        placed = dict(
            conn.execute("SELECT event_id, tableoid::regclass::text FROM outcomes").fetchall()
        )
    assert placed["recent"] == f"outcomes_{now.strftime('%Y_%m')}"
    assert placed["ancient"] == "outcomes_default"
