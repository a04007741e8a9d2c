"""GET /v1/experiments/<key>/models: which model versions served each variant, and when."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from service.decisions.results import json_safe
from service.errors import UnknownExperiment
from service.inference.records import experiment_lineage

bp = Blueprint("lineage", __name__)


@bp.get("/v1/experiments/<key>/models")
def served_models(key: str) -> dict[str, Any]:
    """The same read as the dashboards' lineage table (``records.experiment_lineage``)."""
    runtime = current_app.extensions["abx"]
    experiment = runtime.registry.experiments.get(key)
    if experiment is None:
        raise UnknownExperiment(f"There is no experiment {key!r}.")
    with runtime.database.pool.connection(timeout=2.0) as conn:
        lineage = experiment_lineage(conn, experiment)
    return {"experiment": key, "variants": json_safe(lineage)}
