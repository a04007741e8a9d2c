"""Output tables: the name checked strictly (pure), the table made typed and guarded (PostgreSQL)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import psycopg
import pytest

from service.jobs import tables
from service.jobs.targets import TableName, TableNameProblem, parse_table_name


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("scores", TableName("public", "scores")),
        ("analytics.churn_scores_2026", TableName("analytics", "churn_scores_2026")),
        ("_x._y", TableName("_x", "_y")),
        ("a" * 63, TableName("public", "a" * 63)),
    ],
)
def test_plain_lower_case_names_pass(text: str, expected: TableName) -> None:
    assert parse_table_name(text) == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        (".scores", "schema name is empty"),
        ("analytics.", "table name is empty"),
        ("a.b.c", "one dot"),
        ("Scores", "lower-case"),
        ('"scores"', "lower-case"),
        ("scores; DROP TABLE x", "lower-case"),
        ("score-table", "lower-case"),
        ("1scores", "starting with"),
        ("sc\u00f6res", "lower-case"),
        ("a" * 64, "longer than 63"),
        ("pg_catalog.scores", "belongs to PostgreSQL"),
        ("pg_temp.scores", "belongs to PostgreSQL"),
        ("information_schema.scores", "belongs to PostgreSQL"),
    ],
)
def test_other_names_are_refused_with_the_reason(text: str, why: str) -> None:
    with pytest.raises(TableNameProblem, match=why):
        parse_table_name(text)


def _columns(conn: psycopg.Connection, schema: str, table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_schema = %s AND table_name = %s",
        (schema, table),
    ).fetchall()
    return dict(rows)


def test_the_table_is_made_typed_marked_and_keyed(db: str) -> None:
    name = TableName("public", "churn_scores")
    scored = pd.DataFrame(
        {"unit": ["u1", "u2"], "variant": ["a", "b"], "reason": ["hashed", "hashed"],
         "served_by": ["a", "b"], "probability": [0.25, 0.5], "margin": [1.5, np.nan]},
        index=[3, 7],
    )  # fmt: skip
    job = "11111111-1111-1111-1111-111111111111"
    with psycopg.connect(db, autocommit=True) as conn:
        tables.ensure_table(conn, name, ["probability", "margin"])
        tables.ensure_table(conn, name, ["probability", "margin"])  # again: it is checked
        assert _columns(conn, "public", "churn_scores") == {
            "job_id": "uuid", "row_number": "bigint", "unit": "text", "variant": "text",
            "reason": "text", "served_by": "text", "probability": "double precision",
            "margin": "double precision", "scored_at": "timestamp with time zone",
        }  # fmt: skip
        with conn.transaction():
            tables.insert_rows(conn, name, job, scored, ["probability", "margin"])
        rows = conn.execute(
            "SELECT job_id::text, row_number, unit, variant, probability, margin"
            " FROM churn_scores ORDER BY row_number"
        ).fetchall()
        assert rows == [(job, 3, "u1", "a", 0.25, 1.5), (job, 7, "u2", "b", 0.5, None)]
        # The same input row twice: the key refuses it, as a problem of the table.
        with pytest.raises(tables.TableProblem, match="refused the rows"), conn.transaction():
            tables.insert_rows(conn, name, job, scored.iloc[:1], ["probability", "margin"])
        assert conn.execute("SELECT count(*) FROM churn_scores").fetchone() == (2,)
        # Texts CSV must quote, doubles at full precision, an empty output a NULL: the rows
        # as COPY's CSV format reads them back.
        odd = pd.DataFrame(
            {"unit": ['a,"b"\nc', "é 𝔘", "NULL"], "variant": ["a", "b", "a"],
             "reason": ["hashed"] * 3, "served_by": ["a", "a", "a"],
             "probability": [0.1 + 0.2, 1e-310, 5e300], "margin": [np.nan, -0.0, 1 / 3]},
            index=[10, 11, 12],
        )  # fmt: skip
        with conn.transaction():
            tables.insert_rows(conn, name, job, odd, ["probability", "margin"])
        rows = conn.execute(
            "SELECT row_number, unit, served_by, probability, margin FROM churn_scores"
            " WHERE row_number >= 10 ORDER BY row_number"
        ).fetchall()
        assert rows == [(10, 'a,"b"\nc', "a", 0.1 + 0.2, None), (11, "é 𝔘", "a", 1e-310, -0.0),
                        (12, "NULL", "a", 5e300, 1 / 3)]  # fmt: skip
        # Another job's outputs do not fit the table made for these.
        with pytest.raises(tables.TableProblem, match="other columns"):
            tables.ensure_table(conn, name, ["probability"])


def test_tables_abx_did_not_make_are_refused(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE theirs (unit text)")
        conn.execute("CREATE VIEW their_view AS SELECT 1 AS one")
        conn.execute("CREATE SCHEMA analytics")
        for taken in ("public.score_jobs", "public.api_keys", "public.theirs", "their_view"):
            with pytest.raises(tables.TableProblem, match="not made by an abx scoring job"):
                tables.ensure_table(conn, parse_table_name(taken), ["probability"])
        with pytest.raises(tables.TableProblem, match="no schema 'nowhere'"):
            tables.check_target(conn, parse_table_name("nowhere.scores"))
        assert tables.check_target(conn, parse_table_name("analytics.scores")) is False
        for clash in ("unit", "row_number", "scored_at", "x" * 64):
            with pytest.raises(tables.TableProblem):
                tables.ensure_table(conn, parse_table_name("analytics.scores"), [clash])
        assert conn.execute("SELECT count(*) FROM theirs").fetchone() == (0,)
        assert tables.check_target(conn, parse_table_name("analytics.scores")) is False
