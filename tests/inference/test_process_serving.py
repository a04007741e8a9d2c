"""gunicorn workers → the inference process → batched runs → answers, on CPU sessions.

One server with ``ABX_INFERENCE=process`` (every model placed on the process, as a GPU host's
measurement places the heavy ones): the same answers as the models give in-process; the
process SIGKILLed under traffic (every request answered, the variant by the fallback), restarted
by the supervisor; a hot reload under load that fails no request.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import Api, ServerFactory, wait_for
from tests.inference.inference_process import short_socket_dir
from tests.model_fixtures import MODELS, demo_models

EXPERIMENT = "search_reranker"  # baseline: churn_logreg, reranker_gbm: churn_mlp


@pytest.fixture(scope="module", autouse=True)
def built() -> dict[str, str]:
    return demo_models()


def expected(sha256: str, rows: np.ndarray) -> np.ndarray:
    """What the model with that checksum answers here, with the experiment's preprocessing."""
    path = next(
        p for p in MODELS.glob("*.onnx") if hashlib.sha256(p.read_bytes()).hexdigest() == sha256
    )
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"features": ((rows - 1.0) * 0.5).astype(np.float32)})[0])


def predict(api: Api, unit: str, rows: np.ndarray) -> dict[str, Any]:
    response = api.post(
        "/v1/predict",
        {"experiment": EXPERIMENT, "unit": unit, "attributes": {"platform": "ios"},
         "inputs": {"features": rows.tolist()}},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def process_state(api: Api) -> dict[str, Any]:
    checks: dict[str, Any] = api.get("/readyz").json()["checks"]
    return checks


def test_workers_serve_through_the_inference_process_and_survive_its_death(
    server_factory: ServerFactory, db: str, experiments_dir: Path, built: dict[str, str]
) -> None:
    folder = short_socket_dir()
    for other in experiments_dir.glob("*.yaml"):  # one experiment: a quicker start
        if other.stem != EXPERIMENT:
            other.unlink()
    try:
        server = server_factory(
            db,
            experiments_dir,
            ABX_INFERENCE="process",
            ABX_INFERENCE_SOCKET=str(folder / "infer.sock"),
            ABX_RELOAD_POLL_SECONDS="0.2",
        )
        api = Api(server.base_url)
        rows = np.random.default_rng(3).normal(size=(2, 20)).astype(np.float32)
        served = Counter()
        for unit in range(16):
            body = predict(api, f"u{unit}", rows)
            assert body["fallback"] is False and body["provider"] == "CPUExecutionProvider"
            np.testing.assert_allclose(
                np.asarray(body["outputs"]["probability"]),
                expected(body["model"]["sha256"], rows),
                rtol=1e-5, atol=1e-6,
            )  # fmt: skip
            served[body["variant"]] += 1
        assert len(served) == 2, served  # both variants' models answered through the process
        checks = process_state(api)
        assert checks["inference_process"]["state"] == "up"
        for name in ("churn_logreg", "churn_mlp"):
            model = checks["models"][name]
            assert model["runs_in"] == "inference-process", model
            assert "ABX_INFERENCE=process" in model["placement_reason"]
            assert model["process_batching"]["rows"] > 0  # the process's batcher ran them
        first = checks["inference_process"]["pid"]

        # SIGKILL it: every request is still answered; the variant's by the fallback (the
        # control, whose own run falls back to the worker's session of its file).
        os.kill(first, signal.SIGKILL)
        outage: Counter[tuple[str, bool]] = Counter()
        unit = 0
        while outage[("reranker_gbm", True)] == 0 and unit < 400:
            body = predict(api, f"u{unit % 16}", rows)
            outage[(body["variant"], body["fallback"])] += 1
            np.testing.assert_allclose(
                np.asarray(body["outputs"]["probability"]),
                expected(body["model"]["sha256"], rows),
                rtol=1e-5, atol=1e-6,
            )  # fmt: skip
            unit += 1
        assert ("reranker_gbm", True) in outage, outage

        # The supervisor starts a new one; the workers use it again.
        def restarted() -> bool:
            state = process_state(api)["inference_process"]
            return state["state"] == "up" and state["pid"] != first

        assert wait_for(restarted, timeout=120), server.log()
        assert wait_for(lambda: predict(api, "u1", rows)["fallback"] is False, timeout=30)
        assert "inference process" in server.log() and "restarting" in server.log()

        # A hot reload under load: the control now serves the MLP; no request fails.
        statuses: Counter[int] = Counter()
        digests: Counter[str] = Counter()
        stop = threading.Event()

        def client() -> None:
            local = Api(server.base_url)
            while not stop.is_set():
                response = local.post(
                    "/v1/predict",
                    {"experiment": EXPERIMENT, "unit": "qa", "inputs": {"features": rows.tolist()}},
                )
                statuses[response.status_code] += 1
                if response.status_code == 200:
                    digests[response.json()["model"]["sha256"]] += 1
                    assert response.json()["fallback"] is False

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        yaml_file = experiments_dir / f"{EXPERIMENT}.yaml"
        try:
            assert wait_for(lambda: sum(statuses.values()) > 10)
            swapped = yaml_file.read_text().replace("churn_logreg.onnx", "churn_mlp.onnx", 1)
            yaml_file.write_text(
                swapped.replace(built["churn_logreg.onnx"], built["churn_mlp.onnx"], 1)
            )
            assert wait_for(lambda: digests[built["churn_mlp.onnx"]] > 10, timeout=30)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert set(statuses) == {200}, statuses
    finally:
        shutil.rmtree(folder, ignore_errors=True)
