"""Every metric abx exports, in one place: name, help, labels, buckets.

Label values come only from bounded sets: routes (the URL rules, never the path), HTTP
methods and statuses, experiments, variants, guardrails and models named in the YAML,
onnxruntime providers, and the fixed causes and results written here. Never a unit id,
a request id or free text: each distinct label value is a series Prometheus keeps.

Under gunicorn and Celery's prefork pool the values live in prometheus-client's
multiprocess files (``exposition.enable_multiprocess``); the exporter sums them. Gauges
say how processes combine: ``livesum`` (each live process adds its part), ``livemax``
(every process sees the same thing, such as a shared spool folder) or ``mostrecent``
(the last value any process set, such as an analysis result).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Request and model-run latencies: from half a millisecond to the 10 s request limits."""

ANALYSIS_SECONDS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
BATCH_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
AGREEMENT = (0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"
"""The route label of a request no URL rule matched (a 404 or 405, whatever the path)."""

# HTTP (the Flask glue in service/api/instrumentation.py records these)
HTTP_REQUESTS = Counter(
    "abx_http_requests",
    "HTTP requests answered, by route and status.",
    ["method", "route", "status"],
)
HTTP_DURATION = Histogram(
    "abx_http_request_duration_seconds",
    "Time from the request reaching Flask to its response, by route.",
    ["method", "route"],
    buckets=SECONDS,
)
HTTP_IN_FLIGHT = Gauge(
    "abx_http_requests_in_flight",
    "Requests being handled (sampled every ABX_METRICS_SAMPLE_SECONDS).",
    multiprocess_mode="livesum",
)

# Assignment
ASSIGNMENTS = Counter(
    "abx_assignments",
    "Assignments answered (by /v1/assign, its batch form and /v1/predict), by variant and reason.",
    ["experiment", "variant", "reason"],
)
HOLDOUT_EXPOSURES = Counter(
    "abx_holdout_exposures",
    "Holdout exposures written (once per unit and process), by holdout and group (holdout, rest).",
    ["holdout", "group"],
)
ALLOCATION_PENDING = Gauge(
    "abx_allocation_changes_pending",
    "1 while an experiment's new weights wait for every process to flush (allocation-switching).",
    ["experiment"],
    multiprocess_mode="livemax",
)
SDK_EXPOSURES = Counter(
    "abx_sdk_exposures",
    "Exposures that client SDKs assigned locally and sent, by outcome: recorded, duplicate"
    " (a resent batch), stale (a seed or variant the server no longer gives).",
    ["outcome"],
)
SDK_BATCHES_PRUNED = Counter(
    "abx_sdk_exposure_batches_pruned",
    "SDK exposure batch ids deleted after ABX_SDK_BATCH_RETENTION_DAYS (by the beat's task).",
)
SDK_BATCH_OLDEST_AGE = Gauge(
    "abx_sdk_exposure_batch_oldest_age_seconds",
    "Age of the oldest SDK exposure batch id kept, after the last prune (0: none kept).",
    multiprocess_mode="mostrecent",
)
SDK_STREAMS = Gauge(
    "abx_sdk_streams",
    "Open GET /v1/sdk/stream connections (each holds a server thread).",
    multiprocess_mode="livesum",
)
SDK_STREAMS_REVOKED = Counter(
    "abx_sdk_streams_revoked",
    "GET /v1/sdk/stream streams closed because their key was revoked or expired.",
)
SDK_STREAMS_REFUSED = Counter(
    "abx_sdk_streams_refused",
    "GET /v1/sdk/stream answered 503 because ABX_SDK_MAX_STREAMS were open (clients poll).",
)

# Inference
PREDICTIONS = Counter(
    "abx_predictions",
    "Predictions answered, by the assigned variant and the model and provider that answered.",
    ["experiment", "variant", "model", "provider"],
)
FALLBACKS = Counter(
    "abx_model_fallbacks",
    "Predictions the assigned variant's model did not answer, by cause.",
    ["experiment", "variant", "cause"],
)
FALLBACK_CAUSES = (
    "load-error", "error", "timeout", "non-finite", "variant-unavailable", "unreachable",
)  # fmt: skip
MODEL_RUN_DURATION = Histogram(
    "abx_model_run_duration_seconds",
    "Time to answer a prediction from the models (batch wait, run, any fallback), by variant.",
    ["experiment", "variant"],
    buckets=SECONDS,
)
INFERENCE_RESTARTS = Counter(
    "abx_inference_process_restarts",
    "Times abx serve restarted its inference process after it died.",
)
INFERENCE_MODEL_RELOADS = Counter(
    "abx_inference_model_reloads",
    "abx infer --bind: a model file of the served folder acted on, by name (file stem) and "
    "outcome: loaded (a new version serves), failed (it did not load; the old one serves on), "
    "removed (the file is gone).",
    ["model", "outcome"],
)
INFERENCE_MODEL_RELOAD_BROKEN = Gauge(
    "abx_inference_model_reload_broken",
    "abx infer --bind: 1 while the newest file of a model name does not load (the version "
    "loaded before serves on, or nothing does for a new name), else 0.",
    ["model"],
    multiprocess_mode="livemax",
)
BATCH_SIZE = Histogram(
    "abx_model_batch_rows", "Rows per micro-batched model run.", ["model"], buckets=BATCH_ROWS
)
REGISTRY_RESOLUTIONS = Counter(
    "abx_model_registry_resolutions",
    "Registry models resolved at load or reload, by outcome: resolved (asked the registry), "
    "last_good (registry unreachable: the version resolved before serves on), failed.",
    ["outcome"],
)
REGISTRY_ALIAS_MOVES = Counter(
    "abx_model_registry_alias_moves",
    "Registry aliases moved by a promotion or its rollback, by result (moved, failed).",
    ["result"],
)
CACHE_LOOKUPS = Counter(
    "abx_prediction_cache_lookups",
    "Prediction cache lookups (experiments with a cache only), by result: hit or miss.",
    ["experiment", "result"],
)
SHADOW_RUNS = Counter(
    "abx_shadow_runs",
    "Shadow runs by result: completed, failed, or dropped (queue full).",
    ["experiment", "variant", "result"],
)
SHADOW_AGREEMENT = Histogram(
    "abx_shadow_agreement_ratio",
    "Per shadow run, the share of rows whose decision matched the served model's.",
    ["experiment", "variant"],
    buckets=AGREEMENT,
)
SKETCH_OFFERS_DROPPED = Counter(
    "abx_sketch_offers_dropped",
    "Answers left out of the distribution sketches because their queue was full.",
)

# Writes
EVENTS = Counter(
    "abx_events",
    "Outcome events by result: accepted (committed), duplicate, spooled (all acknowledged),"
    " refused (the database refused an event of the request: answered 422, nothing written).",
    ["experiment", "result"],
)
QUARANTINED = Counter(
    "abx_rows_quarantined",
    "Rows the database refused, set aside instead of blocking the rows behind them.",
    ["stream"],
)
WRITER_PENDING = Gauge(
    "abx_writer_pending_rows",
    "Rows buffered for the batch writer, not yet in PostgreSQL (nor spooled).",
    ["stream"],
    multiprocess_mode="livesum",
)
WRITER_ROWS = Counter(
    "abx_writer_rows",
    "Rows the batch writer handled, by result: written, spooled, dropped (buffer full).",
    ["stream", "result"],
)
WRITER_FLUSH_FAILURES = Counter(
    "abx_writer_flush_failures", "Batch writer flushes that did not reach PostgreSQL."
)
SPOOL_BYTES = Gauge(
    "abx_spool_bytes",
    "Bytes waiting in a local spool for PostgreSQL (events or writes).",
    ["spool"],
    multiprocess_mode="livemax",
)
SPOOL_OLDEST_AGE = Gauge(
    "abx_spool_oldest_record_age_seconds",
    "Age of the oldest spooled record (0 when the spool is empty).",
    ["spool"],
    multiprocess_mode="livemax",
)
ROLLUP_LAG = Gauge(
    "abx_rollup_lag_seconds",
    "Age of the oldest row the rollup has not counted yet (exposures, outcomes; 0: caught up).",
    ["stream"],
    multiprocess_mode="mostrecent",
)
ROLLUP_LAST_SUCCESS = Gauge(
    "abx_rollup_last_success_timestamp_seconds",
    "When a rollup round last committed (Unix time).",
    multiprocess_mode="mostrecent",
)

# Decisions (set in the Celery worker processes, exported by the worker)
ANALYSIS_RUNS = Counter(
    "abx_analysis_runs", "Analyses run, by result: ok or error.", ["experiment", "result"]
)
ANALYSIS_DURATION = Histogram(
    "abx_analysis_duration_seconds",
    "Time of one analysis: rollup, statistics, decision and its transaction.",
    ["experiment"],
    buckets=ANALYSIS_SECONDS,
)
RATIO_SUMS_DURATION = Histogram(
    "abx_ratio_sums_duration_seconds",
    "Time to read one ratio metric's sums from the rollup (grows with days, not units).",
    ["experiment"],
    buckets=ANALYSIS_SECONDS,
)
ANALYSIS_LAST_SUCCESS = Gauge(
    "abx_analysis_last_success_timestamp_seconds",
    "When the experiment was last analysed (Unix time, from analysis_runs).",
    ["experiment"],
    multiprocess_mode="mostrecent",
)
ANALYSIS_INTERVAL = Gauge(
    "abx_analysis_interval_seconds",
    "The configured time between analyses (ABX_ANALYSIS_INTERVAL_SECONDS).",
    multiprocess_mode="mostrecent",
)
DECISIONS = Counter(
    "abx_decisions",
    "Decisions recorded, automatic or human, by kind (continue counted too).",
    ["experiment", "kind"],
)
BANDIT_WEIGHT = Gauge(
    "abx_bandit_weight",
    "A bandit's latest weight per variant, as its last analysis left it (its floor at least).",
    ["experiment", "variant"],
    multiprocess_mode="mostrecent",
)
DECISIONS_AWAITING = Gauge(
    "abx_decisions_awaiting_approval",
    "Decisions waiting for a human's approve.",
    ["experiment"],
    multiprocess_mode="mostrecent",
)
SRM_P_VALUE = Gauge(
    "abx_srm_p_value",
    "Sample-ratio mismatch anytime-valid p-value of the latest analysis (sequential test).",
    ["experiment"],
    multiprocess_mode="mostrecent",
)
SRM_SEGMENTS_FLAGGED = Gauge(
    "abx_srm_segments_flagged",
    "Segments of the attribute where the latest analysis' SRM drill-down found the imbalance"
    " (0 while the experiment's SRM test holds).",
    ["experiment", "attribute"],
    multiprocess_mode="mostrecent",
)
SEGMENT_EXPOSURES = Counter(
    "abx_segment_exposures",
    "Exposures the rollup counted per segment attribute, by bucket: own (a value with a bucket"
    " of its own) or other (past the attribute's cap of values).",
    ["experiment", "bucket"],
)
ANALYSIS_COMPARISON_ERRORS = Gauge(
    "abx_analysis_comparison_errors",
    "Comparisons the latest analysis could not compute (other than waiting for data).",
    ["experiment"],
    multiprocess_mode="mostrecent",
)
GUARDRAIL_BREACHED = Gauge(
    "abx_guardrail_breached",
    "1 when the latest analysis found the guardrail breached for the variant, else 0.",
    ["experiment", "variant", "guardrail"],
    multiprocess_mode="mostrecent",
)
DRIFT_DISTANCE = Gauge(
    "abx_drift_distance",
    "Latest window's largest drift distance of the variant against its reference, by guardrail.",
    ["experiment", "variant", "guardrail"],
    multiprocess_mode="mostrecent",
)
SHADOW_GRADUATION_HOURS = Gauge(
    "abx_shadow_graduation_hours",
    "Complete hours in a row the shadow has stayed within its graduation bounds (interval bounds).",
    ["experiment", "variant"],
    multiprocess_mode="mostrecent",
)
WEBHOOK_DELIVERIES = Counter(
    "abx_webhook_deliveries",
    "Webhook delivery attempts by result: delivered, failed (will retry), abandoned.",
    ["result"],
)

# Batch scoring jobs (service/jobs/)
JOB_ROWS = Counter(
    "abx_job_rows",
    "Rows a scoring job finished, by experiment and result (scored or rejected).",
    ["experiment", "result"],
)
JOBS = Counter(
    "abx_jobs",
    "Scoring jobs that ended, by experiment and status (done, cancelled, failed).",
    ["experiment", "status"],
)
JOB_CHUNK_DURATION = Histogram(
    "abx_job_chunk_duration_seconds",
    "Time to read, assign, score and commit one chunk of a scoring job.",
    ["experiment"],
    buckets=ANALYSIS_SECONDS,
)
