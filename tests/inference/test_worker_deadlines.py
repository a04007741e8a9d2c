"""A worker's requests that wait past their budget for the inference process are answered by
the control, and their rows are never sent: the worker's catalog, runner and fallback, as
``abx serve`` wires them, against a real ``abx infer`` on CPU sessions."""

from __future__ import annotations

import hashlib
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from service.experiments.validation import load_experiments
from service.inference.catalog import BatchingConfig, ProcessConfig, build_catalog
from service.inference.placement import Placement
from service.inference.runner import FailureCounts, RunResult, SessionRunner, run_with_fallback
from service.inference.sessions import SessionPool
from service.inference.wire import InferenceClient
from tests.conftest import wait_for
from tests.experiment_files import minimal_experiment, write_experiment
from tests.inference.inference_process import InferProcess, running_infer
from tests.model_fixtures import MODELS, demo_models, slow_model

BUDGET_MS = 50


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    demo_models()
    root = tmp_path_factory.mktemp("models")
    shutil.copy(MODELS / "churn_logreg.onnx", root / "churn_logreg.onnx")
    slow_model(root / "slow.onnx", steps=100)
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def experiment(root: Path, key: str, **fields: Any) -> dict[str, Any]:
    variants = [
        {"key": "a", "weight": 0.5,
         "model": {"path": "churn_logreg.onnx", "sha256": sha(root / "churn_logreg.onnx")}},
        {"key": "b", "weight": 0.5,
         "model": {"path": "slow.onnx", "sha256": sha(root / "slow.onnx")}},
    ]  # fmt: skip
    return minimal_experiment(key, variants=variants, **fields)


@pytest.fixture(scope="module")
def infer(models_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InferProcess]:
    log = tmp_path_factory.mktemp("infer") / "infer.log"
    with running_infer(models_root, log, "--providers", "cpu") as process:
        yield process


def process_rows(infer: InferProcess, digest: str) -> int:
    client = infer.client()
    try:
        models = client.call({"op": "status"}, {}, 5)[0]["models"]
    finally:
        client.close()
    rows: int = models.get(digest, {}).get("batching", {}).get("rows", 0)
    return rows


def test_rows_that_wait_past_the_budget_are_answered_by_the_control_and_never_sent(
    infer: InferProcess, models_root: Path, tmp_path: Path
) -> None:
    """Two experiments share the slow model file (one worker batcher, one hosted model): a run
    for the one without a budget holds the worker's connection; requests of the one with a
    50 ms budget queue behind it, time out, are answered by the control's model, and their
    rows are dropped from the worker's next batch instead of being sent."""
    folder = tmp_path / "experiments"
    write_experiment(folder, experiment(models_root, "unbounded"))
    write_experiment(
        folder, experiment(models_root, "bounded", serving={"latency_budget_ms": BUDGET_MS})
    )
    loaded = load_experiments([folder], models_root)
    assert loaded.ok, loaded.problems
    client = InferenceClient(infer.socket, connect_timeout=1.0)
    process = ProcessConfig({}, Placement("process", "test: every model"), client, 60.0)
    catalog = build_catalog(
        [item.experiment for item in loaded.experiments],
        models_root,
        SessionPool(1),
        BatchingConfig(True, 64, 0.0),
        process=process,
    )
    unbounded, bounded = catalog.get("unbounded"), catalog.get("bounded")
    assert unbounded is not None and bounded is not None
    slow = bounded.variants["b"]
    assert slow.batcher is unbounded.variants["b"].batcher is not None
    runner, failures = SessionRunner(64), FailureCounts()
    slow_sha, control_sha = sha(models_root / "slow.onnx"), sha(models_root / "churn_logreg.onnx")
    rows = np.random.default_rng(5).normal(size=(1, 20)).astype(np.float32)
    feeds = {"features": rows}

    def answer(models: Any) -> RunResult:
        return run_with_fallback(
            runner, models, models.variants["b"], feeds, 1, lambda _: feeds, failures
        )

    try:
        answer(unbounded)  # loads the slow model in the process before the clock matters
        sent_before = process_rows(infer, slow_sha)
        held: list[RunResult] = []
        holder = threading.Thread(target=lambda: held.append(answer(unbounded)))
        holder.start()
        assert wait_for(lambda: slow.batcher is not None and slow.batcher.stats()["running"])
        late: list[RunResult] = []
        threads = [threading.Thread(target=lambda: late.append(answer(bounded))) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        holder.join(60)
        assert slow.batcher is not None
        assert wait_for(lambda: slow.batcher.stats()["expired"] == 4)  # type: ignore[union-attr]
    finally:
        for batcher in catalog.batchers().values():
            batcher.close()
        client.close_all()
    assert [(r.served_by.variant, r.failure) for r in late] == [("a", "timeout")] * 4
    control = ort.InferenceSession(
        str(models_root / "churn_logreg.onnx"), providers=["CPUExecutionProvider"]
    )
    for result in late:
        assert result.served_by.model is not None
        assert result.served_by.model.sha256 == control_sha
        np.testing.assert_allclose(
            result.outputs["probability"], control.run(None, feeds)[0], rtol=1e-5, atol=1e-6
        )
    assert [(r.served_by.variant, r.failure) for r in held] == [("b", None)]
    assert process_rows(infer, slow_sha) - sent_before == 1  # the held run's row, no other
    assert failures.snapshot()["bounded"]["b"] == {"timeout": 4}
