"""A scoring job's PostgreSQL output table: made if absent, checked, and filled chunk by chunk.

The table lives in the database abx uses. abx writes only to a table it made itself: it
marks each one with a comment (``MARKER``) and refuses any other relation of that name, so
a job can never append to abx's own tables or to a table someone else owns. Columns are
typed: ``job_id uuid``, ``row_number bigint`` (the input's 0-based data row), ``unit``,
``variant``, ``reason``, ``served_by`` (text), one ``double precision`` column per model
output, and ``scored_at``. ``(job_id, row_number)`` is the primary key, so the database
itself refuses a row scored twice.

A chunk's rows are written with ``insert_rows`` on the connection, and in the transaction,
that commits the chunk's progress (``run.py``): a killed worker leaves either both or
neither, and the resumed job redoes exactly the chunks whose rows are not there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pa_csv
from psycopg import sql

from service.jobs.targets import MAX_IDENTIFIER_BYTES, TableName

MARKER = "abx score output"
KEY_COLUMNS = (("job_id", "uuid"), ("row_number", "bigint"))
TEXT_COLUMNS = ("unit", "variant", "reason", "served_by")
STAMP_COLUMN = ("scored_at", "timestamp with time zone")


class TableProblem(Exception):
    """The table cannot take this job's rows (not made by abx, other columns, refused rows)."""


def expected_columns(outputs: Sequence[str]) -> dict[str, str]:
    """Column name to its type as ``format_type`` spells it, for a job with these outputs."""
    columns = dict(KEY_COLUMNS)
    columns.update(dict.fromkeys(TEXT_COLUMNS, "text"))
    for name in outputs:
        if name in columns or name == STAMP_COLUMN[0]:
            raise TableProblem(f"the model output {name!r} has the name of a fixed column")
        if len(name.encode()) > MAX_IDENTIFIER_BYTES:
            raise TableProblem(f"the model output {name[:40]!r}... is too long for a column name")
        columns[name] = "double precision"
    columns[STAMP_COLUMN[0]] = STAMP_COLUMN[1]
    return columns


def _relation(conn: Any, name: TableName) -> tuple[int, str, str | None] | None:
    row = conn.execute(
        "SELECT c.oid, c.relkind, obj_description(c.oid, 'pg_class') FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (name.schema, name.table),
    ).fetchone()
    return (int(row[0]), str(row[1]), row[2]) if row else None


def check_target(conn: Any, name: TableName) -> bool:
    """Whether the table exists; raise ``TableProblem`` when abx may not write to it."""
    if (
        conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (name.schema,)).fetchone()
        is None
    ):
        raise TableProblem(f"there is no schema {name.schema!r} (abx creates tables, not schemas)")
    relation = _relation(conn, name)
    if relation is None:
        return False
    _, kind, comment = relation
    if kind != "r" or comment != MARKER:
        raise TableProblem(
            f"{name.qualified} exists and was not made by an abx scoring job; name a new table"
        )
    return True


def ensure_table(conn: Any, name: TableName, outputs: Sequence[str]) -> None:
    """Create the table for these outputs if absent; else check it has exactly their columns."""
    wanted = expected_columns(outputs)
    digest = hashlib.sha256(f"abx-score-table:{name.qualified}".encode()).digest()
    with conn.transaction():  # two jobs naming one new table: one creates, the other checks
        conn.execute(
            "SELECT pg_advisory_xact_lock(%s)", (int.from_bytes(digest[:8], "big", signed=True),)
        )
        if not check_target(conn, name):
            identifier = sql.Identifier(name.schema, name.table)
            columns = [
                sql.SQL("{} {}").format(sql.Identifier(column), sql.SQL(kind))
                for column, kind in wanted.items()
            ]
            conn.execute(
                sql.SQL("CREATE TABLE {} ({}, PRIMARY KEY (job_id, row_number))").format(
                    identifier, sql.SQL(", ").join(columns)
                )
            )
            conn.execute(
                sql.SQL("ALTER TABLE {} ALTER COLUMN scored_at SET DEFAULT now()").format(
                    identifier
                )
            )
            conn.execute(
                sql.SQL("COMMENT ON TABLE {} IS {}").format(identifier, sql.Literal(MARKER))
            )
            return
        relation = _relation(conn, name)
        assert relation is not None
        found = dict(
            conn.execute(
                "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute"
                " WHERE attrelid = %s AND attnum > 0 AND NOT attisdropped",
                (relation[0],),
            ).fetchall()
        )
    if found != wanted:
        differ = sorted(set(found.items()) ^ set(wanted.items()))
        raise TableProblem(
            f"{name.qualified} has other columns than this job's outputs need"
            f" (differing: {', '.join(f'{c} {t}' for c, t in differ)})"
        )


def insert_rows(
    conn: Any, name: TableName, job_id: str, scored: pd.DataFrame, outputs: Sequence[str]
) -> None:
    """COPY one chunk's scores, keyed by the input row numbers in ``scored``'s index.

    The rows go as one CSV block that Arrow writes from the columns (no Python object per
    row or cell): every text quoted, a NaN output (a variant without that output) an unquoted
    empty field, which COPY's CSV format reads as NULL; doubles in their shortest exact form."""
    columns = [c for c, _ in KEY_COLUMNS] + list(TEXT_COLUMNS) + list(outputs)
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
        sql.Identifier(name.schema, name.table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    rows = len(scored)
    arrays: list[pa.Array] = [
        pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)),
                                       pa.array([job_id])).cast(pa.string()),
        pa.array(np.asarray(scored.index, dtype=np.int64)),
    ]  # fmt: skip
    arrays += [pa.array(scored[column], type=pa.string()) for column in TEXT_COLUMNS]
    arrays += [pa.array(np.asarray(scored[column], dtype=np.float64), from_pandas=True)
               for column in outputs]  # fmt: skip
    block = pa.BufferOutputStream()
    pa_csv.write_csv(pa.Table.from_arrays(arrays, names=columns), block,
                     pa_csv.WriteOptions(include_header=False, quoting_style="all_valid"))  # fmt: skip
    try:
        with conn.cursor() as cursor, cursor.copy(statement) as copy:
            copy.write(block.getvalue().to_pybytes())
    except psycopg.OperationalError:
        raise  # the database is away: the chunk is redone when it is back
    except psycopg.DatabaseError as error:
        raise TableProblem(f"{name.qualified} refused the rows: {error}".strip()) from error
