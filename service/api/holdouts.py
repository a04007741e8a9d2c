"""GET /v1/holdouts/<key>: a holdout's cumulative effect, everything launched against none of it.

The holdout is analysed as an experiment of two groups (``Holdout.as_experiment``): its
exposures are the units that reached its check in any experiment of its scope, split by the
holdout hash alone into ``holdout`` (the baseline) and ``rest``; its outcomes are the events
posted under its key. The analysis is the decisions' own (``run_analysis``), read-only, with an
always-valid confidence sequence, so the page may be looked at every day for months.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from service.decisions.inputs import run_analysis
from service.decisions.results import json_safe
from service.errors import UnknownHoldout
from service.experiments.holdouts import Scope

bp = Blueprint("holdouts", __name__)


@bp.get("/v1/holdouts/<key>")
def holdout_analysis(key: str) -> dict[str, Any]:
    runtime = current_app.extensions["abx"]
    registry = runtime.registry
    holdout = registry.holdouts.get(key)
    if holdout is None:
        raise UnknownHoldout(f"There is no holdout {key!r}.")
    experiment = registry.holdout_experiments[key]
    weights = holdout.weights
    with runtime.database.pool.connection(timeout=2.0) as conn:
        result, _ = run_analysis(conn, experiment, weights, use_history=False)
    return {
        "holdout": key,
        "seed": holdout.seed,
        "share": holdout.share,
        "start": holdout.start.isoformat(),
        "scope": holdout.scope
        if isinstance(holdout.scope, str)
        else Scope.model_dump(holdout.scope),
        "experiments": sorted(k for k, e in registry.experiments.items() if holdout.covers(e)),
        "weights": weights,
        "analysis": json_safe(result),
    }
