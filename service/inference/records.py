"""The ``predictions`` table: one row per answer and per shadow run, buffered off the request
path, and the bounded read of its newest rows that the dashboards show; the
``registry_versions`` table: which registry version each loaded model was; the
``score_job_models`` table: which models a batch scoring job used, and for how many rows.

``predictions`` holds one row per request, so it is the one table a page cannot sum whole
without scanning millions of rows. Each variant is read through its index
``(experiment_key, variant_key, predicted_at)`` backwards, newest first, up to
``RECENT_PREDICTIONS`` rows: the page states the window it covers, and the cost stays
bounded however long the experiment has run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


_VERSION_COLUMNS = (
    "experiment_key", "variant_key", "model_sha256", "registry_uri", "registry_name",
    "registry_version", "first_loaded_at",
)  # fmt: skip
_VERSION_KEY = "experiment_key, variant_key, model_sha256, registry_uri, registry_version"
REGISTRY_VERSIONS = Stream(
    table="registry_versions",
    columns=_VERSION_COLUMNS,
    # Every worker loads the same versions, and a batch replayed from the spool may repeat a
    # key: one row per key with the earliest load, kept the earliest across batches.
    insert_from_stage=(
        f"INSERT INTO registry_versions AS r ({_VERSION_KEY}, registry_name, first_loaded_at)"
        f" SELECT {_VERSION_KEY}, min(registry_name), min(first_loaded_at) FROM {{stage}}"
        f" GROUP BY {_VERSION_KEY}"
        f" ON CONFLICT ({_VERSION_KEY}) DO UPDATE"
        f" SET first_loaded_at = EXCLUDED.first_loaded_at WHERE EXCLUDED.first_loaded_at < r.first_loaded_at"
    ),
)


def registry_version_rows(
    experiments: Iterable[Experiment], loaded_at: datetime
) -> list[tuple[str, str, str, str, str, str, datetime]]:
    """A ``registry_versions`` row for each variant whose model a registry resolved.

    Written when a serving process loads or reloads its experiments, never per request: the
    ``predictions`` rows of the version carry its checksum, which the lineage joins on."""
    return [
        (experiment.key, variant.key, ref.sha256, ref.resolved.uri, ref.resolved.name,
         ref.resolved.version, loaded_at)
        for experiment in experiments
        for variant in experiment.variants
        if (ref := variant.model) is not None and ref.resolved is not None
        and ref.sha256 is not None
    ]  # fmt: skip


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


class JobModel(NamedTuple):
    """A model a scoring job ran for some of its rows (a ``score_job_models`` key)."""

    variant: str
    """The rows' variant: assigned, or the job's explicit one."""
    served_by: str
    """The variant whose model answered (the fallback's when the variant's own failed)."""
    model_sha256: str
    provider: str
    registry_name: str | None
    registry_version: str | None


_RECORD_JOB_MODEL = (
    "INSERT INTO score_job_models AS m (job_id, experiment_key, variant_key, served_by,"
    " model_sha256, provider, registry_name, registry_version, first_scored_at, last_scored_at,"
    " rows_scored) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, now(), now(), %s)"
    " ON CONFLICT (job_id, variant_key, served_by, model_sha256, provider) DO UPDATE"
    " SET last_scored_at = now(), rows_scored = m.rows_scored + EXCLUDED.rows_scored"
)


def record_job_models(
    conn: Any, job_id: str, experiment_key: str, rows: Mapping[JobModel, int]
) -> None:
    """Add one committed chunk's rows to the job's lineage: one row per model, not per row.

    Called in the transaction that commits the chunk, so the counts are the committed rows."""
    if rows:
        conn.cursor().executemany(
            _RECORD_JOB_MODEL,
            [(job_id, experiment_key, *model, count) for model, count in rows.items() if count],
        )


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


_JOB_LINEAGE = (
    "SELECT variant_key, served_by, model_sha256, provider, registry_name, registry_version,"
    " min(first_scored_at), max(last_scored_at), sum(rows_scored), count(DISTINCT job_id)"
    " FROM score_job_models WHERE experiment_key = %s"
    " GROUP BY variant_key, served_by, model_sha256, provider, registry_name, registry_version"
    " ORDER BY variant_key, min(first_scored_at), served_by"
)


@dataclass(frozen=True)
class JobScored:
    """One model that scored rows of a variant in batch jobs, and when (committed chunks)."""

    variant: str
    served_by: str
    model_sha256: str
    provider: str
    registry_name: str | None
    registry_version: str | None
    first_scored_at: datetime
    last_scored_at: datetime
    rows: int
    jobs: int


def job_lineage(conn: Any, experiment_key: str) -> list[JobScored]:
    """Every model that scored each variant's rows in the experiment's scoring jobs."""
    return [
        JobScored(str(v), str(s), str(sha), str(p), name, version, first, last, int(n), int(j))
        for v, s, sha, p, name, version, first, last, n, j in conn.execute(
            _JOB_LINEAGE, (experiment_key,)
        )
    ]


_VERSIONS = (
    "SELECT variant_key, model_sha256, registry_name, registry_version, first_loaded_at"
    " FROM registry_versions WHERE experiment_key = %s ORDER BY first_loaded_at, registry_version"
)


@dataclass(frozen=True)
class LoadedVersion:
    """A registry version a variant's model was loaded as (a ``registry_versions`` row)."""

    name: str
    version: str
    first_loaded_at: datetime


def loaded_versions(conn: Any, experiment_key: str) -> dict[tuple[str, str], list[LoadedVersion]]:
    """(variant, checksum) -> the registry versions loaded for it, oldest load first."""
    found: dict[tuple[str, str], list[LoadedVersion]] = {}
    for variant, sha, name, version, at in conn.execute(_VERSIONS, (experiment_key,)):
        found.setdefault((str(variant), str(sha)), []).append(
            LoadedVersion(str(name), str(version), at)
        )
    return found


def _version_served(loads: list[LoadedVersion], last_served_at: datetime) -> LoadedVersion:
    """The version that answered last: the newest loaded before the last answer.

    One checksum has several versions only when the same bytes were registered again; the
    answers cannot tell them apart, so the lineage names the one loaded last before them."""
    before = [load for load in loads if load.first_loaded_at <= last_served_at]
    return before[-1] if before else loads[0]


@dataclass(frozen=True)
class LineageEntry:
    """One model version that served a variant, with what the experiment's file says of it."""

    served_by: str
    model_sha256: str
    model_path: str | None
    """The file the experiment names for this checksum now (None: no longer configured)."""
    provider: str
    registry_version: str | None
    """The registry version this checksum was loaded as for the variant that answered, kept
    however the aliases moved since (None: a file, not a registry model)."""
    registry_name: str | None
    """The registered model's name in the registry (None: a file)."""
    shadow: bool
    first_served_at: datetime
    """The first answer or batch-scored chunk of this model for the variant."""
    last_served_at: datetime
    predictions: int
    """Answers logged in ``predictions`` (requests; batch jobs log none)."""
    scored_rows: int = 0
    """Rows that scoring jobs scored with this model for the variant (committed chunks)."""
    score_jobs: int = 0
    """How many scoring jobs those rows came from."""


@dataclass(frozen=True)
class VariantLineage:
    variant: str
    models: list[LineageEntry]


def experiment_lineage(conn: Any, experiment: Experiment) -> list[VariantLineage]:
    """Every model version that served each variant, oldest first: the one read behind
    ``GET /v1/experiments/<key>/models``, the dashboards and ``abx report``.

    Variants of the file come first, in its order, each listed even when nothing served it;
    a variant that served once but has left the file follows. A registry model's version
    comes from ``registry_versions`` (what the serving processes loaded), joined on the
    variant that answered and the checksum; answers logged before that table existed fall
    back to the version a current reference resolves to. Batch scoring jobs add their rows
    (``score_job_models``) to the entry of the same variant, model and provider, or an entry
    of their own with the registry version the job ran."""
    models = [v.model for v in experiment.variants if v.model is not None]
    configured = {ref.sha256: ref.path for ref in models}
    current = {ref.sha256: ref.resolved for ref in models if ref.resolved is not None}
    loads = loaded_versions(conn, experiment.key)
    variants: dict[str, list[LineageEntry]] = {v.key: [] for v in experiment.variants}
    batches: dict[tuple[str, str, str, str], list[JobScored]] = {}
    for scored in job_lineage(conn, experiment.key):
        key = (scored.variant, scored.served_by, scored.model_sha256, scored.provider)
        batches.setdefault(key, []).append(scored)
    for item in model_lineage(conn, experiment.key):
        name = version = None
        if (found := loads.get((item.served_by, item.model_sha256))) is not None:
            served = _version_served(found, item.last_served_at)
            name, version = served.name, served.version
        elif (resolved := current.get(item.model_sha256)) is not None:
            name, version = resolved.name, resolved.version
        first, last, rows, jobs = item.first_served_at, item.last_served_at, 0, 0
        key = (item.variant, item.served_by, item.model_sha256, item.provider)
        if not item.shadow and key in batches:
            for scored in batches.pop(key):
                first, last = min(first, scored.first_scored_at), max(last, scored.last_scored_at)
                rows, jobs = rows + scored.rows, jobs + scored.jobs
        variants.setdefault(item.variant, []).append(
            LineageEntry(
                item.served_by,
                item.model_sha256,
                configured.get(item.model_sha256),
                item.provider,
                version,
                name,
                item.shadow,
                first,
                last,
                item.predictions,
                rows,
                jobs,
            )
        )
    # Models that only scored batches: the version each job resolved and ran.
    for group in batches.values():
        for scored in group:
            variants.setdefault(scored.variant, []).append(
                LineageEntry(
                    scored.served_by,
                    scored.model_sha256,
                    configured.get(scored.model_sha256),
                    scored.provider,
                    scored.registry_version,
                    scored.registry_name,
                    False,
                    scored.first_scored_at,
                    scored.last_scored_at,
                    0,
                    scored.rows,
                    scored.jobs,
                )
            )
    for entries in variants.values():
        entries.sort(key=lambda entry: (entry.first_served_at, entry.served_by))
    return [VariantLineage(key, entries) for key, entries in variants.items()]
