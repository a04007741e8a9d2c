"""``abx backup`` and ``abx restore``: the database part of the runbook in docs/operations.md."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from service.cli.support import settings_from_env
from service.storage.embedded import database_url


@click.command()
@click.argument("output", type=click.Path(dir_okay=False, path_type=Path))
def backup(output: Path) -> None:
    """Write a consistent dump of ABX_DATABASE_URL to OUTPUT (pg_dump, custom format).

    Safe while the service runs: the dump is one snapshot and blocks no writer.
    """
    from service.storage.backup import BackupError, backup_database

    settings = settings_from_env()
    try:
        backup_database(database_url(settings.database_url, settings.data_dir), output)
    except BackupError as error:
        click.echo(f"backup failed: {error}", err=True)
        sys.exit(1)
    click.echo(f"{output}: {output.stat().st_size:,} bytes")


@click.command()
@click.argument("dump", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def restore(dump: Path) -> None:
    """Load DUMP (from `abx backup`) into the empty database at ABX_DATABASE_URL.

    Then applies the migrations newer than the dump. Refuses a database that has tables.
    """
    from service.storage.backup import BackupError, restore_database

    settings = settings_from_env()
    try:
        applied = restore_database(
            database_url(settings.database_url, settings.data_dir), dump, settings.migrations
        )
    except BackupError as error:
        click.echo(f"restore failed: {error}", err=True)
        sys.exit(1)
    click.echo(f"restored {dump}" + (f"; then applied {', '.join(applied)}" if applied else ""))
