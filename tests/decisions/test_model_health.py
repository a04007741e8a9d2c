"""Model-runtime guardrails: fallback rate and p99 latency per variant roll a variant back."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner

from service.cli.main import main
from service.events import latency as latency_histogram
from tests.conftest import Api, ServerFactory, wait_for
from tests.decisions.test_cli import reset_worker_context
from tests.experiment_files import minimal_experiment, write_experiment
from tests.traffic import simulate

GUARDRAILS = [
    {"name": "model_fallback_rate", "type": "binary", "margin": 0.02, "margin_type": "absolute"},
    {"name": "model_latency_p99_ms", "type": "continuous", "margin": 0.5},
]


def log_predictions(
    url: str, variant: str, count: int, fallback_rate: float, latency_ms: float, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    now = datetime.now(UTC)
    with (
        psycopg.connect(url) as conn,
        conn.cursor().copy(
            "COPY predictions (experiment_key, unit_id, variant_key, reason, in_experiment, served_by,"
            " model_sha256, provider, batch_rows, latency_ms, fallback, cached, shadow, predicted_at) FROM STDIN"
        ) as copy,
    ):
        for i in range(count):
            fallback = bool(rng.random() < fallback_rate)
            latency = float(rng.gamma(4.0, latency_ms / 4.0))
            copy.write_row(("model_guard", f"{variant}-{i}", variant, "hashed", True, "a" if fallback else variant,
                            "0" * 64, "CPUExecutionProvider", 1, latency, fallback, False, False, now))  # fmt: skip


@pytest.fixture
def env(db: str, tmp_path: Path) -> dict[str, str]:
    folder = tmp_path / "experiments"
    folder.mkdir()
    metrics = {"primary": {"name": "conversion", "type": "binary"}, "guardrails": GUARDRAILS}
    policy = {"min_units": 100, "min_runtime_hours": 0}
    write_experiment(folder, minimal_experiment("model_guard", metrics=metrics, policy=policy))
    simulate(
        db,
        "model_guard",
        "model_guard.v1",
        {"a": 500, "b": 500},
        {"a": {"conversion": 0.1}, "b": {"conversion": 0.1}},
    )
    reset_worker_context()
    yield {
        "ABX_DATABASE_URL": db,
        "ABX_EXPERIMENTS": str(folder),
        "ABX_DATA_DIR": str(tmp_path / "data"),
    }
    reset_worker_context()


def test_a_failing_model_is_rolled_back(runner: CliRunner, db: str, env: dict[str, str]) -> None:
    log_predictions(db, "a", 1000, 0.002, 5.0, 1)
    log_predictions(db, "b", 1000, 0.30, 5.0, 2)
    result = runner.invoke(main, ["analyze", "model_guard"], env=env)
    assert result.exit_code == 0, result.output
    assert "model_guard: rollback b" in result.output
    assert "guardrail model_fallback_rate breached by b" in result.output


def test_a_slow_model_is_rolled_back(runner: CliRunner, db: str, env: dict[str, str]) -> None:
    log_predictions(db, "a", 1000, 0.0, 5.0, 3)
    log_predictions(db, "b", 1000, 0.0, 20.0, 4)
    result = runner.invoke(main, ["analyze", "model_guard"], env=env)
    assert "model_guard: rollback b" in result.output
    assert "guardrail model_latency_p99_ms breached by b" in result.output


def test_healthy_models_are_left_alone(runner: CliRunner, db: str, env: dict[str, str]) -> None:
    log_predictions(db, "a", 1000, 0.01, 5.0, 5)
    log_predictions(db, "b", 1000, 0.01, 5.5, 6)
    result = runner.invoke(main, ["analyze", "model_guard"], env=env)
    assert "model_guard: continue" in result.output


def test_histogram_quantiles_bound_the_true_quantile() -> None:
    rng = np.random.default_rng(0)
    latencies = rng.lognormal(1.0, 0.8, 50_000)
    counts = [0] * latency_histogram.BIN_COUNT
    for value in latencies:
        counts[latency_histogram.bin_of(float(value))] += 1
    for q in (0.5, 0.9, 0.99):
        estimate = latency_histogram.quantile(counts, q)
        true = float(np.quantile(latencies, q))
        assert estimate is not None and true <= estimate <= true * 1.13
    assert latency_histogram.quantile([0] * latency_histogram.BIN_COUNT, 0.99) is None


SLOW_TREATMENT = """\
key: slow_treatment
description: The treatment's model is slow; its latency guardrail must roll it back.
owner: test
status: running
control: a
variants:
  - {{key: a, weight: 0.5, model: {{path: churn_logreg.onnx, sha256: {control}}}}}
  - {{key: b, weight: 0.5, model: {{path: slow.onnx, sha256: {slow}}}}}
serving: {{latency_budget_ms: 5000}}
metrics:
  primary: {{name: conversion, type: binary}}
  guardrails:
    - {{name: model_latency_p99_ms, type: continuous, direction: decrease, margin: 0.5}}
policy: {{min_units: 100, min_runtime_hours: 0}}
"""


def test_a_slow_treatment_model_trips_its_latency_guardrail_under_predict_traffic(
    server_factory: ServerFactory, runner: CliRunner, db: str, tmp_path: Path
) -> None:
    from service.experiments.model_refs import file_sha256
    from tests.model_fixtures import MODELS, demo_models, slow_model

    demo_models()
    root = tmp_path / "models"
    root.mkdir()
    (root / "churn_logreg.onnx").write_bytes((MODELS / "churn_logreg.onnx").read_bytes())
    slow_model(root / "slow.onnx", steps=8)  # a few milliseconds a row, the control ~0.05
    folder = tmp_path / "experiments"
    folder.mkdir()
    (folder / "slow_treatment.yaml").write_text(
        SLOW_TREATMENT.format(
            control=file_sha256(root / "churn_logreg.onnx"), slow=file_sha256(root / "slow.onnx")
        )
    )
    simulate(db, "slow_treatment", "slow_treatment.v1", {"a": 300, "b": 300},
             {"a": {"conversion": 0.1}, "b": {"conversion": 0.1}})  # fmt: skip
    server = server_factory(db, folder, ABX_MODELS=str(root), ABX_ROLLUP_INTERVAL_SECONDS="0.2")
    api = Api(server.base_url)
    row = [[0.5] * 20]

    def traffic(worker: int) -> None:
        for i in range(600):  # ~1,200 a variant: the always-valid p99 bounds need them
            body = {"experiment": "slow_treatment", "unit": f"w{worker}-{i}",
                    "inputs": {"features": row}}  # fmt: skip
            assert api.post("/v1/predict", body).status_code == 200

    threads = [threading.Thread(target=traffic, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    def rolled_up() -> dict[str, int]:
        with psycopg.connect(db) as conn:
            return dict(
                conn.execute(
                    "SELECT variant_key, sum(requests) FROM model_health"
                    " WHERE experiment_key = 'slow_treatment' GROUP BY 1"
                ).fetchall()
            )

    assert wait_for(lambda: len(rolled_up()) == 2 and min(rolled_up().values()) >= 1000, timeout=60)
    env = {"ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(folder), "ABX_MODELS": str(root),
           "ABX_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    reset_worker_context()
    try:
        result = runner.invoke(main, ["analyze", "slow_treatment"], env=env)
    finally:
        reset_worker_context()
    assert result.exit_code == 0, result.output
    assert "slow_treatment: rollback b" in result.output, result.output
    assert "guardrail model_latency_p99_ms breached by b" in result.output
    # The serving processes follow the stored state: nobody new gets the slow model.
    assert wait_for(
        lambda: all(
            api.assign("slow_treatment", f"after-{i}")["variant"] == "a" for i in range(20)
        ),
        timeout=30,
    )
