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
    writes, events = runtime.writer.backlog(), runtime.events.backlog()
    over = _over_bounds(runtime.settings, writes, events)
    warnings = [auth.AUTH_OFF_WARNING] if runtime.settings.auth == "off" else []
    extra: dict[str, Any] = {"warnings": warnings} if warnings else {}
    if auth.current().granted:
        extra["checks"] = {
            "experiments_loaded": len(runtime.registry.experiments),
            "database": "reachable" if reachable else "unreachable",
            "allocations_loaded": runtime.registry.allocations_loaded,
            "pending_writes": writes["pending_rows"],
            "writes": writes,
            "events": events,
            "keys_loaded": runtime.keys.loaded if runtime.keys is not None else None,
            **runtime.models.status(),
        }
    if not reachable or over:
        detail = "Not ready: " + ("; ".join(over) if over else "the database is unreachable.")
        if "checks" in extra and not reachable:
            detail = "Not ready: " + json.dumps(extra["checks"])
        problem = {**ServiceUnavailable(detail).problem(), **extra}
        return Response(json.dumps(problem), status=503, mimetype=PROBLEM_JSON)
    return {"status": "ready", **extra}


def _over_bounds(settings: Any, writes: dict[str, Any], events: dict[str, Any]) -> list[str]:
    """Why this process should get no traffic: a spool or backlog past its configured bound.

    A worker whose writes cannot reach PostgreSQL keeps acknowledging into its spool; past
    these bounds a load balancer should send the traffic to a healthier one.
    """
    over = []
    limit_bytes, limit_age = settings.ready_max_spool_bytes, settings.ready_max_backlog_seconds
    for name, spool in (("events", events["spool"]), ("writes", writes["spool"])):
        if spool is None:
            continue
        if spool["bytes"] > limit_bytes:
            over.append(f"the {name} spool holds {spool['bytes']} bytes (bound {limit_bytes})")
        if spool["oldest_age_seconds"] > limit_age:
            over.append(
                f"the {name} spool's oldest record is {spool['oldest_age_seconds']:.0f} s old"
                f" (bound {limit_age:g} s)"
            )
    if writes["oldest_age_seconds"] > limit_age:
        over.append(
            f"the oldest buffered write is {writes['oldest_age_seconds']:.0f} s old"
            f" (bound {limit_age:g} s)"
        )
    return over
