"""COPY rows into a per-session staging table shaped like their target (both writers use it).

The staging table is a temporary table emptied at commit, so a batch is COPYed (the fastest
way into PostgreSQL) and then moved into the real table by one ``INSERT … SELECT`` that may
deduplicate or add defaults, all inside the caller's transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def copy_to_stage(
    conn: Any, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> str:
    """COPY ``rows`` into ``stage_<table>`` (created on first use); return the stage's name.

    A row shorter than ``columns`` gets NULL for the columns it lacks: rows spooled or
    quarantined by an older version, before a nullable column was appended to the stream
    (``predictions.mean_abs_diff``, 0023), are stored instead of refused.
    """
    stage = f"stage_{table}"
    names = ", ".join(columns)
    conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS"
        f" AS SELECT {names} FROM {table} WITH NO DATA"
    )
    width = len(columns)
    with conn.cursor().copy(f"COPY {stage} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row if len(row) >= width else (*row, *(None,) * (width - len(row))))
    return stage


def clear_stage(conn: Any, table: str) -> None:
    """Empty ``stage_<table>`` before commit, when one transaction stages several batches.

    Rows stay staged until the commit, so a second batch staged in the same transaction
    would otherwise move the first one in again.
    """
    conn.execute(f"DELETE FROM stage_{table}")
