"""Celery tasks of scoring jobs: run one, and resume those a lost worker left behind.

Jobs run in the decision workers' processes and share their context (experiments from
YAML, the connection pool); each process keeps one session pool across jobs, so a
model is loaded once per worker process, the same way the serving side loads it.
"""

from __future__ import annotations

from functools import cache

from service.celery_app import app
from service.decisions.tasks import context, enqueue_deliveries
from service.experiments.validation import LoadResult, load_experiments
from service.inference.sessions import SessionPool
from service.jobs import store
from service.jobs.run import run_job
from service.observability.logging import get_logger

log = get_logger(__name__)
STALLED_SECONDS = 300.0
"""A job whose progress has not moved for this long is handed to a worker again (its
runner's lock, if one still holds it, makes the new delivery return at once)."""


@cache
def loaded_experiments() -> LoadResult:
    return load_experiments([context().settings.experiments])


@cache
def session_pool() -> SessionPool:
    return SessionPool(context().settings.model_threads or 1)


def run_now(job_id: str) -> str:
    """The task's body: also what ``abx score --inline`` runs, without a broker."""
    ctx = context()
    outcome = run_job(ctx.settings, loaded_experiments(), ctx.database, session_pool(), job_id)
    enqueue_deliveries(list(outcome.deliveries))
    return outcome.status


@app.task(name="abx.score_job")
def score_job(job_id: str) -> str:
    return run_now(job_id)


@app.task(name="abx.resume_score_jobs")
def resume_score_jobs() -> int:
    with context().database.pool.connection(timeout=10.0) as conn:
        stalled = store.stalled_jobs(conn, STALLED_SECONDS)
    for job_id in stalled:
        log.info("resuming score job", job=job_id)
        score_job.delay(job_id)
    return len(stalled)


def enqueue(job_id: str) -> None:
    """Hand the job to the workers (if the broker is away, the beat's resume does it later)."""
    try:
        score_job.apply_async((job_id,), retry=False)
    except Exception as error:
        log.warning("could not enqueue score job %s now (it stays queued): %s", job_id, error)
