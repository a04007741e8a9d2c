"""GET /v1/experiments and /v1/experiments/<key>: definitions and the allocation in force."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from service.assignment.core import CompiledExperiment
from service.errors import UnknownExperiment

bp = Blueprint("experiments", __name__)


def _summary(compiled: CompiledExperiment, source: str) -> dict[str, Any]:
    experiment = compiled.experiment
    allocation = compiled.allocation
    return {
        "key": experiment.key,
        "description": experiment.description,
        "owner": experiment.owner,
        "status": experiment.status,
        "seed": experiment.seed,
        "control": experiment.control,
        "coverage": experiment.coverage,
        "layer": experiment.layer.model_dump() if experiment.layer else None,
        "variants": [
            {"key": v.key, "weight": weight, "configured_weight": v.weight}
            for v, weight in zip(experiment.variants, allocation.weights, strict=True)
        ],
        "allocation_pending": allocation.pending_weights is not None,
        "source": source,
    }


@bp.get("/v1/experiments")
def list_experiments() -> dict[str, Any]:
    registry = current_app.extensions["abx"].registry
    return {
        "experiments": [
            _summary(compiled, registry.sources[compiled.experiment.key])
            for compiled in sorted(registry.all(), key=lambda c: c.experiment.key)
        ]
    }


@bp.get("/v1/experiments/<key>")
def get_experiment(key: str) -> dict[str, Any]:
    registry = current_app.extensions["abx"].registry
    compiled = registry.get(key)
    if compiled is None:
        raise UnknownExperiment(f"There is no experiment {key!r}.")
    body = _summary(compiled, registry.sources[key])
    body["definition"] = compiled.experiment.model_dump(mode="json", by_alias=True)
    return body
