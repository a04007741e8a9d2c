"""Back up and restore abx's database with PostgreSQL's own tools.

``pg_dump --format=custom`` takes a consistent snapshot while the service runs (one
transaction, no locks that block writers); ``pg_restore`` loads it into an empty database.
Only the database is covered: the YAML lives in git, and the spool folders of the serving
hosts hold what was acknowledged but not yet written (``docs/operations.md``, "Backup and
restore", says what to keep and the RPO and RTO that follow).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import psycopg

from service.storage.migrations import apply_migrations


class BackupError(RuntimeError):
    """A dump or restore failed, or the target database is not empty."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(f"{name} not found: install PostgreSQL's client programs")
    return path


def _run(command: list[str]) -> None:
    finished = subprocess.run(command, capture_output=True, text=True, check=False)
    if finished.returncode != 0:
        raise BackupError(finished.stderr.strip() or f"{command[0]} exited {finished.returncode}")


def backup_database(url: str, output: Path) -> None:
    """Write a consistent custom-format dump of the database at ``url`` to ``output``.

    Written to a temporary name first, so a failed dump never leaves a file that looks whole.
    """
    partial = output.with_name(output.name + ".partial")
    try:
        _run([_tool("pg_dump"), "--format=custom", "--no-owner", f"--file={partial}", url])
        partial.replace(output)
    finally:
        partial.unlink(missing_ok=True)


def tables_in(url: str) -> list[str]:
    """The tables of the public schema (an empty list: a fresh database)."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        ).fetchall()
    return [row[0] for row in rows]


def restore_database(url: str, dump: Path, migrations: Path) -> list[str]:
    """Load ``dump`` into the empty database at ``url``, then apply newer migrations.

    Refuses a database that has tables: restoring over live data would mix two histories.
    Returns the migrations applied after the restore (a dump from an older abx).
    """
    existing = tables_in(url)
    if existing:
        raise BackupError(
            f"the target database is not empty ({len(existing)} tables, e.g. {existing[0]}):"
            " restore into a new database, then point ABX_DATABASE_URL at it"
        )
    _run(
        [
            _tool("pg_restore"),
            "--no-owner",
            "--exit-on-error",
            "--single-transaction",
            f"--dbname={url}",
            str(dump),
        ]
    )
    return apply_migrations(url, migrations)
