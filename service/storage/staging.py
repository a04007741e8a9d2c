"""COPY rows into a per-session staging table shaped like their target (both writers use it).

The staging table is a temporary table emptied at commit, so a batch is COPYed (the fastest
way into PostgreSQL) and then moved into the real table by one ``INSERT … SELECT`` that may
deduplicate or add defaults, all inside the caller's transaction. ``merge_rows`` does the same
for upserts (the rollup's sums and totals): a binary COPY and one ``INSERT … ON CONFLICT``.
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


def copy_binary(
    conn: Any, table: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> int:
    """COPY ``rows`` into ``table`` in PostgreSQL's binary format; return how many.

    The columns' types are read from the catalog, so each value is sent as the column's
    own type: no text to format here or to parse there (floats go bit for bit, and a
    fifth of the cost of the text format for rows of floats and dates).
    """
    types = [
        name
        for (name,) in conn.execute(
            "SELECT format_type(a.atttypid, NULL) FROM unnest(%s::text[]) WITH ORDINALITY"
            " AS c(name, i) JOIN pg_attribute a ON a.attrelid = %s::regclass"
            " AND a.attname = c.name ORDER BY c.i",
            (list(columns), table),
        )
    ]
    copied = 0
    with conn.cursor().copy(
        f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    ) as copy:
        copy.set_types(types)
        for row in rows:
            copy.write_row(row)
            copied += 1
    return copied


def merge_rows(
    conn: Any,
    table: str,
    keys: Sequence[str],
    values: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    add: bool = True,
    kept: Sequence[str] = (),
) -> None:
    """Upsert ``rows`` (``keys``, ``kept``, ``values``) into ``table``: COPY, then one INSERT.

    A row whose key exists adds its values to the stored ones (``add``) or replaces them,
    and leaves the ``kept`` columns as stored. Each key must occur once in ``rows``. A
    binary COPY and one ``INSERT … ON CONFLICT`` cost a fraction of an ``executemany`` of
    single-row upserts (a statement and a text rendering of every value per row) and store
    the same: each stored value gets the same one addition. The stage
    (``stage_merge_<table>``, apart from the writers' stages) is emptied by the statement
    that moves its rows, so a table may be merged into several times in one transaction.
    Call it inside a transaction: in autocommit the stage would be emptied after the COPY.
    """
    stage = f"stage_merge_{table}"
    names = [*keys, *kept, *values]
    columns = ", ".join(names)
    conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS"
        f" AS SELECT {columns} FROM {table} WITH NO DATA"
    )
    if not copy_binary(conn, stage, names, rows):
        return
    updates = ", ".join(
        f"{name} = {table}.{name} + EXCLUDED.{name}" if add else f"{name} = EXCLUDED.{name}"
        for name in values
    )
    conn.execute(
        f"WITH staged AS (DELETE FROM {stage} RETURNING {columns})"
        f" INSERT INTO {table} ({columns}) SELECT {columns} FROM staged"
        f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    )
