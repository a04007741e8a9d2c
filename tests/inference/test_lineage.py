"""GET /v1/experiments/<key>/models: the models that served each variant, from the log."""

from __future__ import annotations

from typing import Any

from tests.conftest import Api, wait_for
from tests.inference.test_api import RAW, US_APP, built, predict

__all__ = ["built"]


def test_lineage_lists_each_variants_models_with_times_and_checksums(
    api: Api, built: dict[str, str]
) -> None:
    files = {"production": "churn_logreg.onnx", "ranker_v2": "churn_mlp.onnx",
             "ranker_v3": "mlp_heavy.onnx"}  # fmt: skip
    answered: dict[str, int] = {}
    for i in range(30):
        body = predict(api, "checkout_ranker", f"user-{i}", RAW, **US_APP).json()
        answered[body["variant"]] = answered.get(body["variant"], 0) + 1
    found: dict[str, Any] = {}

    def logged() -> bool:
        found.update(api.get("/v1/experiments/checkout_ranker/models").json())
        counts = {
            v["variant"]: sum(m["predictions"] for m in v["models"]) for v in found["variants"]
        }
        return all(counts.get(variant) == n for variant, n in answered.items())

    assert wait_for(logged, timeout=30)
    for entry in found["variants"]:
        if entry["variant"] not in answered:
            assert entry["models"] == []
            continue
        (model,) = entry["models"]
        assert model["served_by"] == entry["variant"]
        assert model["model_sha256"] == built[files[entry["variant"]]]
        assert model["model_path"] == files[entry["variant"]]
        assert model["provider"] == "CPUExecutionProvider" and model["shadow"] is False
        assert model["first_served_at"] <= model["last_served_at"]
    missing = api.get("/v1/experiments/nope/models")
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/problem+json"
