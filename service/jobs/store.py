"""The ``score_jobs`` table: a job's definition, its committed progress, its end.

Progress is committed with each chunk (``commit_chunk``), and only while the job is still
running: a cancel between two chunks makes the next commit find nothing to update.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

COLUMNS = (
    "job_id, experiment_key, variant_key, input_path, input_format, output_path, output_format,"
    " rejects_path, log_exposures, chunk_rows, status, rows_total, rows_done, rows_rejected,"
    " chunks_done, attempts, error, created_by, created_at, started_at, updated_at, finished_at,"
    " output_table, output_bytes, rejects_bytes"
)
ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class Job:
    job_id: str
    experiment_key: str
    variant_key: str | None
    input_path: str
    input_format: str
    output_path: str | None
    """The output file; None when the scores go to ``output_table``."""
    output_format: str
    """csv, ndjson, parquet, or table."""
    rejects_path: str
    log_exposures: bool
    chunk_rows: int
    status: str
    rows_total: int | None
    rows_done: int
    rows_rejected: int
    chunks_done: int
    attempts: int
    error: str | None
    created_by: str
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None
    output_table: str | None = None
    """``schema.table`` in abx's database (``tables.py``), or None for a file."""
    output_bytes: int = 0
    """The CSV or NDJSON output's length at the last committed chunk (``files.write_chunk``)."""
    rejects_bytes: int = 0
    """The rejects file's length at the last committed chunk."""

    def progress(self) -> dict[str, Any]:
        """Rows done, rate and ETA as ``GET /v1/jobs/<id>`` shows them."""
        finished = self.rows_done + self.rows_rejected
        rate = None
        if self.started_at is not None and finished:
            seconds = ((self.finished_at or self.updated_at) - self.started_at).total_seconds()
            rate = round(finished / seconds, 1) if seconds > 0 else None
        eta = None
        if self.status in ACTIVE and rate and self.rows_total is not None:
            eta = round(max(0, self.rows_total - finished) / rate, 1)
        return {
            "rows_total": self.rows_total,
            "rows_done": self.rows_done,
            "rows_rejected": self.rows_rejected,
            "chunks_done": self.chunks_done,
            "rows_per_second": rate,
            "eta_seconds": eta,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "experiment": self.experiment_key,
            "variant": self.variant_key,
            "status": self.status,
            "input": self.input_path,
            "output": self.output_path,
            "output_table": self.output_table,
            "rejects": self.rejects_path,
            "log_exposures": self.log_exposures,
            "chunk_rows": self.chunk_rows,
            **self.progress(),
            "attempts": self.attempts,
            "error": self.error,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
        }


def lock_key(job_id: str) -> int:
    """The advisory lock one runner of a job holds (a second delivery waits its turn out)."""
    digest = hashlib.sha256(f"abx-score-job:{job_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def path_lock_key(path: str) -> int:
    """The transaction lock two submits of one output path take turns on."""
    digest = hashlib.sha256(f"abx-score-output:{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def active_job_using(conn: Any, input_path: str, output: str | None) -> tuple[str, str] | None:
    """A queued or running job whose files a new job reading ``input_path`` and writing
    ``output`` would clash with (its id and the shared file's path), if any: one that writes
    either file, or reads the output."""
    row = conn.execute(
        "SELECT job_id, CASE WHEN output_path IN (%(input)s, %(output)s) THEN output_path"
        " ELSE input_path END FROM score_jobs WHERE status = ANY(%(active)s)"
        " AND (output_path IN (%(input)s, %(output)s) OR input_path = %(output)s)"
        " ORDER BY created_at LIMIT 1",
        {"input": input_path, "output": output, "active": list(ACTIVE)},
    ).fetchone()
    return (str(row[0]), str(row[1])) if row else None


def create_job(
    conn: Any,
    *,
    experiment_key: str,
    variant_key: str | None,
    input_path: str,
    input_format: str,
    output_path: str | None,
    output_table: str | None = None,
    output_format: str,
    rejects_path: str,
    log_exposures: bool,
    chunk_rows: int,
    created_by: str,
    request_id: str | None,
    job_id: str | None = None,
) -> Job:
    job_id = job_id or str(uuid.uuid4())
    row = conn.execute(
        "INSERT INTO score_jobs (job_id, experiment_key, variant_key, input_path, input_format,"
        " output_path, output_table, output_format, rejects_path, log_exposures, chunk_rows,"
        " created_by, request_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        f" RETURNING {COLUMNS}",
        (job_id, experiment_key, variant_key, input_path, input_format, output_path,
         output_table, output_format, rejects_path, log_exposures, chunk_rows, created_by,
         request_id),
    ).fetchone()  # fmt: skip
    return _job(row)


def get_job(conn: Any, job_id: str) -> Job | None:
    try:
        uuid.UUID(job_id)
    except ValueError:
        return None
    row = conn.execute(f"SELECT {COLUMNS} FROM score_jobs WHERE job_id = %s", (job_id,)).fetchone()
    return _job(row) if row else None


def start_job(conn: Any, job_id: str, rows_total: int | None) -> Job | None:
    """Mark the job running (again, after a worker died); None when it has ended."""
    row = conn.execute(
        "UPDATE score_jobs SET status = 'running', attempts = attempts + 1,"
        " started_at = coalesce(started_at, now()), rows_total = coalesce(rows_total, %s),"
        f" updated_at = now() WHERE job_id = %s AND status = ANY(%s) RETURNING {COLUMNS}",
        (rows_total, job_id, list(ACTIVE)),
    ).fetchone()
    return _job(row) if row else None


def commit_chunk(
    conn: Any,
    job_id: str,
    chunks_done: int,
    scored: int,
    rejected: int,
    output_bytes: int = 0,
    rejects_bytes: int = 0,
) -> bool:
    """Record one more chunk as final, with its files' lengths after it; False when the job
    was cancelled meanwhile."""
    updated = conn.execute(
        "UPDATE score_jobs SET chunks_done = %s, rows_done = rows_done + %s,"
        " rows_rejected = rows_rejected + %s, output_bytes = %s, rejects_bytes = %s,"
        " updated_at = now() WHERE job_id = %s AND status = 'running' AND chunks_done = %s",
        (chunks_done, scored, rejected, output_bytes, rejects_bytes, job_id, chunks_done - 1),
    )
    return bool(updated.rowcount)


def finish_job(conn: Any, job_id: str, status: str, error: str | None = None) -> Job | None:
    row = conn.execute(
        "UPDATE score_jobs SET status = %s, error = %s, finished_at = now(), updated_at = now()"
        f" WHERE job_id = %s AND status = ANY(%s) RETURNING {COLUMNS}",
        (status, error, job_id, list(ACTIVE)),
    ).fetchone()
    return _job(row) if row else None


def cancel_job(conn: Any, job_id: str) -> Job | None:
    """Cancel a queued or running job (its runner stops before its next commit)."""
    return finish_job(conn, job_id, "cancelled")


def stalled_jobs(conn: Any, seconds: float) -> list[str]:
    """Active jobs without progress for ``seconds`` and whose runner holds no lock."""
    rows = conn.execute(
        "SELECT job_id FROM score_jobs WHERE status IN ('queued', 'running')"
        " AND updated_at < now() - make_interval(secs => %s)",
        (seconds,),
    ).fetchall()
    return [str(job_id) for (job_id,) in rows]


def _job(row: Any) -> Job:
    values = list(row)
    values[0] = str(values[0])
    return Job(*values)
