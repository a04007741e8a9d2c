"""Every spooled row reaches PostgreSQL or the quarantine exactly once (issue #14).

``predictions`` has no idempotency key, so a batch of a segment replayed twice is a row
counted twice. The faults are real PostgreSQL refusals: a trigger that refuses one unit with
an error that is neither a data error nor an outage (the segment keeps failing and is moved
aside), or with a connection-class error (the replay stops half-way, as when the server goes
away between two batches), and a fresh ``Spool``/``BatchWriter`` plays the restarted process.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from service.cli.main import main
from service.inference.records import PREDICTIONS
from service.settings import Settings
from service.storage.database import Database
from service.storage.spool import Spool
from service.storage.writer import BatchWriter

NOW = datetime(2026, 12, 1, tzinfo=UTC)


@pytest.fixture
def database(db: str) -> Iterator[Database]:
    database = Database(db)
    database.open()
    yield database
    database.close()


def prediction(unit: str) -> tuple[Any, ...]:
    return (
        "exp", unit, "a", "hash", True, "a", "sha", "cpu", 1, 1.5, False, None, False,
        False, None, None, NOW,
    )  # fmt: skip


def refuse_unit(url: str, unit: str, sqlstate: str) -> None:
    """Make PostgreSQL refuse every prediction of ``unit`` with ``sqlstate``."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            f"""
            CREATE FUNCTION refuse_unit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.unit_id = '{unit}' THEN
                    RAISE EXCEPTION 'unit % refused', NEW.unit_id USING ERRCODE = '{sqlstate}';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_unit BEFORE INSERT ON predictions
                FOR EACH ROW EXECUTE FUNCTION refuse_unit();
            """
        )


def allow_again(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TRIGGER refuse_unit ON predictions")


def units_stored(url: str) -> Counter[str]:
    with psycopg.connect(url) as conn:
        return Counter(unit for (unit,) in conn.execute("SELECT unit_id FROM predictions"))


def spool_segment(spool: Spool, *units: str) -> None:
    """One segment holding one batch per unit."""
    for unit in units:
        spool.append([("predictions", *prediction(unit))])
    spool.seal()


def test_a_segment_moved_aside_holds_only_what_never_reached_postgres(
    db: str, database: Database, tmp_path: Path, runner: CliRunner
) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    spool = Spool(settings.writes_spool_path, 1_000_000, "writes-segment", max_replay_failures=3)
    spool_segment(spool, "p1", "p2", "poison", "p4")
    spool_segment(spool, "behind")
    refuse_unit(db, "poison", "P0001")  # raise_exception: no data error, no outage
    writer = BatchWriter(database, {PREDICTIONS.table: PREDICTIONS}, spool=spool)
    assert not writer.flush() and not writer.flush()
    assert writer.flush()  # the third failure moves the segment aside; the one behind replays
    assert units_stored(db) == Counter({"p1": 1, "p2": 1, "behind": 1})
    (aside,) = spool.quarantined_segments()
    batches = [json.loads(line) for line in aside.read_text().splitlines()]
    assert [batch[0][2] for batch in batches] == ["poison", "p4"]  # nothing already written

    # The operator fixes the cause and puts the segment back: each row arrives once.
    allow_again(db)
    env = {"ABX_DATABASE_URL": db, "ABX_DATA_DIR": str(tmp_path / "data")}
    retried = runner.invoke(main, ["quarantine", "retry", "--all"], env=env)
    assert retried.exit_code == 0, retried.output
    assert "1 segment(s) back in their spool" in retried.output
    restarted = BatchWriter(
        database,
        {PREDICTIONS.table: PREDICTIONS},
        spool=Spool(settings.writes_spool_path, 1_000_000, "writes-segment"),
    )
    assert restarted.flush()
    assert units_stored(db) == Counter({"p1": 1, "p2": 1, "poison": 1, "p4": 1, "behind": 1})
    assert not spool.has_segments() and spool.quarantined_segments() == []


def test_a_replay_cut_half_way_resumes_after_the_last_batch_written(
    db: str, database: Database, tmp_path: Path
) -> None:
    folder = tmp_path / "writes"
    spool_segment(Spool(folder, 1_000_000), "p1", "p2", "cut-here", "p4")
    refuse_unit(db, "cut-here", "08006")  # connection_failure: the replay stops, as in an outage
    writer = BatchWriter(database, {PREDICTIONS.table: PREDICTIONS}, spool=Spool(folder, 1_000_000))
    for _ in range(4):
        assert not writer.flush()  # an outage never moves the segment aside
    assert units_stored(db) == Counter({"p1": 1, "p2": 1})

    allow_again(db)  # the server is back; a restarted process replays the segment
    restarted = BatchWriter(
        database, {PREDICTIONS.table: PREDICTIONS}, spool=Spool(folder, 1_000_000)
    )
    assert restarted.flush()
    assert units_stored(db) == Counter({"p1": 1, "p2": 1, "cut-here": 1, "p4": 1})
    assert not list(folder.glob("*.spool"))
