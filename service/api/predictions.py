"""POST /v1/predict: the assigned variant's model answers (or the fallback's, flagged)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from service.api.bodies import PredictRequest
from service.api.body import parse_json_body
from service.observability.logging import annotate

bp = Blueprint("predictions", __name__)


@bp.post("/v1/predict")
def predict() -> dict[str, Any]:
    body = parse_json_body(PredictRequest)
    service = current_app.extensions["abx"].models.predictions
    prediction = service.predict(body.experiment, body.unit, body.attributes, body.inputs)
    model = prediction.model
    registry = prediction.registry
    annotate(
        experiment=body.experiment,
        variant=prediction.assignment.variant,
        model=model.name,
        fallback=prediction.failure,
        unit=body.unit,
    )
    answer = {
        "experiment": body.experiment,
        "variant": prediction.assignment.variant,
        "reason": prediction.assignment.reason.value,
        "in_experiment": prediction.assignment.exposed,
        "model": {
            "name": model.name,
            "version": model.version,
            "sha256": model.sha256,
            "registry": None if registry is None else registry.model_dump(),
        },
        "outputs": prediction.outputs,
        "provider": prediction.provider,
        "latency_ms": round(prediction.latency_ms, 3),
        "fallback": prediction.failure is not None,
        "cached": prediction.cached,
    }
    if prediction.assignment.holdout is not None:  # as /v1/assign: only where it was reached
        answer["holdout"] = prediction.assignment.holdout.holdout
    return answer
