"""The audit log of an experiment, and human actions on it."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from service.api import auth
from service.api.bodies import ActionRequest
from service.api.body import parse_json_body
from service.assignment.state import initial_state, serving_state
from service.decisions.actions import ActionRefused, act
from service.decisions.results import json_safe
from service.decisions.store import decision_log
from service.decisions.tasks import enqueue_deliveries
from service.errors import Conflict, InvalidRequest, UnknownExperiment
from service.experiments.model_registry import model_registry
from service.experiments.schema import Experiment

bp = Blueprint("decisions", __name__)


def _experiment(key: str) -> Experiment:
    experiment: Experiment | None = current_app.extensions["abx"].registry.experiments.get(key)
    if experiment is None:
        raise UnknownExperiment(f"There is no experiment {key!r}.")
    return experiment


@bp.get("/v1/experiments/<key>/decisions")
def list_decisions(key: str) -> dict[str, Any]:
    experiment = _experiment(key)
    with current_app.extensions["abx"].database.pool.connection(timeout=2.0) as conn:
        records = decision_log(conn, key)
        state = serving_state(conn, key, experiment.seed)
    current: dict[str, Any] = {"state": initial_state(experiment).state, "winner": None,
                               "rolled_back": [], "ramp_step": 0}  # fmt: skip
    if state is not None:
        current = {"state": state.state, "winner": state.winner,
                   "rolled_back": state.rolled_back, "ramp_step": state.ramp_step}  # fmt: skip
    return {"experiment": key, "seed": experiment.seed, "current": current,
            "decisions": [json_safe(record) for record in records]}  # fmt: skip


@bp.post("/v1/experiments/<key>/actions")
def post_action(key: str) -> tuple[dict[str, Any], int]:
    experiment = _experiment(key)
    body = parse_json_body(ActionRequest)
    runtime = current_app.extensions["abx"]
    try:
        with runtime.database.pool.connection(timeout=2.0) as conn:
            decision_id, decision, deliveries = act(
                conn,
                experiment,
                body.action,
                body.variant,
                auth.current().actor,
                body.reason,
                model_registry(runtime.settings.mlflow_tracking_uri, runtime.settings.models),
            )
    except ActionRefused as refused:
        raise Conflict(str(refused)) from refused
    except ValueError as invalid:
        raise InvalidRequest(
            str(invalid), [{"field": "variant", "message": str(invalid)}]
        ) from invalid
    enqueue_deliveries(deliveries)
    return {"decision_id": decision_id, "kind": decision.kind, "variant": decision.variant,
            "state": decision.state_after.state}, 201  # fmt: skip
