"""The ``predictions`` stream: one row per answer and per shadow run, buffered off the request path."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from service.storage.writer import BatchWriter, Stream

_COLUMNS = (
    "experiment_key", "unit_id", "variant_key", "reason", "in_experiment", "served_by",
    "model_sha256", "provider", "batch_rows", "latency_ms", "fallback", "failure", "cached",
    "shadow", "agreement", "max_abs_diff", "predicted_at",
)  # fmt: skip
PREDICTIONS = Stream(
    table="predictions",
    columns=_COLUMNS,
    insert_from_stage=(
        f"INSERT INTO predictions ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS)} FROM {{stage}}"
    ),
)


class PredictionRecord(NamedTuple):
    """A row of ``predictions``, in column order (a tuple already: no copy to buffer it)."""

    experiment_key: str
    unit_id: str
    variant_key: str
    reason: str
    in_experiment: bool
    served_by: str
    model_sha256: str
    provider: str
    batch_rows: int
    latency_ms: float
    fallback: bool
    failure: str | None
    cached: bool
    shadow: bool
    agreement: float | None
    max_abs_diff: float | None
    predicted_at: datetime


class PredictionLog:
    def __init__(self, writer: BatchWriter) -> None:
        self._writer = writer

    def record(self, record: PredictionRecord) -> None:
        self._writer.put(PREDICTIONS.table, record)
