"""The batch writer backs off while PostgreSQL is away, however fast rows keep coming."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import psycopg
import pytest

from service.assignment.sticky import EXPOSURES
from service.storage.database import Database
from service.storage.writer import BatchWriter
from tests.conftest import wait_for


def test_rows_arriving_during_an_outage_do_not_cut_the_back_off_short(
    caplog: pytest.LogCaptureFixture,
) -> None:
    database = Database("postgresql://abx@127.0.0.1:1/none")  # never opened: every flush fails
    writer = BatchWriter(database, {EXPOSURES.table: EXPOSURES}, flush_interval=0.05, max_rows=5)
    caplog.set_level(logging.WARNING, logger="service.storage.writer")
    writer.start()
    deadline = time.monotonic() + 1.0
    unit = 0
    while time.monotonic() < deadline:  # a steady stream, well past one batch
        unit += 1
        assert writer.put(EXPOSURES.table, ("exp", "exp.v1", f"u{unit}", "a", datetime.now(UTC)))
        time.sleep(0.001)
    attempts = [r for r in caplog.records if r.getMessage().startswith("flush failed")]
    pending = writer.pending_rows()
    writer.close(timeout=2.0)
    # The fifth row wakes the writer at once; then back-offs of 0.2, 0.4 and 0.8 s: three
    # attempts in the second (893 when every row past a batch woke it).
    assert 1 <= len(attempts) <= 5, f"{len(attempts)} flush attempts in one second"
    assert pending == unit  # nothing acknowledged was dropped meanwhile


def test_a_callers_flush_waits_for_the_batch_the_thread_has_in_flight(db: str) -> None:
    """True from flush() means committed, even while the writer thread's own flush is stuck
    on a lock; and the in-flight batch keeps counting as unflushed meanwhile."""
    database = Database(db)
    database.open()
    writer = BatchWriter(database, {EXPOSURES.table: EXPOSURES}, flush_interval=0.05)
    blocker = psycopg.connect(db)
    blocker.execute("LOCK TABLE exposures IN ACCESS EXCLUSIVE MODE")  # held until rollback
    writer.start()
    try:
        writer.put(EXPOSURES.table, ("exp", "exp.v1", "in-flight", "a", datetime.now(UTC)))
        assert wait_for(lambda: writer.pending_rows() == 0, timeout=5)  # the thread took it
        result: list[bool] = []
        caller = threading.Thread(target=lambda: result.append(writer.flush()))
        caller.start()
        time.sleep(0.5)
        assert result == []  # not "all written" while the thread's batch waits on the lock
        assert writer.oldest_unflushed() is not None
        blocker.rollback()
        caller.join(timeout=10)
        assert result == [True]
        with psycopg.connect(db) as conn:
            assert conn.execute(
                "SELECT count(*) FROM exposures WHERE unit_id = 'in-flight'"
            ).fetchone() == (1,)
        assert writer.oldest_unflushed() is None
    finally:
        blocker.close()
        writer.close(timeout=5)
        database.close()
