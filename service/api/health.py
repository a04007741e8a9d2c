"""Liveness (the process answers) and readiness (experiments loaded, database reachable).

Both are open, for load balancers. ``/readyz`` without a key says only ready or not ready;
the details (models, checksums, failures, pending writes) need ``experiments:read``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, json

from service.api import auth
from service.errors import PROBLEM_JSON, ServiceUnavailable

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> Response | dict[str, Any]:
    runtime = current_app.extensions["abx"]
    reachable = runtime.database.is_reachable(timeout=1.0)
    warnings = [auth.AUTH_OFF_WARNING] if runtime.settings.auth == "off" else []
    extra: dict[str, Any] = {"warnings": warnings} if warnings else {}
    if auth.current().granted:
        extra["checks"] = {
            "experiments_loaded": len(runtime.registry.experiments),
            "database": "reachable" if reachable else "unreachable",
            "allocations_loaded": runtime.registry.allocations_loaded,
            "pending_writes": runtime.writer.pending_rows(),
            "keys_loaded": runtime.keys.loaded if runtime.keys is not None else None,
            **runtime.models.status(),
        }
    if not reachable:
        detail = "Not ready: the database is unreachable."
        if "checks" in extra:
            detail = "Not ready: " + json.dumps(extra["checks"])
        problem = {**ServiceUnavailable(detail).problem(), **extra}
        return Response(json.dumps(problem), status=503, mimetype=PROBLEM_JSON)
    return {"status": "ready", **extra}
