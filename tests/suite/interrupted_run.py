"""A test for ``test_cleanup.py`` to run in a pytest of its own (the name keeps it out of the suite).

It takes a database on the run's server and a PostgreSQL of its own, says so in the
file ``ABX_TEST_HOLDING`` names, then fails (``ABX_TEST_THEN=fail``) or waits, at most
two minutes, to be interrupted.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.suite.postgres import OwnPostgres


def test_holds_servers_then_fails_or_waits(db: str, own_postgres: OwnPostgres) -> None:
    Path(os.environ["ABX_TEST_HOLDING"]).write_text(
        json.dumps({"db": db, "own_folder": str(own_postgres.folder)})
    )
    assert os.environ.get("ABX_TEST_THEN") != "fail", "failing on purpose"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        time.sleep(0.1)
