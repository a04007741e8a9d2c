"""The audit log of an experiment, and human actions on it."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
from flask import Blueprint, current_app
from psycopg_pool import PoolTimeout

from service.api.bodies import ActionRequest
from service.api.body import parse_json_body
from service.decisions.actions import ActionRefused, act
from service.errors import Conflict, InvalidRequest, ServiceUnavailable, UnknownExperiment
from service.experiments.schema import Experiment

bp = Blueprint("decisions", __name__)
log = logging.getLogger(__name__)


def _experiment(key: str) -> Experiment:
    experiment: Experiment | None = current_app.extensions["abx"].registry.experiments.get(key)
    if experiment is None:
        raise UnknownExperiment(f"There is no experiment {key!r}.")
    return experiment


def decision_json(row: tuple[Any, ...]) -> dict[str, Any]:
    names = ("decision_id", "kind", "variant", "status", "actor", "reason", "state_before",
             "state_after", "numbers", "created_at", "applied_at", "seed")  # fmt: skip
    item = dict(zip(names, row, strict=True))
    item["decision_id"] = str(item["decision_id"])
    for name in ("created_at", "applied_at"):
        item[name] = item[name].isoformat() if item[name] else None
    return item


@bp.get("/v1/experiments/<key>/decisions")
def list_decisions(key: str) -> dict[str, Any]:
    experiment = _experiment(key)
    runtime = current_app.extensions["abx"]
    try:
        with runtime.database.pool.connection(timeout=2.0) as conn:
            rows = conn.execute(
                "SELECT decision_id, kind, variant_key, status, actor, reason, state_before, state_after,"
                " numbers, created_at, applied_at, seed FROM decisions WHERE experiment_key = %s"
                " ORDER BY created_at, decision_id",
                (key,),
            ).fetchall()
            state = conn.execute(
                "SELECT state, winner, rolled_back, ramp_step FROM experiment_state WHERE experiment_key = %s",
                (key,),
            ).fetchone()
    except Exception as error:
        raise ServiceUnavailable(
            f"The database is not reachable: {type(error).__name__}."
        ) from error
    current: dict[str, Any] = {"state": "ramping" if experiment.policy.ramp else "running", "winner": None,
               "rolled_back": [], "ramp_step": 0}  # fmt: skip
    if state is not None:
        current = {
            "state": state[0],
            "winner": state[1],
            "rolled_back": list(state[2]),
            "ramp_step": state[3],
        }
    return {"experiment": key, "seed": experiment.seed, "current": current,
            "decisions": [decision_json(row) for row in rows]}  # fmt: skip


@bp.post("/v1/experiments/<key>/actions")
def post_action(key: str) -> tuple[dict[str, Any], int]:
    experiment = _experiment(key)
    body = parse_json_body(ActionRequest)
    runtime = current_app.extensions["abx"]
    try:
        with runtime.database.pool.connection(timeout=2.0) as conn:
            decision_id, decision, deliveries = act(
                conn, experiment, body.action, body.variant, body.actor, body.reason
            )
    except ActionRefused as refused:
        raise Conflict(str(refused)) from refused
    except ValueError as invalid:
        raise InvalidRequest(
            str(invalid), [{"field": "variant", "message": str(invalid)}]
        ) from invalid
    except (psycopg.Error, PoolTimeout) as error:
        raise ServiceUnavailable(
            f"The database is not reachable: {type(error).__name__}."
        ) from error
    _enqueue_webhooks(deliveries)
    return {"decision_id": decision_id, "kind": decision.kind, "variant": decision.variant,
            "state": decision.state_after.state}, 201  # fmt: skip


def _enqueue_webhooks(deliveries: list[str]) -> None:
    """Hand deliveries to the workers; if the broker is away, the beat's redelivery picks them up."""
    if not deliveries:
        return
    try:
        from service.decisions.tasks import deliver_webhook

        for delivery_id in deliveries:
            deliver_webhook.apply_async((delivery_id,), retry=False)
    except Exception as error:
        log.warning("could not enqueue webhooks now (they stay pending): %s", error)
