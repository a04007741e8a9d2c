"""GET /v1/experiments/<key>/models: which model versions served each variant, and when."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app

from service.errors import UnknownExperiment
from service.inference.records import model_lineage

bp = Blueprint("lineage", __name__)


@bp.get("/v1/experiments/<key>/models")
def served_models(key: str) -> dict[str, Any]:
    runtime = current_app.extensions["abx"]
    experiment = runtime.registry.experiments.get(key)
    if experiment is None:
        raise UnknownExperiment(f"There is no experiment {key!r}.")
    models = [v.model for v in experiment.variants if v.model is not None]
    configured = {ref.sha256: ref.path for ref in models}
    versions = {ref.sha256: ref.resolved.version for ref in models if ref.resolved is not None}
    with runtime.database.pool.connection(timeout=2.0) as conn:
        served = model_lineage(conn, key)
    variants: dict[str, list[dict[str, Any]]] = {v.key: [] for v in experiment.variants}
    for item in served:
        variants.setdefault(item.variant, []).append(
            {
                "served_by": item.served_by,
                "model_sha256": item.model_sha256,
                "model_path": configured.get(item.model_sha256),
                "provider": item.provider,
                "registry_version": versions.get(item.model_sha256),
                "shadow": item.shadow,
                "first_served_at": item.first_served_at.isoformat(),
                "last_served_at": item.last_served_at.isoformat(),
                "predictions": item.predictions,
            }
        )
    return {
        "experiment": key,
        "variants": [{"variant": name, "models": models} for name, models in variants.items()],
    }
