"""GET /v1/experiments/<key>/shadows: each shadow against the served model, hour by hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, current_app, request

from service.decisions.results import json_safe
from service.decisions.shadows import graduation_checks
from service.errors import InvalidRequest, UnknownExperiment
from service.inference.records import shadow_reports

bp = Blueprint("shadows", __name__)
MAX_HOURS = 24 * 30


@bp.get("/v1/experiments/<key>/shadows")
def experiment_shadows(key: str) -> dict[str, Any]:
    """Agreement, output differences and latency of every shadow, per hour, with intervals."""
    runtime = current_app.extensions["abx"]
    experiment = runtime.registry.experiments.get(key)
    if experiment is None:
        raise UnknownExperiment(f"There is no experiment {key!r}.")
    text = request.args.get("hours", "24")
    if not text.isdigit() or not 1 <= int(text) <= MAX_HOURS:
        raise InvalidRequest(f"hours must be a whole number from 1 to {MAX_HOURS}, got {text!r}.")
    hours = int(text)
    since = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
        hours=hours - 1
    )
    with runtime.database.pool.connection(timeout=2.0) as conn:
        reports = shadow_reports(conn, experiment, since)
        graduation = graduation_checks(conn, experiment)
    return {"experiment": key, "since": since.isoformat(), "hours": hours,
            "shadows": [json_safe(r) for r in reports],
            "graduation": [json_safe(c) for c in graduation]
            if experiment.policy.shadow_graduation is not None else None}  # fmt: skip
