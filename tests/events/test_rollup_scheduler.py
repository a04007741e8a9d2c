"""The serving process's rollup: its tick and ``run_until_idle`` go one way, and report alike."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from prometheus_client import REGISTRY

from service.events.ingest import ingest_rows
from service.events.rollup import ROLLUP_LOCK_KEY, RollupScheduler
from service.storage.database import Database

WINDOW = timedelta(days=7)


def last_success() -> float | None:
    return REGISTRY.get_sample_value("abx_rollup_last_success_timestamp_seconds")


@pytest.fixture
def scheduler(db: str) -> Iterator[RollupScheduler]:
    database = Database(db, max_size=2)
    database.open()
    # Never started: the test calls tick and run_until_idle itself.
    yield RollupScheduler(database, lambda key: WINDOW, timedelta(hours=1), interval=3600.0)
    database.close()


def add_units(db: str, count: int) -> None:
    with psycopg.connect(db) as conn:
        conn.execute(
            "INSERT INTO exposures (experiment_key, seed, unit_id, variant_key, first_exposed_at)"
            " SELECT 'exp', 'exp.v1', 'u' || i, 'a', %s FROM generate_series(1, %s) AS i",
            (datetime.now(UTC) - timedelta(minutes=5), count),
        )


def add_outcomes(db: str, count: int, value: float) -> None:
    now = datetime.now(UTC)
    with psycopg.connect(db) as conn:
        ingest_rows(conn, [
            ("exp", "exp.v1", f"{value}-{i}", f"u{i}", "m", "sum", value, now, now, None)
            for i in range(1, count + 1)
        ])  # fmt: skip


def summed(db: str) -> float:
    with psycopg.connect(db) as conn:
        (total,) = conn.execute("SELECT coalesce(sum(sum_y), 0) FROM metric_stats").fetchone()  # type: ignore[misc]
    return float(total)


def test_tick_and_run_until_idle_roll_up_and_report_the_same_way(
    db: str, scheduler: RollupScheduler
) -> None:
    add_units(db, 100)
    add_outcomes(db, 100, 2.0)
    with psycopg.connect(db) as holder:
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (ROLLUP_LOCK_KEY,))
        before = last_success()
        scheduler.tick()  # another process holds the rollup: nothing done, nothing reported
        assert summed(db) == 0.0
        assert last_success() == before
    started = datetime.now(UTC).timestamp()
    scheduler.tick()
    assert summed(db) == 200.0
    ticked = last_success()
    assert ticked is not None and ticked >= started
    assert REGISTRY.get_sample_value("abx_rollup_lag_seconds", {"stream": "outcomes"}) == 0.0

    add_outcomes(db, 100, 3.0)
    scheduler.run_until_idle()
    assert summed(db) == 500.0
    idle = last_success()
    assert idle is not None and idle > ticked  # reported by this round, not left from the tick
    assert REGISTRY.get_sample_value("abx_rollup_lag_seconds", {"stream": "outcomes"}) == 0.0
