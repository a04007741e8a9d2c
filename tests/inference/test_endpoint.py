"""A variant whose model is a remote Open Inference Protocol endpoint (``abx infer --bind``)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from service.experiments.validation import load_experiments
from tests.conftest import Api, ServerFactory, free_port
from tests.experiment_files import minimal_experiment, write_experiment
from tests.inference.inference_process import running_infer
from tests.model_fixtures import MODELS, demo_models

TOKEN = "endpoint-test-token-0123456789abcdef"


@pytest.fixture(scope="module", autouse=True)
def built() -> dict[str, str]:
    return demo_models()


def experiment(built: dict[str, str], endpoint: str, **extra: Any) -> dict[str, Any]:
    control = {"path": "churn_logreg.onnx", "sha256": built["churn_logreg.onnx"]}
    variants = [
        {"key": "a", "weight": 0.5, "model": control},
        {"key": "b", "weight": 0.5, "model": {"endpoint": endpoint, **extra}},
    ]
    return minimal_experiment("remote", variants=variants)


def test_endpoint_references_are_checked_with_their_line(
    tmp_path: Path, built: dict[str, str]
) -> None:
    def problems(endpoint: str, **extra: Any) -> list[str]:
        file = write_experiment(tmp_path, experiment(built, endpoint, **extra))
        return [str(p) for p in load_experiments([file], MODELS).problems]

    good = "http://models.internal:8000/v2/models/churn_mlp"
    assert problems(good, token_env="CHURN_TOKEN") == []
    for bad in ("ftp://x/v2/models/m", "http://x:8000/v1/models/m", "http://x/v2/models/"):
        found = problems(bad)
        assert found and "remote.yaml:" in found[0] and "endpoint" in found[0], (bad, found)
    found = problems(good, sha256=built["churn_mlp.onnx"])
    assert found and "variants[1].model.sha256" in found[0] and "does not go with" in found[0]
    assert "leave batching off" in problems(good, batching=True)[0]
    assert "token_env" in problems(good, token_env="lower")[0]  # a variable's name, upper case


def expected(rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(
        str(MODELS / "churn_mlp.onnx"), providers=["CPUExecutionProvider"]
    )
    return np.asarray(session.run(None, {"features": rows})[0])


def test_a_variant_served_by_a_remote_endpoint_keeps_every_promise(
    server_factory: ServerFactory, db: str, tmp_path: Path, built: dict[str, str]
) -> None:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}/v2/models/churn_mlp"
    folder = tmp_path / "experiments"
    write_experiment(folder, experiment(built, endpoint, token_env="ABX_TEST_OIP_TOKEN"))
    rows = np.random.default_rng(5).normal(size=(2, 20)).astype(np.float32)
    with running_infer(
        MODELS, tmp_path / "infer.log", "--model", "churn_mlp.onnx", "--providers", "cpu",
        port=port, ABX_INFERENCE_TOKEN=TOKEN,
    ) as remote:  # fmt: skip
        server = server_factory(db, folder, ABX_TEST_OIP_TOKEN=TOKEN)
        api = Api(server.base_url)
        seen: dict[str, dict[str, Any]] = {}
        for unit in range(24):
            response = api.post(
                "/v1/predict",
                {"experiment": "remote", "unit": f"u{unit}", "inputs": {"features": rows.tolist()}},
            )
            assert response.status_code == 200, response.text
            seen.setdefault(response.json()["variant"], response.json())
        remote_answer = seen["b"]
        assert remote_answer["fallback"] is False
        assert remote_answer["provider"] == f"oip:127.0.0.1:{port}"
        assert remote_answer["model"]["name"] == "churn_mlp"
        np.testing.assert_allclose(
            np.asarray(remote_answer["outputs"]["probability"]),
            expected(rows),
            rtol=1e-5,
            atol=1e-6,
        )
        models = api.get("/readyz").json()["checks"]["models"]
        assert models["churn_mlp"]["runs_in"] == "endpoint"
        # Inputs are checked against the endpoint's signature before anything is sent.
        bad = api.post(
            "/v1/predict",
            {"experiment": "remote", "unit": "u1", "inputs": {"features": [[1.0] * 19]}},
        )
        assert bad.status_code == 422
        # The endpoint goes away: its variant is answered by the control, never refused.
        remote.process.send_signal(signal.SIGKILL)
        remote.process.wait()
        unit_b = next(
            f"u{u}" for u in range(24)
            if api.assign("remote", f"u{u}")["variant"] == "b"
        )  # fmt: skip
        response = api.post(
            "/v1/predict",
            {"experiment": "remote", "unit": unit_b, "inputs": {"features": rows.tolist()}},
        )
        assert response.status_code == 200, response.text
        assert response.json()["fallback"] is True
        assert response.json()["model"]["name"] == "churn_logreg"
