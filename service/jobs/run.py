"""Run one scoring job to its end: resume after the last committed chunk, stop on cancel.

A job runs under an advisory lock on its own connection, so two deliveries of its task
(a redelivery after a worker was killed, the beat's resume) never score it at once; a
killed runner's connection closes and the lock with it. Each chunk: read, assign, score,
write it to the output and rejects files (``files.write_chunk``), flush any exposures, then
commit the chunk count with the progress and the files' lengths. Only then is the chunk
final; the chunk after it is redone from the file if the worker dies, written at the
committed lengths. A job writing to a table inserts the chunk's rows in that same
transaction, so the table holds exactly the committed chunks, and so are the models each
chunk ran recorded (the lineage). When the files are published, the last commit queues the
completion webhooks, in the same transaction.

A job that fails or is cancelled is never resumed, so its unfinished files (``.partial``,
parts) are removed (``_fail``, ``cancel_job``); only a killed worker's are kept, for the resume.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.assignment.registry import Registry
from service.assignment.service import AssignmentService
from service.assignment.state import read_states
from service.assignment.sticky import ASSIGNMENTS, EXPOSURE_ATTRIBUTES, EXPOSURES, StickyStore
from service.assignment.sync import read_allocations
from service.decisions.webhooks import queue_job_deliveries
from service.experiments.model_registry import model_registry
from service.experiments.validation import LoadResult, field_name, resolve_registry_models
from service.inference.catalog import BatchingConfig, build_catalog
from service.inference.records import record_job_models
from service.inference.runner import SessionRunner
from service.inference.sessions import SessionPool
from service.jobs import files, store, tables
from service.jobs.scoring import ChunkScorer, LookupOnlySticky
from service.jobs.targets import parse_table_name
from service.observability import metrics
from service.observability.logging import get_logger
from service.settings import Settings
from service.storage.database import Database
from service.storage.writer import BatchWriter

log = get_logger(__name__)


@dataclass(frozen=True)
class JobOutcome:
    status: str
    """done, cancelled, failed, busy (another runner holds it) or gone (it had ended)."""
    deliveries: tuple[str, ...] = ()


def run_job(
    settings: Settings, loaded: LoadResult, database: Database, pool: SessionPool, job_id: str
) -> JobOutcome:
    with database.pool.connection(timeout=10.0) as lock_conn:
        key = store.lock_key(job_id)
        locked = lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if not (locked and locked[0]):
            return JobOutcome("busy")
        try:
            return _run_locked(settings, loaded, database, pool, job_id)
        finally:
            lock_conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def _run_locked(
    settings: Settings, loaded: LoadResult, database: Database, pool: SessionPool, job_id: str
) -> JobOutcome:
    with database.pool.connection(timeout=10.0) as conn:
        job = store.get_job(conn, job_id)
        if job is None or job.status not in store.ACTIVE:
            if job is not None and job.status in ("cancelled", "failed"):
                _remove_leftovers(job, settings.uploads_path)  # ended while no runner held it
            return JobOutcome("gone")
        try:
            total = job.rows_total
            if total is None:
                total = files.estimate_rows(Path(job.input_path), job.input_format)
        except OSError as error:
            return _fail(database, settings.uploads_path, job, f"cannot read the input: {error}")
        started = store.start_job(conn, job_id, total)
    if started is None:
        return JobOutcome("gone")
    job = started
    registry = Registry(loaded)
    experiment = registry.experiments.get(job.experiment_key)
    if experiment is None:
        return _fail(database, settings.uploads_path, job, "the experiment is no longer served")
    with database.pool.connection(timeout=10.0) as conn:
        plans, now = read_allocations(conn, registry)
        states = read_states(conn, registry.experiments)
    registry.apply_plans(plans, now.timestamp() - time.time(), states)
    # Registry models: the versions their references name now (the YAML was loaded without
    # the models root), downloaded to the cache like a serving process does.
    experiment, unresolved = resolve_registry_models(
        experiment, model_registry(settings.mlflow_tracking_uri, settings.models)
    )
    if unresolved:
        problems = "; ".join(f"{field_name(p.path)}: {p.message}" for p in unresolved)
        return _fail(database, settings.uploads_path, job, f"registry models: {problems}")
    batching = BatchingConfig(False, settings.job_run_rows, 0.0)
    catalog = build_catalog([experiment], settings.models, pool, batching)
    models = catalog.get(experiment.key)
    if models is None:
        return _fail(database, settings.uploads_path, job, "the experiment serves no models")
    writer = BatchWriter(database, {s.table: s for s in (ASSIGNMENTS, EXPOSURES, EXPOSURE_ATTRIBUTES)},
                         max_rows=settings.flush_max_rows)  # fmt: skip
    sticky_type = StickyStore if job.log_exposures else LookupOnlySticky
    sticky = sticky_type(database, writer, settings.sticky_cache_size,
                         settings.lookup_timeout_seconds)  # fmt: skip
    assignments = AssignmentService(registry, sticky, lookup_grace=0.0)
    scorer = ChunkScorer(assignments, models, SessionRunner(settings.job_run_rows),
                         job.variant_key, settings.job_run_rows)  # fmt: skip
    table = parse_table_name(job.output_table) if job.output_table else None
    output = Path(job.output_path) if job.output_path else None
    rejects_file = Path(job.rejects_path)
    written = files.Written(job.output_bytes, job.rejects_bytes)
    if table is not None:
        try:
            with database.pool.connection(timeout=10.0) as conn:
                tables.ensure_table(conn, table, scorer.outputs)
        except tables.TableProblem as problem:
            return _fail(database, settings.uploads_path, job, f"output table: {problem}")
    log.info("score job started", job=job_id, experiment=job.experiment_key,
             resume_at_chunk=job.chunks_done, attempt=job.attempts)  # fmt: skip
    chunks = job.chunks_done
    try:
        reader = files.read_chunks(Path(job.input_path), job.input_format, job.chunk_rows)
        for chunk in reader:
            if chunk.index < job.chunks_done:
                continue  # committed by an earlier run
            began = time.perf_counter()
            result = scorer.score(chunk.frame)
            rejects = sorted(chunk.rejects + result.rejects, key=lambda r: r.get("row", -1))
            written = files.write_chunk(output, job.output_format, rejects_file, chunk.index,
                                        written, None if table else result.scored, rejects)  # fmt: skip
            if job.log_exposures and not writer.flush():
                raise RuntimeError("could not write exposures; the chunk will be redone")
            with database.pool.connection(timeout=10.0) as conn, conn.transaction():
                committed = store.commit_chunk(
                    conn, job_id, chunk.index + 1, len(result.scored), len(rejects),
                    written.output_bytes, written.rejects_bytes,
                )  # fmt: skip
                if committed:
                    record_job_models(conn, job_id, job.experiment_key, result.models)
                if committed and table is not None:
                    tables.insert_rows(conn, table, job_id, result.scored, scorer.outputs)
            if not committed:
                _remove_leftovers(job, settings.uploads_path)
                metrics.JOBS.labels(job.experiment_key, "cancelled").inc()
                log.info("score job cancelled", job=job_id, chunks_done=chunk.index)
                return JobOutcome("cancelled")
            chunks = chunk.index + 1
            metrics.JOB_ROWS.labels(job.experiment_key, "scored").inc(len(result.scored))
            metrics.JOB_ROWS.labels(job.experiment_key, "rejected").inc(len(rejects))
            metrics.JOB_CHUNK_DURATION.labels(job.experiment_key).observe(
                time.perf_counter() - began
            )
    except files.FileProblem as problem:  # the output written so far is gone or cut short
        return _fail(database, settings.uploads_path, job, f"cannot append the output: {problem}")
    except (OSError, ValueError) as error:  # the file itself is unreadable: no row can be read
        return _fail(database, settings.uploads_path, job, f"cannot read the input: {error}")
    except tables.TableProblem as problem:  # the chunk's transaction was rolled back whole
        return _fail(database, settings.uploads_path, job, f"output table: {problem}")
    files.publish(output, job.output_format, rejects_file, chunks)
    with database.pool.connection(timeout=10.0) as conn, conn.transaction():
        finished = store.finish_job(conn, job_id, "done")
        if finished is not None:
            deliveries = queue_job_deliveries(conn, job_id, experiment.policy.webhooks,
                                              _payload(finished))  # fmt: skip
    _remove_upload(job, settings.uploads_path)
    if finished is None:  # cancelled after its output was published
        return JobOutcome("cancelled")
    metrics.JOBS.labels(job.experiment_key, "done").inc()
    log.info("score job done", job=job_id, experiment=job.experiment_key, **finished.progress())
    return JobOutcome("done", tuple(deliveries))


def _payload(job: store.Job) -> dict[str, Any]:
    return {"type": "score_job.done", "job_id": job.job_id, "experiment": job.experiment_key,
            "status": job.status, "output": job.output_path, "output_table": job.output_table,
            "rejects": job.rejects_path,
            "rows_done": job.rows_done, "rows_rejected": job.rows_rejected}  # fmt: skip


def _files(job: store.Job) -> tuple[Path | None, Path]:
    return (Path(job.output_path) if job.output_path else None), Path(job.rejects_path)


def _remove_upload(job: store.Job, uploads: Path) -> None:
    """An input sent in the request's body belongs to its job alone: gone when the job ends."""
    path = Path(job.input_path)
    if path.parent == uploads:
        path.unlink(missing_ok=True)


def _remove_leftovers(job: store.Job, uploads: Path) -> None:
    """What a failed or cancelled job leaves: its unfinished files and its uploaded input."""
    files.discard(*_files(job))
    _remove_upload(job, uploads)


def _fail(database: Database, uploads: Path, job: store.Job, reason: str) -> JobOutcome:
    """Mark the job failed, then remove its unfinished files: a failed job is never resumed,
    so its ``.partial`` files and parts could only be left behind. Marked first, so that a
    database that fails the update leaves the job running, files intact, for its resume."""
    unfinished = files.unfinished(*_files(job))
    if unfinished:
        names = ", ".join(path.name for path in unfinished)
        reason = f"{reason} (its unfinished output was removed: {names})"
    with database.pool.connection(timeout=10.0) as conn:
        store.finish_job(conn, job.job_id, "failed", reason)
    _remove_leftovers(job, uploads)
    metrics.JOBS.labels(job.experiment_key, "failed").inc()
    log.warning("score job failed", job=job.job_id, experiment=job.experiment_key, reason=reason)
    return JobOutcome("failed")


def cancel_job(database: Database, job_id: str, uploads: Path) -> store.Job | None:
    """Cancel a queued or running job; None when it has already ended.

    A runner at work (it holds the job's lock) removes the unfinished files itself when its
    next commit finds the job cancelled. Without one (queued, or its worker was killed and the
    job awaits its resume) nobody would, so they are removed here, under the lock, which keeps
    a runner from starting meanwhile."""
    with database.pool.connection(timeout=2.0) as conn:
        key = store.lock_key(job_id)
        locked = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        held = bool(locked and locked[0])
        try:
            cancelled = store.cancel_job(conn, job_id)
            if cancelled is not None and held:
                _remove_leftovers(cancelled, uploads)
        finally:
            if held:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
    return cancelled
