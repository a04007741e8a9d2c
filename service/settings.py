"""Typed settings read from ``ABX_*`` environment variables (README lists them)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LIVE_WRITER_SECONDS = 10.0
"""A serving process whose heartbeat is older than this counts as gone: weight switches stop
waiting for its buffered first assignments (``assignment/sync.py``)."""


def default_migrations() -> Path:
    """The migrations a wheel installs as ``service/storage/schema``, else the source tree's."""
    installed = Path(__file__).resolve().parent / "storage" / "schema"
    return installed if installed.is_dir() else PROJECT_ROOT / "migrations"


def default_workers() -> int:
    """One process per core (at least two): the work is CPU-bound Python, threads cover I/O waits."""
    return max(2, os.cpu_count() or 1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ABX_", frozen=True)

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset starts an embedded server in data_dir."
    )
    experiments: Path = Field(default=Path("experiments"), description="Folder of experiment YAML.")
    models: Path = Field(
        default=Path("experiments/models"), description="Models root: variants' ONNX files."
    )
    model_threads: int | None = Field(
        default=None, ge=1, description="onnxruntime intra-op threads; None: cores / workers"
    )
    batch_max_size: int = Field(default=64, ge=1, description="Rows per micro-batch run.")
    batch_max_wait_ms: float = Field(
        default=0.0, ge=0, description="Longest wait to fill one; 0: continuous batching."
    )
    batching: bool = Field(default=True, description="False: no model micro-batches.")
    inference: Literal["auto", "worker", "process"] = Field(
        default="auto",
        description="Where models run: auto (measured at start, CUDA hosts only), worker, "
        "process (every model on the inference process).",
    )
    inference_socket: Path | None = Field(
        default=None, description="The inference process's Unix socket; None: in data_dir."
    )
    inference_devices: int = Field(
        default=0,
        ge=0,
        description="Inference processes, one per GPU; 0: one per GPU nvidia-smi lists, >= 1.",
    )
    inference_timeout_ms: float = Field(
        default=1000.0,
        gt=0,
        description="Longest wait for the inference process when an experiment has no budget.",
    )
    inference_token: str | None = Field(
        default=None,
        description="Bearer token `abx infer --bind` requires (needed off the loopback).",
    )
    inference_max_connections: int = Field(
        default=64,
        ge=1,
        description="Open connections `abx infer --bind` serves at once; more are answered 503.",
    )
    inference_read_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="`abx infer --bind` closes a connection silent this long (slow or idle).",
    )
    placements: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Internal: `abx serve` passes the measured placements to its workers.",
    )
    reload_poll_seconds: float = Field(
        default=1.0, ge=0, description="How often YAML and model files are checked; 0: never."
    )
    mlflow_tracking_uri: str | None = Field(
        default=None,
        description="The MLflow tracking server whose registry 'registry: mlflow:models:/...' "
        "models come from (needs the mlflow extra).",
    )
    registry_poll_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How often registry aliases are asked which version they name; 0: never.",
    )
    shadow_queue_size: int = Field(default=1000, ge=1)
    sketches: bool = Field(
        default=True, description="Per-hour distribution sketches of model inputs and outputs."
    )
    sketch_interval_seconds: float = Field(
        default=5.0, gt=0, description="How often queued answers are binned and written."
    )
    data_dir: Path = Field(default=Path(".abx"), description="Embedded PostgreSQL and local state.")
    migrations: Path = Field(default_factory=default_migrations)
    bind: str = "127.0.0.1:8000"
    workers: int | None = Field(default=None, ge=1, description="gunicorn workers; None: by cores")
    threads: int = Field(default=4, ge=1, description="threads per gunicorn worker")
    sdk_stream_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long one GET /v1/sdk/stream stays open (SDKs reconnect).",
    )
    sdk_batch_retention_days: float = Field(
        default=31.0,
        ge=1.0,
        description="How long SDK exposure batch ids are kept to recognise a resend; the"
        " server refuses exposures over 30 days old, so a longer retention guards every resend.",
    )
    sdk_max_streams: int | None = Field(
        default=None, ge=0, description="Open streams per worker; None: half its threads."
    )
    api_key: str | None = Field(
        default=None, description="Removed: keys live in PostgreSQL (abx keys create)."
    )
    auth: Literal["on", "off"] = Field(
        default="on", description="off: every route open to anyone (warned at start, /readyz)."
    )
    key_refresh_seconds: float = Field(
        default=1.0, gt=0, le=4.0, description="How often each process re-reads the keys table."
    )
    redis_url: str | None = Field(
        default=None, description="Rate-limit counters in Redis (shared by every replica)."
    )
    rate_limits: dict[str, str] = Field(
        default_factory=dict,
        description="Per-scope request limits, e.g. {'assign': '5000/second'}.",
    )
    rate_limit_unauthenticated: str = Field(
        default="20/second", description="Requests without a valid key, per client address."
    )
    rate_limit_sign_in: str = Field(
        default="10/minute", description="Failed dashboard sign-ins per client address."
    )
    proxy_hops: int = Field(
        default=0, ge=0, description="Trusted proxies in front (X-Forwarded-For/-Proto)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins whose browsers may call the assign routes."
    )
    session_hours: float = Field(default=8.0, gt=0, description="Dashboard sign-in lifetime.")
    session_secret: str | None = Field(
        default=None,
        description="Signs session cookies; unset: generated once, kept in PostgreSQL.",
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_batch_items: int = Field(default=1000, ge=1)
    flush_interval_seconds: float = Field(default=0.2, gt=0)
    flush_max_rows: int = Field(default=5000, ge=1)
    max_pending_rows: int = Field(default=1_000_000, ge=1)
    state_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=LIVE_WRITER_SECONDS / 2,
        description="How often each process reads allocations and sends its heartbeat; at most"
        " half the time a heartbeat counts as live, so a polling process is never taken for"
        " gone (and a weight switch never goes ahead without it) between two of its polls.",
    )
    allocation_settle_seconds: float = Field(
        default=3.0, ge=0, description="Notice given to every process before new weights apply."
    )
    sticky_cache_size: int = Field(default=100_000, ge=0)
    spool_dir: Path | None = Field(
        default=None,
        description="Where events are spooled while PostgreSQL is away (data_dir/spool).",
    )
    spool_max_bytes: int = Field(default=1_073_741_824, ge=1024)
    ready_max_spool_bytes: int = Field(
        default=268_435_456,
        ge=0,
        description="/readyz turns not-ready when a spool of this process holds more.",
    )
    ready_max_backlog_seconds: float = Field(
        default=120.0,
        gt=0,
        description="/readyz turns not-ready when a write has waited longer (buffered or spooled).",
    )
    max_events_per_request: int = Field(default=10_000, ge=1)
    max_events_body_bytes: int = Field(default=33_554_432, ge=1024)
    max_future_seconds: float = Field(
        default=300.0, ge=0, description="Clock skew allowed for events."
    )
    attribution_grace_seconds: float = Field(
        default=3600.0, ge=0, description="How long an outcome may wait for its unit's exposure."
    )
    rollup_interval_seconds: float = Field(default=1.0, gt=0)
    event_wait_seconds: float = Field(
        default=10.0, gt=0, description="Longest wait for durability."
    )

    broker_url: str | None = Field(
        default=None, description="Celery broker (redis:// or amqp://); unset: a folder broker."
    )
    queue: str = Field(default="abx", description="Celery queue the workers consume.")
    analysis_interval_seconds: float = Field(default=60.0, gt=0)
    webhook_secret: str = Field(
        default="",
        description="whsec_ secrets (Standard Webhooks), space-separated; the first signs, all do.",
    )
    webhook_timeout_seconds: float = Field(default=5.0, gt=0)
    jobs_dir: Path | None = Field(
        default=None,
        description="Where scoring jobs read and write files named by the API (data_dir/jobs).",
    )
    job_upload_max_bytes: int = Field(
        default=268_435_456, ge=1024, description="Largest input uploaded with POST /v1/jobs/score."
    )
    job_chunk_rows: int = Field(
        default=50_000, ge=1, le=1_000_000, description="Rows a scoring job commits at a time."
    )
    job_run_rows: int = Field(
        default=4096, ge=1, description="Rows per onnxruntime run inside a scoring job's chunk."
    )

    metrics_bind: str = Field(
        default="127.0.0.1:9464",
        description="Where the server's gunicorn master serves /metrics; empty: no metrics.",
    )
    worker_metrics_bind: str = Field(
        default="127.0.0.1:9465",
        description="Where `abx worker`'s main process serves /metrics; empty: no metrics.",
    )
    metrics_dir: Path | None = Field(
        default=None,
        description="prometheus-client's multiprocess folder, emptied at start; None: a new "
        "temporary folder per server or worker.",
    )
    log_format: Literal["json", "console"] | None = Field(
        default=None, description="json or console; None: console on a terminal, else json."
    )
    log_level: str = Field(default="INFO", pattern="(?i)^(debug|info|warning|error|critical)$")
    log_units: bool = Field(default=False, description="Put unit ids in log lines.")
    access_log: bool = Field(default=True, description="One log line per HTTP request.")
    metrics_sample_seconds: float = Field(
        default=1.0, gt=0, description="How often gauges of buffers and spools are sampled."
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """``ABX_CORS_ORIGINS=https://a.example,https://b.example`` (or a JSON list)."""
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [origin.strip() for origin in text.split(",") if origin.strip()]
        return value

    @property
    def webhook_secrets(self) -> list[str]:
        """Every configured webhook secret (several during a rotation)."""
        return self.webhook_secret.replace(",", " ").split()

    @property
    def inference_socket_path(self) -> str:
        """The socket ``abx serve``'s inference process listens on and its workers call.

        A Unix socket path holds at most 107 bytes: a data folder deeper than that gets a
        socket in the temporary folder named after it (owner-only, like any other)."""
        if self.inference_socket is not None:
            return str(self.inference_socket)
        path = (self.data_dir / "inference" / "infer.sock").resolve()
        if len(str(path)) < 100:
            return str(path)
        import hashlib
        import tempfile

        digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        return str(Path(tempfile.gettempdir()) / f"abx-infer-{digest}.sock")

    def inference_socket_for(self, device: int) -> str:
        """The socket of the inference process of GPU ``device`` (the first has the plain one)."""
        base = self.inference_socket_path
        if device == 0:
            return base
        stem, dot, suffix = base.rpartition(".")
        return f"{stem}-{device}.{suffix}" if dot and "/" not in suffix else f"{base}-{device}"

    @property
    def spool_path(self) -> Path:
        """Where outcome events wait for PostgreSQL."""
        return self.spool_dir or self.data_dir / "spool"

    @property
    def jobs_path(self) -> Path:
        """Scoring jobs' files: uploads, and the paths the API may name (relative to it)."""
        return self.jobs_dir or self.data_dir / "jobs"

    @property
    def uploads_path(self) -> Path:
        """Inputs sent in a request's body, one file per job, removed when the job ends."""
        return self.jobs_path.resolve() / "uploads"

    @property
    def writes_spool_path(self) -> Path:
        """Where buffered assignments, exposures and predictions wait for PostgreSQL."""
        return self.spool_path.with_name(self.spool_path.name + "-writes")

    lookup_timeout_seconds: float = Field(default=0.25, gt=0)


def current_settings() -> Settings:
    """The settings the environment gives now, built once per distinct ``ABX_*`` environment.

    Building ``Settings()`` reads and validates every field, a few milliseconds each time;
    code that runs on every look of the decision workers asks here instead. The cache is keyed
    on the ``ABX_*`` variables themselves (names are read in any case, as ``Settings`` reads
    them), so a command or a test that changes one gets fresh settings, never stale ones.
    """
    environment = tuple(
        sorted((name.upper(), value) for name, value in os.environ.items()
               if name[:4].upper() == "ABX_")
    )  # fmt: skip
    return _settings_for(environment)


@lru_cache(maxsize=8)
def _settings_for(environment: tuple[tuple[str, str], ...]) -> Settings:
    """``Settings()`` for the ``ABX_*`` environment ``environment`` (the key; read as it is)."""
    return Settings()
