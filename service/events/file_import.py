"""``abx events import``: backfill historical outcomes from CSV or NDJSON, straight to PostgreSQL.

The whole file is validated before anything is written (like a request), then
ingested in chunks through the same deduplicating path as ``POST /v1/events``,
so importing a file twice counts nothing twice.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from service.events.ingest import ingest_rows
from service.events.validation import EventError, OutcomeRow, validate_events
from service.experiments.schema import Experiment

CHUNK = 5000
CSV_FIELDS = ("event_id", "experiment", "unit", "metric", "value", "timestamp")


def _csv_events(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [f for f in CSV_FIELDS[:5] if f not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: the CSV header lacks {', '.join(missing)}")
        for record in reader:
            event: dict[str, Any] = {k: record[k] for k in CSV_FIELDS if record.get(k)}
            value = event.get("value", "")
            try:
                event["value"] = float(value)
            except ValueError:
                event["value"] = {"true": True, "false": False}.get(str(value).lower(), value)
            if record.get("properties"):
                event["properties"] = json.loads(record["properties"])
            yield event


def _ndjson_events(path: Path) -> Iterator[Any]:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}:{number}: not valid JSON: {error}") from error


def read_events(path: Path) -> list[Any]:
    if path.suffix.lower() == ".csv":
        return list(_csv_events(path))
    return list(_ndjson_events(path))


def validate_file(
    path: Path, experiments: dict[str, Experiment], max_future: timedelta = timedelta(minutes=5)
) -> tuple[list[OutcomeRow], list[EventError]]:
    return validate_events(read_events(path), experiments.get, datetime.now(UTC), max_future)


def import_rows(conn: Any, rows: list[OutcomeRow], progress: Callable[[int], None]) -> int:
    """Ingest in chunks (each its own transaction); return how many were new."""
    fresh = 0
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start : start + CHUNK]
        with conn.transaction():
            fresh += len(ingest_rows(conn, [row.as_tuple() for row in chunk]))
        progress(len(chunk))
    return fresh
