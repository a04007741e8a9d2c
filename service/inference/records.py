"""The ``predictions`` table: one row per answer and per shadow run, buffered off the request
path, and the bounded read of its newest rows that the dashboards show.

``predictions`` holds one row per request, so it is the one table a page cannot sum whole
without scanning millions of rows. Each variant is read through its index
``(experiment_key, variant_key, predicted_at)`` backwards, newest first, up to
``RECENT_PREDICTIONS`` rows: the page states the window it covers, and the cost stays
bounded however long the experiment has run.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from service.experiments.schema import Experiment
from service.inference.shadow_report import ShadowHour, ShadowReport, report
from service.storage.writer import BatchWriter, Stream

_COLUMNS = (
    "experiment_key", "unit_id", "variant_key", "reason", "in_experiment", "served_by",
    "model_sha256", "provider", "batch_rows", "latency_ms", "fallback", "failure", "cached",
    "shadow", "agreement", "max_abs_diff", "predicted_at", "mean_abs_diff",
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
    mean_abs_diff: float | None = None
    """Shadow rows: the mean absolute output difference over the run's values."""


class PredictionLog:
    def __init__(self, writer: BatchWriter) -> None:
        self._writer = writer

    def record(self, record: PredictionRecord) -> None:
        self._writer.put(PREDICTIONS.table, record)


RECENT_PREDICTIONS = 20_000

_QUERY = """
SELECT count(*),
       percentile_cont(ARRAY[0.5, 0.9, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_ms),
       avg((failure IS NOT NULL)::int), avg(fallback::int), avg(cached::int),
       array_agg(DISTINCT provider), array_agg(DISTINCT model_sha256),
       min(predicted_at), max(predicted_at)
FROM (
    SELECT latency_ms, failure, fallback, cached, provider, model_sha256, predicted_at
    FROM predictions
    WHERE experiment_key = %s AND variant_key = %s AND shadow = %s
    ORDER BY predicted_at DESC
    LIMIT %s
) AS recent
"""


@dataclass(frozen=True)
class VariantHealth:
    variant: str
    shadow: bool
    predictions: int
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    error_rate: float
    """Share of requests where the variant's own model failed (any ``failure``)."""
    fallback_rate: float
    cached_rate: float
    providers: list[str]
    model_sha256: list[str]
    window_start: datetime
    window_end: datetime


def recent_health(
    conn: Any, experiment: Experiment, limit: int = RECENT_PREDICTIONS
) -> list[VariantHealth]:
    """The newest ``limit`` predictions of each variant, summarised; variants without any are left out.

    Shadow variants are read from their shadow rows, the others from the rows they served.
    """
    found = []
    for variant in experiment.variants:
        shadow = variant.shadow is not None
        row = conn.execute(_QUERY, (experiment.key, variant.key, shadow, limit)).fetchone()
        if row is None or not row[0]:
            continue
        count, quantiles, errors, fallbacks, cached, providers, shas, start, end = row
        found.append(
            VariantHealth(
                variant.key,
                shadow,
                int(count),
                float(quantiles[0]),
                float(quantiles[1]),
                float(quantiles[2]),
                float(quantiles[3]),
                float(errors),
                float(fallbacks),
                float(cached),
                sorted(providers),
                sorted(shas),
                start,
                end,
            )
        )
    return found


_SHADOW_HOURS = """
SELECT date_trunc('hour', predicted_at) AS hour, count(*), sum(batch_rows),
       sum(coalesce(agreement, 0) * batch_rows) FILTER (WHERE agreement IS NOT NULL),
       sum(batch_rows) FILTER (WHERE agreement IS NOT NULL),
       sum(coalesce(mean_abs_diff, max_abs_diff)),
       sum(coalesce(mean_abs_diff, max_abs_diff) ^ 2), max(max_abs_diff),
       count(coalesce(mean_abs_diff, max_abs_diff)), sum(latency_ms), sum(latency_ms * latency_ms),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms)
FROM predictions
WHERE experiment_key = %s AND variant_key = %s AND shadow AND predicted_at >= %s
GROUP BY 1 ORDER BY 1
"""
_SERVED_P99 = """
SELECT date_trunc('hour', predicted_at), percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms)
FROM predictions
WHERE experiment_key = %s AND variant_key = %s AND NOT shadow AND NOT fallback
  AND predicted_at >= %s
GROUP BY 1
"""


def shadow_hours(
    conn: Any, experiment_key: str, shadow: str, served: str, since: datetime
) -> list[ShadowHour]:
    """Per hour since ``since``: a shadow's agreement, differences and latency, and the p99
    latency of the ``served`` variant's own model over the same hour (index range reads)."""
    served_p99 = {
        hour: float(p99) for hour, p99 in conn.execute(_SERVED_P99, (experiment_key, served, since))
    }
    found = []
    for row in conn.execute(_SHADOW_HOURS, (experiment_key, shadow, since)):
        hour, runs, _rows, agreeing, rated_rows, d_sum, d_sq, d_max, d_n, l_sum, l_sq, l_p99 = row
        found.append(
            ShadowHour(
                hour, int(runs), int(rated_rows or 0), float(agreeing or 0.0), int(d_n),
                float(d_sum or 0.0), float(d_sq or 0.0),
                None if d_max is None else float(d_max), float(l_sum), float(l_sq),
                None if l_p99 is None else float(l_p99), served_p99.get(hour),
            )
        )  # fmt: skip
    return found


def shadow_reports(conn: Any, experiment: Experiment, since: datetime) -> list[ShadowReport]:
    """Every shadow variant of the experiment against the control's served model, per hour."""
    return [
        report(
            variant.key,
            experiment.control,
            variant.shadow.sample_rate,
            shadow_hours(conn, experiment.key, variant.key, experiment.control, since),
        )
        for variant in experiment.variants
        if variant.shadow is not None
    ]


_LINEAGE = (
    "SELECT variant_key, served_by, model_sha256, provider, shadow, min(predicted_at),"
    " max(predicted_at), count(*) FROM predictions WHERE experiment_key = %s"
    " GROUP BY variant_key, served_by, model_sha256, provider, shadow"
    " ORDER BY variant_key, min(predicted_at), served_by"
)


@dataclass(frozen=True)
class ServedModel:
    """One model (by checksum and provider) that answered for a variant, and when."""

    variant: str
    served_by: str
    """The variant whose model answered: the variant itself, or the fallback's on failure."""
    model_sha256: str
    provider: str
    shadow: bool
    first_served_at: datetime
    last_served_at: datetime
    predictions: int


def model_lineage(conn: Any, experiment_key: str) -> list[ServedModel]:
    """Every model that served each variant of the experiment, from the ``predictions`` rows."""
    return [
        ServedModel(str(v), str(s), str(sha), str(p), bool(sh), first, last, int(n))
        for v, s, sha, p, sh, first, last, n in conn.execute(_LINEAGE, (experiment_key,))
    ]


@dataclass(frozen=True)
class LineageEntry:
    """One model version that served a variant, with what the experiment's file says of it."""

    served_by: str
    model_sha256: str
    model_path: str | None
    """The file the experiment names for this checksum now (None: no longer configured)."""
    provider: str
    registry_version: str | None
    """The registry version the reference resolved to, for a model now served from a
    registry (None: a file, or a checksum no current reference resolves to)."""
    shadow: bool
    first_served_at: datetime
    last_served_at: datetime
    predictions: int


@dataclass(frozen=True)
class VariantLineage:
    variant: str
    models: list[LineageEntry]


def experiment_lineage(conn: Any, experiment: Experiment) -> list[VariantLineage]:
    """Every model version that served each variant, oldest first: the one read behind
    ``GET /v1/experiments/<key>/models``, the dashboards and ``abx report``.

    Variants of the file come first, in its order, each listed even when nothing served it;
    a variant that served once but has left the file follows."""
    models = [v.model for v in experiment.variants if v.model is not None]
    configured = {ref.sha256: ref.path for ref in models}
    versions = {ref.sha256: ref.resolved.version for ref in models if ref.resolved is not None}
    variants: dict[str, list[LineageEntry]] = {v.key: [] for v in experiment.variants}
    for item in model_lineage(conn, experiment.key):
        variants.setdefault(item.variant, []).append(
            LineageEntry(
                item.served_by,
                item.model_sha256,
                configured.get(item.model_sha256),
                item.provider,
                versions.get(item.model_sha256),
                item.shadow,
                item.first_served_at,
                item.last_served_at,
                item.predictions,
            )
        )
    return [VariantLineage(name, entries) for name, entries in variants.items()]
