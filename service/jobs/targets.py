"""A scoring job's output table, named and checked before anything touches the database.

Pure: no psycopg. Only plain lower-case identifiers pass (``schema.table``, or ``table`` for
``public.table``): nothing to quote, no case folding, nothing PostgreSQL would truncate, so
the name a user typed is the name in the catalog and in every query they write afterwards.
System schemas are refused; whether the table may be written at all (abx made it, or it is
absent) is the database side's check (``tables.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
MAX_IDENTIFIER_BYTES = 63
"""PostgreSQL's NAMEDATALEN - 1: a longer name would be silently cut."""
DEFAULT_SCHEMA = "public"
SYSTEM_SCHEMAS = ("information_schema",)
"""Besides every schema whose name starts with ``pg_`` (reserved by PostgreSQL)."""


class TableNameProblem(ValueError):
    """A name that is not ``schema.table`` of plain lower-case identifiers."""


@dataclass(frozen=True)
class TableName:
    schema: str
    table: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"


def _identifier(part: str, what: str) -> str:
    if not part:
        raise TableNameProblem(f"the {what} name is empty")
    if len(part.encode()) > MAX_IDENTIFIER_BYTES:
        raise TableNameProblem(f"the {what} name is longer than {MAX_IDENTIFIER_BYTES} bytes")
    if not IDENTIFIER.fullmatch(part):
        raise TableNameProblem(
            f"the {what} name {part[:80]!r} must be lower-case letters, digits and _,"
            " starting with a letter or _"
        )
    return part


def parse_table_name(text: str) -> TableName:
    """``schema.table`` or ``table`` (in ``public``); raise ``TableNameProblem`` otherwise."""
    parts = text.split(".")
    if len(parts) > 2:
        raise TableNameProblem("a table is named schema.table or table, with one dot at most")
    schema = _identifier(parts[0], "schema") if len(parts) == 2 else DEFAULT_SCHEMA
    table = _identifier(parts[-1], "table")
    if schema.startswith("pg_") or schema in SYSTEM_SCHEMAS:
        raise TableNameProblem(f"schema {schema!r} belongs to PostgreSQL")
    return TableName(schema, table)
