"""GET /v1/experiments/<key>/analysis: the analysis the decisions and dashboards run, as of now."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import psycopg
from flask import Blueprint, current_app

from service.decisions.inputs import run_analysis
from service.errors import ServiceUnavailable, UnknownExperiment

bp = Blueprint("analysis", __name__)


def finite_or_none(value: Any) -> Any:
    """JSON has no infinities (an interval before the first group-sequential look is unbounded)."""
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
    try:
        with runtime.database.pool.connection(timeout=2.0) as conn:
            result, _ = run_analysis(conn, experiment, weights, use_history=False)
    except psycopg.Error as error:  # PoolTimeout included
        raise ServiceUnavailable(
            f"The database is not reachable: {type(error).__name__}."
        ) from error
    body: dict[str, Any] = finite_or_none(dataclasses.asdict(result))
    body["weights"] = weights
    return body
