"""A row PostgreSQL refuses is quarantined and counted; the rows around and behind it are written.

Real refusals, none simulated: psycopg refuses a NUL for a ``text`` column (``DataError``)
and cannot encode a lone surrogate (``UnicodeEncodeError``); PostgreSQL refuses a value out of
a column's range (SQLSTATE 22003).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from service.assignment.sticky import ASSIGNMENTS, EXPOSURES
from service.cli.main import main
from service.events.ingest import EventIngestor, IngestRefused, _Request
from service.inference.records import PREDICTIONS
from service.observability import metrics
from service.settings import Settings
from service.storage import quarantine
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


def exposure(unit: str) -> tuple[Any, ...]:
    return ("exp", "exp.v1", unit, "a", NOW)


def prediction(unit: str, batch_rows: int = 1) -> tuple[Any, ...]:
    return (
        "exp", unit, "a", "hash", True, "a", "sha", "cpu", batch_rows, 1.5, False, None, False,
        False, None, None, NOW,
    )  # fmt: skip


def stored(url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql).fetchall()


def quarantined(stream: str) -> float:
    return metrics.QUARANTINED.labels(stream)._value.get()


def test_refused_rows_are_quarantined_and_never_hold_up_the_others(
    db: str, database: Database
) -> None:
    writer = BatchWriter(
        database,
        {
            EXPOSURES.table: EXPOSURES,
            ASSIGNMENTS.table: ASSIGNMENTS,
            PREDICTIONS.table: PREDICTIONS,
        },
    )
    before = quarantined("exposures"), quarantined("predictions")
    units = [f"u{i}" for i in range(40)]
    for unit in units[:17]:
        writer.put("exposures", exposure(unit))
    writer.put("exposures", exposure("nul\x00unit"))  # psycopg: text holds no NUL
    writer.put("exposures", exposure("lone\ud800surrogate"))  # the client cannot encode it
    for unit in units[17:]:
        writer.put("exposures", exposure(unit))
    writer.put("assignments", exposure("u-assigned"))
    writer.put("predictions", prediction("p-ok"))
    writer.put("predictions", prediction("p-huge", batch_rows=2**40))  # 22003: out of integer
    assert writer.flush()  # the database answered: this is no outage
    assert stored(db, "SELECT count(*) FROM exposures")[0][0] == 40
    assert stored(db, "SELECT unit_id FROM assignments") == [("u-assigned",)]
    assert stored(db, "SELECT unit_id FROM predictions") == [("p-ok",)]
    rows = stored(
        db, "SELECT stream, row_json, error, sqlstate, source FROM quarantine ORDER BY 1, 2"
    )
    assert [(r[0], json.loads(r[1])[2 if r[0] == "exposures" else 1]) for r in rows] == [
        ("exposures", "lone\ud800surrogate"),
        ("exposures", "nul\x00unit"),
        ("predictions", "p-huge"),
    ]
    assert "DataError" in rows[1][2] and "0x00" in rows[1][2] and rows[1][4] == "writer"
    assert "UnicodeEncodeError" in rows[0][2] and rows[0][3] is None
    assert rows[2][3] == "22003"
    assert quarantined("exposures") == before[0] + 2
    assert quarantined("predictions") == before[1] + 1
    # Later rows flow as before.
    writer.put("exposures", exposure("later"))
    assert writer.flush()
    assert stored(db, "SELECT count(*) FROM exposures WHERE unit_id = 'later'")[0][0] == 1


def test_a_refused_row_in_the_spool_is_quarantined_and_the_replay_goes_on(
    db: str, database: Database, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "writes", 1_000_000, "writes-segment")
    spool.append([("exposures", *exposure("s1")), ("exposures", *exposure("bad\x00"))])
    spool.append([("exposures", *exposure("s2"))])
    spool.seal()
    writer = BatchWriter(database, {EXPOSURES.table: EXPOSURES}, spool=spool)
    assert writer.flush()
    assert not spool.has_segments()
    assert sorted(stored(db, "SELECT unit_id FROM exposures")) == [("s1",), ("s2",)]
    assert stored(db, "SELECT source, stream FROM quarantine") == [("spool", "exposures")]


def test_a_segment_that_keeps_failing_is_moved_aside(
    db: str, database: Database, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "writes", 1_000_000, "writes-segment", max_replay_failures=3)
    spool.append([("no-such-stream", "x")])  # replays fail with KeyError, not an outage
    spool.seal()
    spool.append([("exposures", *exposure("behind"))])
    spool.seal()
    writer = BatchWriter(database, {EXPOSURES.table: EXPOSURES}, spool=spool)
    before = quarantined("writes-segment")
    assert not writer.flush() and not writer.flush()  # the segment waits: two failures
    assert stored(db, "SELECT count(*) FROM exposures")[0][0] == 0
    assert writer.flush()  # the third: moved aside, the one behind is replayed
    assert stored(db, "SELECT unit_id FROM exposures") == [("behind",)]
    (aside,) = spool.quarantined_segments()
    assert aside.parent == tmp_path / "writes" / "quarantine"
    assert "no-such-stream" in aside.read_text()
    assert quarantined("writes-segment") == before + 1


def test_an_outage_never_moves_a_segment_aside(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "writes", 1_000_000, max_replay_failures=1)
    spool.append([("exposures", *exposure("u"))])
    spool.seal()
    database = Database("postgresql://abx@127.0.0.1:1/none?connect_timeout=1")
    database.open()
    try:
        writer = BatchWriter(database, {EXPOSURES.table: EXPOSURES}, spool=spool)
        assert not writer.flush() and not writer.flush()
    finally:
        database.close()
    assert spool.has_segments() and spool.quarantined_segments() == []


def outcome(event_id: str, unit: str = "u1") -> tuple[Any, ...]:
    return ("exp", "exp.v1", event_id, unit, "clicks", "sum", 1.0, NOW, NOW, None)


def test_the_request_holding_a_refused_event_is_refused_and_the_group_commits(
    db: str, database: Database, tmp_path: Path
) -> None:
    ingestor = EventIngestor(database, Spool(tmp_path / "events", 1_000_000))
    good, bad, other = (
        _Request([outcome("e1"), outcome("e2")]),
        _Request([outcome("e3"), outcome("e4", unit="x\x00")]),
        _Request([outcome("e5")]),
    )
    ingestor._write([good, bad, other])  # one group commit, as the writer thread makes it
    assert good.result is not None and good.result.accepted == 2 and not good.result.spooled
    assert other.result is not None and other.result.accepted == 1
    assert bad.result is None and bad.refused is not None and "0x00" in bad.refused
    assert not ingestor.spooling
    assert sorted(stored(db, "SELECT event_id FROM outcomes")) == [("e1",), ("e2",), ("e5",)]
    ingestor.start()
    try:
        with pytest.raises(IngestRefused):
            ingestor.submit([outcome("e6", unit="y\ud800")])
        assert ingestor.submit([outcome("e7")]).accepted == 1
    finally:
        ingestor.close()


def test_a_refused_event_in_the_spool_is_quarantined(
    db: str, database: Database, tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "events", 1_000_000)
    spool.append([outcome("s1"), outcome("s2", unit="z\x00"), outcome("s3")])
    spool.seal()
    ingestor = EventIngestor(database, spool)
    assert ingestor.spooling
    ingestor._database_answers.set()
    ingestor._try_leave_spooling()
    assert not ingestor.spooling
    assert sorted(stored(db, "SELECT event_id FROM outcomes")) == [("s1",), ("s2",), ("s3",)][::2]
    with psycopg.connect(db, autocommit=True) as conn:
        rows = quarantine.list_rows(conn)
    assert [(r.stream, r.source, r.row[2], r.row[3]) for r in rows] == [
        ("outcomes", "spool", "s2", "z\x00")
    ]


def test_retry_writes_what_is_now_accepted_and_drop_removes(db: str, database: Database) -> None:
    writer = BatchWriter(database, {PREDICTIONS.table: PREDICTIONS})
    writer.put("predictions", prediction("p1", batch_rows=2**40))
    writer.put("predictions", prediction("p2", batch_rows=2**41))
    assert writer.flush()
    writers = {"predictions": lambda conn, rows: write_stream_for(conn, rows)}
    with psycopg.connect(db, autocommit=True) as conn:
        first, second = quarantine.list_rows(conn)
        conn.execute(
            "UPDATE quarantine SET row_json = %s WHERE quarantine_id = %s",
            (quarantine.row_json(prediction("p1")), first.quarantine_id),
        )  # an operator repaired it
        with conn.transaction():
            assert quarantine.retry_rows(conn, writers, None) == (1, 1)
        assert [r.quarantine_id for r in quarantine.list_rows(conn)] == [second.quarantine_id]
        assert conn.execute("SELECT unit_id FROM predictions").fetchall() == [("p1",)]
        assert quarantine.drop_rows(conn, [second.quarantine_id]) == 1
        assert quarantine.count_rows(conn) == 0


def write_stream_for(conn: Any, rows: Any) -> None:
    from service.storage.writer import write_stream

    write_stream(conn, rows, PREDICTIONS)


def test_abx_quarantine_lists_retries_and_drops(
    db: str, database: Database, tmp_path: Path, runner: CliRunner
) -> None:
    env = {"ABX_DATABASE_URL": db, "ABX_DATA_DIR": str(tmp_path / "data")}
    writer = BatchWriter(database, {EXPOSURES.table: EXPOSURES})
    writer.put("exposures", exposure("a\x00"))
    writer.put("exposures", exposure("b\x00"))
    assert writer.flush()
    settings = Settings(data_dir=tmp_path / "data")
    spool = Spool(settings.writes_spool_path, 1_000_000, max_replay_failures=1)
    spool.append([("gone-stream", 1)])
    spool.seal()
    spool.replay(lambda batch, mark: {}["gone-stream"])  # KeyError once: moved aside
    (segment,) = spool.quarantined_segments()

    listed = runner.invoke(main, ["quarantine", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert "exposures\twriter" in listed.output and '"a\\u0000"' in listed.output
    assert f"segment\t{segment}" in listed.output
    as_json = runner.invoke(main, ["quarantine", "list", "--json"], env=env)
    first, _second, aside = (json.loads(line) for line in as_json.output.splitlines())
    assert first["row"][2] == "a\x00" and "DataError" in first["error"]
    assert aside["segment"] == str(segment)

    refused = runner.invoke(main, ["quarantine", "retry", str(first["id"])], env=env)
    assert refused.exit_code == 1 and "refused again 1" in refused.output
    assert runner.invoke(main, ["quarantine", "retry"], env=env).exit_code == 2
    dropped = runner.invoke(main, ["quarantine", "drop", str(first["id"])], env=env)
    assert dropped.exit_code == 0 and "dropped 1 row(s)" in dropped.output
    back = runner.invoke(main, ["quarantine", "drop", "--all"], env=env)
    assert "dropped 1 row(s) and 1 segment(s)" in back.output
    with psycopg.connect(db) as conn:
        assert quarantine.count_rows(conn) == 0
    assert spool.quarantined_segments() == []


def test_an_index_row_over_the_size_limit_is_refused_not_an_outage(db: str) -> None:
    """SQLSTATE 54000 (program limit exceeded) blames the row: it is set aside, the rest written."""
    huge = base64.b64encode(os.urandom(9000)).decode()  # incompressible: ~12 kB in the index

    def write(conn: Any, rows: Any) -> None:
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO limited VALUES (%s)", rows)

    with psycopg.connect(db) as conn:
        conn.execute("CREATE TEMP TABLE limited (value text PRIMARY KEY)")
        refused = quarantine.write_isolating(conn, write, [("a",), (huge,), ("b",), ("c",)])
        assert [r.row for r in refused] == [(huge,)]
        assert refused[0].error.sqlstate == "54000"  # type: ignore[attr-defined]
        assert quarantine.is_refused(refused[0].error)
        stored = conn.execute("SELECT value FROM limited ORDER BY 1").fetchall()
        assert stored == [("a",), ("b",), ("c",)]


def test_a_quarantined_sketch_row_is_retried_through_its_stream(
    db: str, database: Database, tmp_path: Path, runner: CliRunner
) -> None:
    """``abx quarantine retry`` knows every stream the writer quarantines, sketches included."""
    from service.inference.sketches import SKETCHES

    def sketch(n: int) -> tuple[Any, ...]:
        return ("exp", "a", "sha", NOW, "output:p", [0.0, 0.5, 1.0], [3, 4], 0, 0, 0, n, 3.5, 2.5)

    writer = BatchWriter(database, {SKETCHES.table: SKETCHES})
    writer.put(SKETCHES.table, sketch(2**70))  # 22003: out of bigint
    assert writer.flush()
    env = {"ABX_DATABASE_URL": db, "ABX_DATA_DIR": str(tmp_path / "data")}
    with psycopg.connect(db, autocommit=True) as conn:
        (row,) = quarantine.list_rows(conn)
        assert row.stream == "model_sketches"
        conn.execute(
            "UPDATE quarantine SET row_json = %s WHERE quarantine_id = %s",
            (quarantine.row_json(sketch(7)), row.quarantine_id),
        )  # an operator repaired it
    retried = runner.invoke(main, ["quarantine", "retry", str(row.quarantine_id)], env=env)
    assert retried.exit_code == 0 and "written 1, refused again 0" in retried.output
    assert stored(db, "SELECT n, counts, edges FROM model_sketches") == [
        (7, [3, 4], [0.0, 0.5, 1.0])
    ]
