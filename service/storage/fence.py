"""Watermarks over identity columns that never pass over a row still being written.

The rollup reads exposures and predictions past a watermark (``pk > last seen``).
Identity values are handed out at insert but become visible at commit, so a
writer holding pk 100 can commit after another writer's pk 101; a watermark
moved to 101 in between would skip row 100 for good. Every batch write holds
this advisory lock shared for its transaction, and the rollup takes it
exclusively for an instant to read the largest pk of each table: with no write
in flight, every row up to those has committed, and any later row numbers above
(the identity sequences hand out one value at a time: no per-session cache).
"""

from __future__ import annotations

from typing import Any, NamedTuple

FENCE_KEY = 0x616278_04  # "abx" + 4


class CommittedThrough(NamedTuple):
    exposures: int
    predictions: int


def hold_for_write(conn: Any) -> None:
    """Call inside the writing transaction, before its inserts."""
    conn.execute("SELECT pg_advisory_xact_lock_shared(%s)", (FENCE_KEY,))


def committed_through(conn: Any) -> CommittedThrough:
    """The largest pks below which no write is in flight (a transaction of its own)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (FENCE_KEY,))
        row = conn.execute(
            "SELECT (SELECT coalesce(max(exposure_pk), 0) FROM exposures),"
            " (SELECT coalesce(max(prediction_id), 0) FROM predictions)"
        ).fetchone()
    return CommittedThrough(*row)
