"""POST /v1/predict against real gunicorn: outputs, validation, fallback, shadows, cache, logging."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import psycopg
import pytest

from tests.conftest import Api, ServerFactory, wait_for
from tests.model_fixtures import (
    MODELS,
    corrupt_model,
    demo_models,
    nan_model,
    permuted_model,
    raising_model,
    slow_model,
)

US_APP = {"country": "US", "app_version": "2.1.0"}
RAW = (np.arange(40, dtype=np.float32).reshape(2, 20) % 7 - 2.0).tolist()


@pytest.fixture(scope="module", autouse=True)
def built() -> dict[str, str]:
    return demo_models()


def direct(model: str, raw: list[list[float]]) -> np.ndarray:
    """The same model run by onnxruntime directly, with the YAML's preprocessing (x - 1) * 0.5."""
    session = ort.InferenceSession(str(MODELS / model), providers=["CPUExecutionProvider"])
    result: np.ndarray = session.run(None, {"features": (np.asarray(raw, np.float32) - 1) * 0.5})[0]
    return result


def predict(api: Api, experiment: str, unit: str, raw: Any = RAW, **attributes: Any) -> Any:
    return api.post(
        "/v1/predict",
        {
            "experiment": experiment,
            "unit": unit,
            "attributes": attributes,
            "inputs": {"features": raw},
        },
    )


def test_outputs_equal_a_direct_onnxruntime_run(api: Api, built: dict[str, str]) -> None:
    files = {
        "production": "churn_logreg.onnx",
        "ranker_v2": "churn_mlp.onnx",
        "ranker_v3": "mlp_heavy.onnx",
    }
    seen = set()
    for i in range(40):
        response = predict(api, "checkout_ranker", f"user-{i}", **US_APP)
        assert response.status_code == 200, response.text
        body = response.json()
        variant = body["variant"]
        assert variant == api.assign("checkout_ranker", f"user-{i}", **US_APP)["variant"]
        model = files[variant]
        assert body["model"] == {
            "name": model[:-5],
            "version": "1",
            "sha256": built[model],
            "registry": None,
        }  # a file, not a registry model
        assert body["provider"] == "CPUExecutionProvider" and body["fallback"] is False
        np.testing.assert_allclose(body["outputs"]["probability"], direct(model, RAW), rtol=1e-6)
        seen.add(variant)
    assert len(seen) >= 2
    ready = api.get("/readyz").json()["checks"]
    assert ready["models"]["mlp_heavy"]["provider"] == "CPUExecutionProvider"
    runtime = ready["onnxruntime"]
    assert runtime["version"] == ort.__version__ and len(runtime["packages"]) == 1
    assert "CPUExecutionProvider" in runtime["available_providers"] and "problem" not in runtime


def test_cache_answers_repeated_inputs(api: Api) -> None:
    # Each of the server's two worker processes holds its own cache: a miss in each, then hits.
    answers = [predict(api, "checkout_ranker", "qa-alice").json() for _ in range(4)]
    cached = [answer["cached"] for answer in answers]
    assert cached[0] is False and cached.count(False) <= 2 and True in cached, cached
    assert all(answer["outputs"] == answers[0]["outputs"] for answer in answers)


def test_batched_heavy_model_under_concurrency(api: Api, built: dict[str, str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> dict[str, Any]:
        client = Api(api.base_url)
        row = [[float((i + j) % 5) for j in range(20)]]
        body = predict(client, "search_embeddings", f"u{i}", row).json()
        body["row"] = row
        return body

    with ThreadPoolExecutor(8) as pool:
        bodies = list(pool.map(one, range(24)))
    for body in bodies:
        model = {"baseline": "mlp_heavy.onnx", "embeddings_v2": "mlp_heavy_int8.onnx"}[
            body["variant"]
        ]
        np.testing.assert_allclose(
            body["outputs"]["probability"], direct(model, body["row"]), rtol=1e-5, atol=1e-6
        )
    models = api.get("/readyz").json()["checks"]["models"]
    batching = models["mlp_heavy"]["batching"]  # the answering worker's, which may have run none
    assert batching["rows"] >= batching["batches"] >= 0 and "mean_rows" in batching
    assert "batching" not in models["mlp_heavy_int8"]


@pytest.mark.parametrize(
    ("inputs", "field"),
    [
        ({"features": [[1.0] * 19]}, "inputs.features"),
        ({"feature": [[1.0] * 20]}, "inputs.feature"),
        ({"features": [["x"] * 20]}, "inputs.features"),
        ({"features": [[1.0] * 20] * 1001}, "inputs.features"),
    ],
)
def test_inputs_that_do_not_fit_are_a_422(api: Api, inputs: dict, field: str, db: str) -> None:
    response = api.post(
        "/v1/predict", {"experiment": "search_reranker", "unit": "u1", "inputs": inputs}
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["Content-Type"] == "application/problem+json"
    assert problem["type"].endswith("/input-mismatch")
    assert any(error["field"] == field for error in problem["errors"])


def test_request_errors(api: Api) -> None:
    assert predict(api, "nope", "u1").status_code == 404
    assert (
        api.post("/v1/predict", {"experiment": "search_reranker", "unit": "u1"}).status_code == 422
    )


def test_predictions_and_shadow_runs_are_logged(api: Api, db: str) -> None:
    for i in range(20):
        assert predict(api, "churn_model", f"qa-{i}").status_code == 200

    def rows() -> list[tuple[Any, ...]]:
        with psycopg.connect(db) as conn:
            return conn.execute(
                "SELECT variant_key, shadow, fallback, agreement, provider FROM predictions"
                " WHERE experiment_key = 'churn_model'"
            ).fetchall()

    assert wait_for(lambda: len([r for r in rows() if not r[1]]) == 20)
    assert wait_for(lambda: any(r[1] for r in rows()))
    shadows = [r for r in rows() if r[1]]
    assert all(r[0] == "heavy_shadow" and r[3] is not None and 0 <= r[3] <= 1 for r in shadows)
    assert len(shadows) < 20 or len(shadows) == 20  # sampled at 0.5, never served
    served = [r for r in rows() if not r[1]]
    assert all(
        r[0] == "current" and r[2] is False and r[4] == "CPUExecutionProvider" for r in served
    )


FAULTS = """\
key: faults
description: Every way a model can fail.
owner: test
status: running
control: control
variants:
  - {{key: control, weight: 1.0, model: {{path: churn_logreg.onnx, sha256: {control}}}}}
  - {{key: nan, weight: 0.0, model: {{path: faults/nan.onnx, sha256: {nan}}}}}
  - {{key: raises, weight: 0.0, model: {{path: faults/raises.onnx, sha256: {raises}}}}}
  - {{key: slow, weight: 0.0, model: {{path: faults/slow.onnx, sha256: {slow}}}}}
  - {{key: corrupt, weight: 0.0, model: {{path: faults/corrupt.onnx, sha256: {corrupt}}}}}
serving: {{latency_budget_ms: 50}}
forced: {{unit-nan: nan, unit-raises: raises, unit-slow: slow, unit-corrupt: corrupt}}
metrics:
  primary: {{name: converted, type: binary}}
"""


def test_every_fallback_cause_is_answered_by_the_control(
    server_factory: ServerFactory, db: str, tmp_path: Path, built: dict[str, str]
) -> None:
    root = tmp_path / "models"
    (root / "faults").mkdir(parents=True)
    (root / "churn_logreg.onnx").write_bytes((MODELS / "churn_logreg.onnx").read_bytes())
    digests = {
        name: make(root / "faults" / f"{name}.onnx")
        for name, make in [
            ("nan", nan_model),
            ("raises", raising_model),
            ("slow", slow_model),
            ("corrupt", corrupt_model),
        ]
    }
    experiments = tmp_path / "faults-experiments"
    experiments.mkdir()
    (experiments / "faults.yaml").write_text(
        FAULTS.format(control=built["churn_logreg.onnx"], **digests)
    )
    # One worker: /readyz counts the failures its own process saw.
    server = server_factory(db, experiments, ABX_MODELS=str(root), ABX_WORKERS="1")
    api = Api(server.base_url, key=None)
    ones = [[1.0] * 20]
    expected = np.asarray(
        ort.InferenceSession(str(root / "churn_logreg.onnx")).run(
            None, {"features": np.asarray(ones, np.float32)}
        )[0]
    )
    for cause in ("nan", "raises", "slow", "corrupt"):
        response = predict(api, "faults", f"unit-{cause}", ones)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["variant"], body["fallback"]) == (cause, True)
        assert body["model"]["sha256"] == built["churn_logreg.onnx"]
        np.testing.assert_allclose(body["outputs"]["probability"], expected, rtol=1e-6)
    failures = api.get("/readyz").json()["checks"]["model_failures"]["faults"]
    assert {variant: list(reasons) for variant, reasons in failures.items()} == {
        "nan": ["non-finite"],
        "raises": ["error"],
        "slow": ["timeout"],
        "corrupt": ["load-error"],
    }

    def logged() -> set[tuple[str, str, str]]:
        with psycopg.connect(db) as conn:
            return set(
                conn.execute(
                    "SELECT variant_key, served_by, failure FROM predictions WHERE fallback"
                ).fetchall()
            )

    assert wait_for(
        lambda: (
            logged()
            == {
                (c, "control", r)
                for c, r in [
                    ("nan", "non-finite"),
                    ("raises", "error"),
                    ("slow", "timeout"),
                    ("corrupt", "load-error"),
                ]
            }
        )
    )
    assert "failed to load" in server.log()


NAMED = """\
key: named
description: Two models that take the same columns in opposite orders, fed by name.
owner: test
status: running
control: control
variants:
  - key: control
    weight: 1.0
    model:
      path: churn_logreg.onnx
      sha256: {control}
      inputs: {{features: {{features: {names}, offset: 1.0, factor: 0.5}}}}
  - key: reversed
    weight: 0.0
    model:
      path: reversed.onnx
      sha256: {reversed}
      inputs: {{features: {{features: {reversed_names}, offset: 1.0, factor: 0.5}}}}
forced: {{unit-reversed: reversed}}
metrics:
  primary: {{name: converted, type: binary}}
"""
NAMES = [f"col_{i:02d}" for i in range(20)]


def test_named_features_get_the_answers_of_positional_rows(
    server_factory: ServerFactory, db: str, tmp_path: Path, built: dict[str, str]
) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "churn_logreg.onnx").write_bytes((MODELS / "churn_logreg.onnx").read_bytes())
    backwards = list(range(19, -1, -1))
    reversed_sha = permuted_model(root / "churn_logreg.onnx", root / "reversed.onnx", backwards)
    experiments = tmp_path / "named-experiments"
    experiments.mkdir()
    (experiments / "named.yaml").write_text(
        NAMED.format(
            control=built["churn_logreg.onnx"],
            reversed=reversed_sha,
            names=json.dumps(NAMES),
            reversed_names=json.dumps(NAMES[::-1]),
        )
    )
    api = Api(server_factory(db, experiments, ABX_MODELS=str(root)).base_url, key=None)
    positional = predict(api, "named", "unit-control", RAW).json()
    assert positional["variant"] == "control"
    expected = direct("churn_logreg.onnx", RAW)
    np.testing.assert_allclose(positional["outputs"]["probability"], expected, rtol=1e-6)
    rows = [dict(zip(NAMES, row, strict=True)) | {"unused_by_both": "x"} for row in RAW]
    for unit, variant in [("unit-control", "control"), ("unit-reversed", "reversed")]:
        response = predict(api, "named", unit, rows)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["variant"], body["fallback"]) == (variant, False)
        np.testing.assert_allclose(body["outputs"]["probability"], expected, rtol=1e-6)
    single = predict(api, "named", "unit-reversed", rows[1]).json()
    np.testing.assert_allclose(single["outputs"]["probability"], expected[1:], rtol=1e-6)

    missing = [rows[0], {name: value for name, value in rows[1].items() if name != "col_04"}]
    response = predict(api, "named", "unit-reversed", missing)
    assert response.status_code == 422, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"].endswith("/input-mismatch") and problem["status"] == 422
    assert problem["errors"] == [{"field": "inputs.features[1].col_04", "message": "missing"}]
    assert "inputs.features[1].col_04: missing" in problem["detail"]
