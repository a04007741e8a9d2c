"""Liveness (the process answers) and readiness (experiments loaded, database reachable)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, json

from service.errors import PROBLEM_JSON, ServiceUnavailable

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> Response | dict[str, Any]:
    runtime = current_app.extensions["abx"]
    checks = {
        "experiments_loaded": len(runtime.registry.experiments),
        "database": "reachable" if runtime.database.is_reachable(timeout=1.0) else "unreachable",
        "allocations_loaded": runtime.registry.allocations_loaded,
        "pending_writes": runtime.writer.pending_rows(),
        **runtime.models.status(),
    }
    if checks["database"] != "reachable":
        problem = ServiceUnavailable("Not ready: " + json.dumps(checks)).problem()
        problem["checks"] = checks
        return Response(json.dumps(problem), status=503, mimetype=PROBLEM_JSON)
    return {"status": "ready", "checks": checks}
