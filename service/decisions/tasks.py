"""Celery tasks: analyse experiments, apply approved decisions, deliver webhooks.

The beat's periodic ``abx.analyze_all`` also prunes the SDK's old exposure batch ids
(``assignment/exposures.py``): it runs once per deployment, every analysis interval.

Each worker process builds its context (experiments from YAML, a connection
pool) on first use, after the fork. Task bodies are plain functions too, so
``abx analyze`` runs exactly the same code without a broker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from typing import Any

from service.assignment.exposures import prune_batches
from service.celery_app import app
from service.decisions.actions import act
from service.decisions.cycle import AnalysisOutcome, analyze_and_decide
from service.decisions.store import awaiting_approval_counts, last_analysis_at
from service.decisions.webhooks import (
    check_secrets,
    deliver_once,
    mark_failed,
    retry_delay_seconds,
    stale_deliveries,
)
from service.events.periods import configured_bandits_from, settle_guard
from service.events.ratios import configured_pairs_from
from service.events.rollup import caught_up, metric_windows_from, roll_up_once, windows_from
from service.events.segments import segment_specs_from
from service.experiments.model_registry import ModelRegistry, model_registry
from service.experiments.schema import Experiment
from service.experiments.validation import load_experiments
from service.observability import metrics
from service.observability.logging import get_logger
from service.settings import Settings
from service.storage.database import Database
from service.storage.embedded import database_url

log = get_logger(__name__)
MAX_WEBHOOK_ATTEMPTS = 8


@dataclass(frozen=True)
class WorkerContext:
    settings: Settings
    experiments: dict[str, Experiment]
    database: Database
    holdouts: dict[str, Experiment] = field(default_factory=dict)
    """Each holdout as the rollup sees it (``Holdout.as_experiment``): its outcome window."""


@cache
def context() -> WorkerContext:
    settings = Settings()
    result = load_experiments([settings.experiments])
    if not result.ok:
        raise RuntimeError("invalid experiment files:\n" + "\n".join(map(str, result.problems)))
    experiments = {i.experiment.key: i.experiment for i in result.experiments}
    check_secrets(settings.webhook_secrets, any(e.policy.webhooks for e in experiments.values()))
    database = Database(database_url(settings.database_url, settings.data_dir))
    database.open()
    holdouts = {i.holdout.key: i.holdout.as_experiment() for i in result.holdouts}
    return WorkerContext(settings, experiments, database, holdouts)


def registry_of(ctx: WorkerContext) -> ModelRegistry:
    """The model registry promotions move aliases in (``policy.registry_alias``)."""
    return model_registry(ctx.settings.mlflow_tracking_uri, ctx.settings.models)


def experiment(key: str) -> Experiment:
    found = context().experiments.get(key)
    if found is None:
        raise KeyError(f"there is no experiment {key!r}")
    return found


def analyze_now(key: str) -> AnalysisOutcome:
    """Bring the statistics up to date, then analyse and decide (the task's body)."""
    ctx = context()
    analysed = experiment(key)
    started = time.perf_counter()
    try:
        with ctx.database.pool.connection(timeout=10.0) as conn:
            grace = timedelta(seconds=ctx.settings.attribution_grace_seconds)
            while True:
                windows = {**ctx.experiments, **ctx.holdouts}
                done = roll_up_once(
                    conn, windows_from(windows), grace,
                    metric_windows_from(windows), segment_specs_from(ctx.experiments),
                    configured_pairs_from(windows),
                    configured_bandits_from(
                        ctx.experiments, settle_guard(ctx.settings.state_poll_seconds)
                    ),
                )  # fmt: skip
                if caught_up(done):
                    break
            outcome = analyze_and_decide(conn, analysed, registry=registry_of(ctx))
            awaiting = awaiting_approval_counts(conn, [analysed])[key]
    except Exception:
        metrics.ANALYSIS_RUNS.labels(key, "error").inc()
        log.exception("analysis failed", experiment=key)
        raise
    seconds = time.perf_counter() - started
    publish_analysis(key, outcome, seconds, awaiting)
    for error in outcome.numbers.get("errors", []):
        log.warning("comparison not computed", experiment=key, error=error)
    log.info(
        "analysis",
        experiment=key,
        decision=outcome.decision.kind,
        variant=outcome.decision.variant,
        duration_ms=round(seconds * 1000, 1),
    )
    return outcome


def publish_analysis(key: str, outcome: AnalysisOutcome, seconds: float, awaiting: int) -> None:
    """What one successful analysis found, as metrics (labels from the experiment's YAML)."""
    metrics.ANALYSIS_RUNS.labels(key, "ok").inc()
    metrics.ANALYSIS_DURATION.labels(key).observe(seconds)
    metrics.ANALYSIS_LAST_SUCCESS.labels(key).set(time.time())
    metrics.DECISIONS.labels(key, outcome.decision.kind).inc()
    metrics.DECISIONS_AWAITING.labels(key).set(awaiting)
    metrics.ANALYSIS_COMPARISON_ERRORS.labels(key).set(len(outcome.numbers.get("errors", [])))
    bandit = outcome.numbers.get("bandit")
    if isinstance(bandit, dict):
        for variant, weight in bandit.get("weights", {}).items():
            metrics.BANDIT_WEIGHT.labels(key, variant).set(weight)
    srm = outcome.numbers.get("srm")
    if isinstance(srm, dict) and srm.get("p_value") is not None:
        metrics.SRM_P_VALUE.labels(key).set(srm["p_value"])
    if isinstance(srm, dict):
        flagged: dict[str, int] = {}
        for segment in srm.get("segments") or []:
            flagged[segment["attribute"]] = flagged.get(segment["attribute"], 0) + int(
                bool(segment["flagged"])
            )
        for attribute in (outcome.numbers.get("segments") or {}).get("attributes", []):
            metrics.SRM_SEGMENTS_FLAGGED.labels(key, attribute).set(flagged.get(attribute, 0))
    for check in outcome.numbers.get("guardrails", []):
        breached = 1 if check.get("breached") else 0
        metrics.GUARDRAIL_BREACHED.labels(key, check["variant"], check["metric"]).set(breached)
    for check in outcome.numbers.get("shadow_graduation", []):
        metrics.SHADOW_GRADUATION_HOURS.labels(key, check["variant"]).set(check["hours_held"])
    worst: dict[tuple[str, str, str], tuple[bool, float | None]] = {}
    for drift in outcome.numbers.get("drift", []):  # against: both gives two checks: the worse
        labels = (key, drift["variant"], drift["guardrail"])
        tripped, distance = worst.get(labels, (False, None))
        if drift.get("distance") is not None:
            distance = max(distance or 0.0, drift["distance"])
        worst[labels] = (tripped or bool(drift["tripped"]), distance)
    for labels, (tripped, distance) in worst.items():
        metrics.GUARDRAIL_BREACHED.labels(*labels).set(1 if tripped else 0)
        if distance is not None:
            metrics.DRIFT_DISTANCE.labels(*labels).set(distance)
    for drift in outcome.numbers.get("drift", []):
        if drift["tripped"]:
            log.warning("drift", experiment=key, variant=drift["variant"],
                        guardrail=drift["guardrail"], measure=drift["measure"],
                        distance=drift["distance"], feature=drift["feature"],
                        action=drift["action"])  # fmt: skip


def publish_schedule_state() -> None:
    """From PostgreSQL, when each running experiment was last analysed and what awaits approval.

    Run with every scheduled round, so a restarted worker reports the truth at once.
    """
    ctx = context()
    running = [e for e in ctx.experiments.values() if e.status == "running"]
    metrics.ANALYSIS_INTERVAL.set(ctx.settings.analysis_interval_seconds)
    with ctx.database.pool.connection(timeout=10.0) as conn:
        for item in running:
            last = last_analysis_at(conn, item.key, item.seed)
            if last is not None:
                metrics.ANALYSIS_LAST_SUCCESS.labels(item.key).set(last.timestamp())
        for key, count in awaiting_approval_counts(conn, running).items():
            metrics.DECISIONS_AWAITING.labels(key).set(count)


@app.task(name="abx.analyze_all")
def analyze_all() -> list[str]:
    keys = [key for key, e in context().experiments.items() if e.status == "running"]
    try:
        publish_schedule_state()
    except Exception as error:  # the analyses below report their own failures
        log.warning("could not read the analyses' state: %s", error)
    for key in keys:
        analyze_experiment.delay(key)
    prune_sdk_batches()
    return keys


def prune_sdk_batches() -> None:
    """Delete SDK exposure batch ids past their retention (never fails the analyses)."""
    ctx = context()
    try:
        with ctx.database.pool.connection(timeout=10.0) as conn:
            pruned, oldest = prune_batches(
                conn, timedelta(days=ctx.settings.sdk_batch_retention_days)
            )
    except Exception as error:
        log.warning("could not prune SDK exposure batch ids: %s", error)
        return
    metrics.SDK_BATCHES_PRUNED.inc(pruned)
    metrics.SDK_BATCH_OLDEST_AGE.set(oldest or 0.0)
    if pruned:
        log.info("pruned SDK exposure batch ids", pruned=pruned)


@app.task(name="abx.analyze_experiment")
def analyze_experiment(key: str) -> dict[str, Any]:
    outcome = analyze_now(key)
    enqueue_deliveries(outcome.deliveries)
    return {
        "kind": outcome.decision.kind,
        "reason": outcome.decision.reason,
        "decision_id": outcome.decision_id,
    }


@app.task(name="abx.apply_decision")
def apply_decision(key: str, action: str, variant: str | None, actor: str, reason: str) -> str:
    """A human action (approve, pause, resume, promote, rollback), audited like any decision.

    ``actor`` is recorded as given: callers pass one they verified (``key:<name>``)."""
    with context().database.pool.connection(timeout=10.0) as conn:
        decision_id, _, deliveries = act(
            conn, experiment(key), action, variant, actor, reason, registry_of(context())
        )
    enqueue_deliveries(deliveries)
    return decision_id


def post_webhook(delivery_id: str) -> bool | None:
    """Deliver once: True on success, False on failure, None if there is nothing to do."""
    ctx = context()
    with ctx.database.pool.connection(timeout=10.0) as conn:
        delivered = deliver_once(
            conn, delivery_id, ctx.settings.webhook_secrets, ctx.settings.webhook_timeout_seconds
        )
    if delivered is not None:
        result = "delivered" if delivered else "failed"
        metrics.WEBHOOK_DELIVERIES.labels(result).inc()
        log.info("webhook delivery", delivery=delivery_id, result=result)
    return delivered


@app.task(name="abx.deliver_webhook", bind=True, max_retries=MAX_WEBHOOK_ATTEMPTS)
def deliver_webhook(self: Any, delivery_id: str) -> str:
    delivered = post_webhook(delivery_id)
    if delivered is False:
        if self.request.retries + 1 >= MAX_WEBHOOK_ATTEMPTS:
            with context().database.pool.connection(timeout=10.0) as conn:
                mark_failed(conn, delivery_id)
            metrics.WEBHOOK_DELIVERIES.labels("abandoned").inc()
            return "failed"
        raise self.retry(countdown=retry_delay_seconds(self.request.retries + 1))
    return "delivered" if delivered else "nothing to do"


@app.task(name="abx.redeliver_webhooks")
def redeliver_webhooks() -> int:
    """Deliveries left pending (a worker died between commit and enqueue) get another go."""
    with context().database.pool.connection(timeout=10.0) as conn:
        stale = stale_deliveries(conn, MAX_WEBHOOK_ATTEMPTS)
    enqueue_deliveries(stale)
    return len(stale)


def enqueue_deliveries(deliveries: list[str]) -> None:
    """Hand deliveries to the workers; if the broker is away, the beat's redelivery picks them up."""
    try:
        for delivery_id in deliveries:
            deliver_webhook.apply_async((delivery_id,), retry=False)
    except Exception as error:
        log.warning("could not enqueue webhooks now (they stay pending): %s", error)
