"""``abx quarantine``: see, retry and drop the rows and spool segments set aside as refused."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import click

from service.cli.support import database_connection, settings_from_env


def _spool_folders() -> list[Path]:
    settings = settings_from_env()
    return [settings.spool_path, settings.writes_spool_path]


def _segments() -> list[Path]:
    from service.storage.spool import QUARANTINE_FOLDER

    return [
        path
        for folder in _spool_folders()
        for path in sorted((folder / QUARANTINE_FOLDER).glob("*.spool"))
    ]


def _writers() -> dict[str, Any]:
    """How each stream's rows are written again (the same statements as the live writers)."""
    from functools import partial

    from service.assignment.sticky import ASSIGNMENTS, EXPOSURE_ATTRIBUTES, EXPOSURES
    from service.events.ingest import ingest_and_clear
    from service.inference.records import PREDICTIONS, REGISTRY_VERSIONS
    from service.inference.sketches import SKETCHES
    from service.storage.writer import write_stream

    streams = (
        ASSIGNMENTS,
        EXPOSURES,
        EXPOSURE_ATTRIBUTES,
        PREDICTIONS,
        REGISTRY_VERSIONS,
        SKETCHES,
    )
    writers: dict[str, Any] = {
        stream.table: partial(write_stream, stream=stream) for stream in streams
    }
    writers["outcomes"] = ingest_and_clear
    return writers


def _ids(ids: tuple[int, ...], every: bool) -> list[int] | None:
    if every == bool(ids):
        click.echo("name quarantine ids, or --all (not both)", err=True)
        sys.exit(2)
    return None if every else list(ids)


@click.group()
def quarantine() -> None:
    """Rows the database refused, and spool segments that kept failing to replay."""


@quarantine.command("list")
@click.option("--stream", help="Only this stream (outcomes, exposures, assignments, predictions).")
@click.option("--limit", default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_command(stream: str | None, limit: int, as_json: bool) -> None:
    """Show quarantined rows (with the error) and segments moved aside."""
    from service.storage.quarantine import count_rows, list_rows

    with database_connection() as conn:
        rows = list_rows(conn, stream, limit)
        total = count_rows(conn)
    segments = _segments()
    for row in rows:
        if as_json:
            item = {
                "id": row.quarantine_id,
                "stream": row.stream,
                "source": row.source,
                "error": row.error,
                "sqlstate": row.sqlstate,
                "quarantined_at": row.quarantined_at.isoformat(),
                "row": row.row,
            }
            click.echo(json.dumps(item, ensure_ascii=True))
        else:
            click.echo(
                f"{row.quarantine_id}\t{row.stream}\t{row.source}\t"
                f"{row.quarantined_at:%Y-%m-%d %H:%M:%S}\t{row.error}\t"
                f"{json.dumps(row.row, ensure_ascii=True)[:200]}"
            )
    for path in segments:
        if as_json:
            click.echo(json.dumps({"segment": str(path), "bytes": path.stat().st_size}))
        else:
            click.echo(f"segment\t{path}\t{path.stat().st_size} bytes")
    if not as_json:
        click.echo(f"{total} quarantined row(s), {len(segments)} segment(s) moved aside", err=True)


@quarantine.command("retry")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "every", is_flag=True, help="Every quarantined row and segment.")
def retry(ids: tuple[int, ...], every: bool) -> None:
    """Write rows again (those the database now takes leave the quarantine); segments go back
    to their spool, where a running server replays them."""
    from service.storage.quarantine import retry_rows

    selected = _ids(ids, every)
    with database_connection() as conn, conn.transaction():
        written, refused = retry_rows(conn, _writers(), selected)
    moved = 0
    if every:
        for path in _segments():
            shutil.move(path, path.parent.parent / path.name)
            moved += 1
    click.echo(
        f"written {written}, refused again {refused}; {moved} segment(s) back in their spool"
    )
    if refused:
        sys.exit(1)


@quarantine.command("drop")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "every", is_flag=True, help="Every quarantined row and segment.")
def drop(ids: tuple[int, ...], every: bool) -> None:
    """Delete quarantined rows for good (after saving them elsewhere if they matter)."""
    from service.storage.quarantine import drop_rows

    selected = _ids(ids, every)
    with database_connection() as conn:
        dropped = drop_rows(conn, selected)
    removed = 0
    if every:
        for path in _segments():
            path.unlink()
            removed += 1
    click.echo(f"dropped {dropped} row(s) and {removed} segment(s)")
