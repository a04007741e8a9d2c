"""A row that commits after a higher-numbered one is still rolled up.

Identity values are handed out at insert and become visible at commit, so two
writers can commit out of order; a rollup reading ``pk > watermark`` between
the two commits must not move its watermark past the row still in flight. And an
outcome is attributed only to an exposure the same round has counted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from service.assignment.sticky import EXPOSURES
from service.events.ingest import ingest_rows
from service.events.rollup import roll_up_once
from service.inference.records import PREDICTIONS, PredictionRecord
from service.storage.writer import Stream, write_stream

WINDOW = timedelta(days=7)
GRACE = timedelta(hours=1)


def exposure(unit: str) -> tuple[Any, ...]:
    return ("exp", "exp.v1", unit, "a", datetime.now(UTC))


def prediction(unit: str) -> tuple[Any, ...]:
    return PredictionRecord(
        "exp", unit, "a", "hashed", True, "a", "0" * 64, "CPUExecutionProvider", 1, 1.5,
        False, None, False, False, None, None, datetime.now(UTC),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("stream", "row", "rolled_up"),
    [
        (EXPOSURES, exposure, "SELECT coalesce(sum(units), 0) FROM exposure_counts"),
        (PREDICTIONS, prediction, "SELECT coalesce(sum(requests), 0) FROM model_health"),
    ],
    ids=["exposures", "predictions"],
)
def test_a_row_committed_after_a_higher_numbered_one_is_rolled_up(
    db: str, stream: Stream, row: Callable[[str], tuple[Any, ...]], rolled_up: str
) -> None:
    with (
        psycopg.connect(db, autocommit=True) as late,
        psycopg.connect(db, autocommit=True) as early,
        psycopg.connect(db, autocommit=True) as rollup,
    ):
        runner = threading.Thread(target=roll_up_once, args=(rollup, lambda key: WINDOW, GRACE))
        with late.transaction():
            write_stream(late, [row("late")], stream, clear=False)  # numbered first, committed last
            with early.transaction():
                write_stream(early, [row("early")], stream, clear=False)  # numbered next, committed
            runner.start()
            runner.join(1.0)  # unfenced, it would have passed over the late row by now
        runner.join(10)
        assert not runner.is_alive()
        roll_up_once(rollup, lambda key: WINDOW, GRACE)
        counted = rollup.execute(rolled_up).fetchone()
    assert counted is not None and counted[0] == 2


class CommitsBeforeStatement:
    """A connection that lets another writer commit just before a chosen statement runs."""

    def __init__(self, conn: psycopg.Connection[Any], marker: str, commit: Callable[[], None]):
        self._conn = conn
        self._marker = marker
        self._commit: Callable[[], None] | None = commit

    def execute(self, query: str, params: Any = None) -> Any:
        if self._commit is not None and self._marker in query:
            self._commit, commit = None, self._commit
            commit()
        return self._conn.execute(query, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_an_outcome_is_attributed_only_once_its_exposure_is_counted(db: str) -> None:
    now = datetime.now(UTC)
    units = "SELECT coalesce(sum(units), 0) FROM exposure_counts"
    attributed = "SELECT count(*) FROM outcomes WHERE status = 'attributed'"
    with (
        psycopg.connect(db, autocommit=True) as writer,
        psycopg.connect(db, autocommit=True) as rollup,
    ):
        with rollup.transaction():
            ingest_rows(rollup, [("exp", "exp.v1", "e1", "u1", "m", "sum", 1.0, now, now, None)])

        def expose() -> None:
            with writer.transaction():
                write_stream(writer, [("exp", "exp.v1", "u1", "a", now)], EXPOSURES, clear=False)

        # The exposure commits after the round counted exposures, before it reads events.
        injected = CommitsBeforeStatement(rollup, "WHERE status = 'new'", expose)
        roll_up_once(injected, lambda key: WINDOW, GRACE)
        first_round = (rollup.execute(units).fetchone(), rollup.execute(attributed).fetchone())
        roll_up_once(rollup, lambda key: WINDOW, GRACE)
        second_round = (rollup.execute(units).fetchone(), rollup.execute(attributed).fetchone())
    assert first_round == ((0,), (0,))  # the outcome waits (pending) with its unit uncounted
    assert second_round == ((1,), (1,))
