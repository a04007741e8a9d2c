"""GET /v1/experiments/<key>/analysis: the analysis the decisions and dashboards run, as of now."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from service.decisions.inputs import run_analysis
from service.decisions.results import json_safe
from service.errors import UnknownExperiment

bp = Blueprint("analysis", __name__)


@bp.get("/v1/experiments/<key>/analysis")
def experiment_analysis(key: str) -> dict[str, Any]:
    """Every comparison of the experiment from the rollup tables, with the weights in force.

    The look is read-only and stateless (``use_history=False``): the p-value is this
    look's, without the running minimum the decision workers carry between their runs.
    """
    runtime = current_app.extensions["abx"]
    compiled = runtime.registry.get(key)
    if compiled is None:
        raise UnknownExperiment(f"There is no experiment {key!r}.")
    experiment = compiled.experiment
    weights = dict(zip(experiment.variant_keys, compiled.allocation.weights, strict=True))
    with runtime.database.pool.connection(timeout=2.0) as conn:
        result, _ = run_analysis(conn, experiment, weights, use_history=False)
    body: dict[str, Any] = json_safe(result)
    body["weights"] = weights
    return body
