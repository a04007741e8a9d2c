"""Rows the database refuses: told apart from outages, set aside, counted, never blocking.

A row PostgreSQL refuses (a NUL in a text column, a number out of range, a broken
constraint, an index entry over PostgreSQL's size limit) will be refused on every retry, so
treating it as "the database is away" would replay it, and everything queued behind it,
forever. ``write_isolating`` finds the refused rows of a batch by bisection inside
savepoints, writes the others, and ``keep`` sets the refused ones aside in the
``quarantine`` table in the same transaction, with the error, so that
``abx quarantine list|retry|drop`` can show and handle them. Only errors of SQLSTATE classes
22 (data exception), 23 (integrity constraint) and 54 (program limit exceeded: an index row
too large), and the client's own refusal to encode a value (a lone surrogate), count as
refused rows; anything else is an outage. A refusal the batch as a whole causes is no row's
fault: the bisection writes the halves, and only a row refused on its own is set aside.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from service.observability import metrics

log = logging.getLogger(__name__)

Row = Sequence[Any]
WriteRows = Callable[[Any, Sequence[Row]], None]
"""Writes rows in the caller's transaction (``conn``, rows); raises what the database says."""


REFUSED_CLASSES = ("22", "23", "54")
"""SQLSTATE classes that blame the data: data exception, integrity, program limit exceeded."""


def is_refused(error: BaseException) -> bool:
    """True when the database (or the client's encoder) refuses the data, not the connection."""
    if isinstance(error, psycopg.DataError | psycopg.IntegrityError | UnicodeEncodeError):
        return True
    return isinstance(error, psycopg.Error) and (error.sqlstate or "")[:2] in REFUSED_CLASSES


def error_text(error: BaseException) -> str:
    """The error as text PostgreSQL can store (the value it names may hold a NUL or a surrogate)."""
    text = f"{type(error).__name__}: {error}"
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\x00", "\\x00")


def row_json(row: Row) -> str:
    """The row as ASCII JSON: what PostgreSQL refused in its own column fits in ``text``."""
    return json.dumps(
        [value.isoformat() if isinstance(value, datetime) else value for value in row],
        ensure_ascii=True,
        default=str,
    )


@dataclass(frozen=True)
class Refused:
    row: Row
    error: BaseException


def write_isolating(conn: Any, write: WriteRows, rows: Sequence[Row]) -> list[Refused]:
    """Write every row the database accepts; return the refused ones with their errors.

    Each attempt runs in a savepoint, halving the batch on a refusal, so k bad rows among n
    cost about 2·k·log2(n) small writes. Errors that are not refusals propagate (the caller's
    transaction is then lost, as for any outage).
    """
    try:
        with conn.transaction():
            write(conn, rows)
        return []
    except Exception as error:
        if not is_refused(error):
            raise
        if len(rows) == 1:
            return [Refused(rows[0], error)]
    middle = len(rows) // 2
    return write_isolating(conn, write, rows[:middle]) + write_isolating(conn, write, rows[middle:])


def keep(conn: Any, stream: str, source: str, refused: Sequence[Refused]) -> None:
    """Insert refused rows into ``quarantine`` in the caller's transaction; count and log them."""
    if not refused:
        return
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO quarantine (stream, row_json, error, sqlstate, source)"
            " VALUES (%s, %s, %s, %s, %s)",
            [
                (
                    stream,
                    row_json(item.row),
                    error_text(item.error),
                    getattr(item.error, "sqlstate", None),
                    source,
                )
                for item in refused
            ],
        )
    metrics.QUARANTINED.labels(stream).inc(len(refused))
    log.error(
        "quarantined %d %s row(s) the database refused (first: %s); see `abx quarantine list`",
        len(refused),
        stream,
        error_text(refused[0].error),
    )


@dataclass(frozen=True)
class QuarantinedRow:
    quarantine_id: int
    stream: str
    row: list[Any]
    error: str
    sqlstate: str | None
    source: str
    quarantined_at: datetime


def list_rows(conn: Any, stream: str | None = None, limit: int = 100) -> list[QuarantinedRow]:
    rows = conn.execute(
        "SELECT quarantine_id, stream, row_json, error, sqlstate, source, quarantined_at"
        " FROM quarantine WHERE %(stream)s::text IS NULL OR stream = %(stream)s"
        " ORDER BY quarantine_id LIMIT %(limit)s",
        {"stream": stream, "limit": limit},
    ).fetchall()
    return [
        QuarantinedRow(qid, name, json.loads(text), error, sqlstate, source, at)
        for qid, name, text, error, sqlstate, source, at in rows
    ]


def count_rows(conn: Any) -> int:
    return int(conn.execute("SELECT count(*) FROM quarantine").fetchone()[0])


def drop_rows(conn: Any, ids: Sequence[int] | None) -> int:
    """Delete the given quarantined rows (all of them when ``ids`` is None); return how many."""
    if ids is None:
        return int(conn.execute("DELETE FROM quarantine").rowcount)
    return int(
        conn.execute("DELETE FROM quarantine WHERE quarantine_id = ANY(%s)", (list(ids),)).rowcount
    )


def retry_rows(
    conn: Any, writers: dict[str, WriteRows], ids: Sequence[int] | None
) -> tuple[int, int]:
    """Write quarantined rows again through their stream; return (written, still refused).

    Rows written are removed from the quarantine; rows refused again stay, with the new error.
    """
    selected = conn.execute(
        "SELECT quarantine_id, stream, row_json FROM quarantine"
        " WHERE %(all)s OR quarantine_id = ANY(%(ids)s) ORDER BY quarantine_id FOR UPDATE",
        {"all": ids is None, "ids": list(ids or [])},
    ).fetchall()
    written = refused_again = 0
    for qid, stream, text in selected:
        write = writers.get(stream)
        if write is None:
            continue
        refused = write_isolating(conn, write, [json.loads(text)])
        if refused:
            refused_again += 1
            conn.execute(
                "UPDATE quarantine SET error = %s, sqlstate = %s WHERE quarantine_id = %s",
                (error_text(refused[0].error), getattr(refused[0].error, "sqlstate", None), qid),
            )
        else:
            written += 1
            conn.execute("DELETE FROM quarantine WHERE quarantine_id = %s", (qid,))
    return written, refused_again
