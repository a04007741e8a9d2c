"""The batch writer backs off while PostgreSQL is away, however fast rows keep coming."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime

import pytest

from service.assignment.sticky import EXPOSURES
from service.storage.database import Database
from service.storage.writer import BatchWriter


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
