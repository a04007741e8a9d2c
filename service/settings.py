"""Typed settings read from ``ABX_*`` environment variables (README lists them)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ABX_", frozen=True)

    database_url: str | None = Field(
        default=None, description="PostgreSQL URL; unset starts an embedded server in data_dir."
    )
    experiments: Path = Field(default=Path("experiments"), description="Folder of experiment YAML.")
    data_dir: Path = Field(default=Path(".abx"), description="Embedded PostgreSQL and local state.")
    migrations: Path = Field(default=PROJECT_ROOT / "migrations")
    bind: str = "127.0.0.1:8000"
    workers: int | None = Field(default=None, ge=1, description="gunicorn workers; None: by cores")
    threads: int = Field(default=4, ge=1, description="threads per gunicorn worker")
    api_key: str | None = Field(default=None, description="When set, /v1 requires this key.")
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_batch_items: int = Field(default=1000, ge=1)
    flush_interval_seconds: float = Field(default=0.2, gt=0)
    flush_max_rows: int = Field(default=5000, ge=1)
    max_pending_rows: int = Field(default=1_000_000, ge=1)
    state_poll_seconds: float = Field(default=1.0, gt=0)
    allocation_settle_seconds: float = Field(
        default=3.0, ge=0, description="Notice given to every process before new weights apply."
    )
    sticky_cache_size: int = Field(default=100_000, ge=0)
    lookup_timeout_seconds: float = Field(default=0.25, gt=0)
