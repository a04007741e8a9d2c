"""Drift guardrails on real onnxruntime sessions, real sketches and PostgreSQL, decided by the
workers' own code (``abx analyze``).

Hours are simulated: each hour's traffic runs through onnxruntime and the sketch book at a
clock set to that hour, the batch writer writes the sketches, and the analysis reads the last
complete hours before now, as in production.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import psycopg
import pytest
import yaml
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from service.cli.main import main
from service.decisions.inputs import drift_checks
from service.experiments.validation import load_experiments
from service.inference.histograms import DEFAULT_EDGES
from service.inference.sketches import SKETCHES, SketchBook, profile_edges
from service.storage.database import Database
from service.storage.writer import BatchWriter
from tests.decisions.test_cli import reset_worker_context
from tests.experiment_files import minimal_experiment, write_experiment

FEATURES = 4
WEIGHTS = np.array([[0.8], [-0.5], [0.3], [0.1]], dtype=np.float32)


def save_model(path: Path, constant: bool = False) -> str:
    """probability = sigmoid(x · w), or 0.5 whatever the input (``constant``)."""
    weights = np.zeros_like(WEIGHTS) if constant else WEIGHTS
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["features", "w"], ["z"]),
         helper.make_node("Sigmoid", ["z"], ["probability"])],
        "logistic",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(weights, "w")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    onnx.checker.check_model(str(path))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def experiment_folder(
    tmp_path: Path, key: str, treatment_constant: bool, drift: list[dict[str, Any]]
) -> Path:
    models = tmp_path / "models"
    control_sha = save_model(models / "control.onnx")
    treatment = "constant.onnx" if treatment_constant else "treatment.onnx"
    treatment_sha = save_model(models / treatment, constant=treatment_constant)
    variants = [
        {"key": "a", "weight": 0.5, "model": {"path": "control.onnx", "sha256": control_sha}},
        {"key": "b", "weight": 0.5, "model": {"path": treatment, "sha256": treatment_sha}},
    ]
    folder = tmp_path / "experiments"
    write_experiment(folder, minimal_experiment(key, variants=variants, policy={"drift": drift}))
    return folder


def serve_hours(
    db: str,
    folder: Path,
    key: str,
    hours: int,
    rows: int,
    shift_b: float = 0.0,
    seed: int = 5,
    latest: int = 1,
    shift_all: float = 0.0,
) -> None:
    """``hours`` simulated past hours of traffic, up to ``latest`` hours ago: ``rows`` rows per variant per hour, run by
    each variant's onnxruntime session and sketched; b's inputs shifted by ``shift_b``."""
    [loaded] = load_experiments([folder], folder.parent / "models").experiments
    experiment = loaded.experiment
    rng = np.random.default_rng(seed)
    database = Database(db)
    database.open()
    writer = BatchWriter(database, {SKETCHES.table: SKETCHES}, max_rows=100_000)
    current_hour = int(time.time()) // 3600 * 3600
    clock = [0.0]
    edges = profile_edges(folder.parent / "models", [experiment])
    book = SketchBook(
        writer.put, clock=lambda: clock[0],
        edges_for=lambda sha, feature: edges.get(sha, {}).get(feature, DEFAULT_EDGES),
    )  # fmt: skip
    sessions = {
        v.key: (ort.InferenceSession(str(folder.parent / "models" / v.model.path)), v.model.sha256)
        for v in experiment.variants
        if v.model is not None
    }
    try:
        for back in range(hours + latest - 1, latest - 1, -1):
            clock[0] = current_hour - back * 3600 + 1800
            for variant, (session, sha) in sessions.items():
                features = rng.normal(size=(rows, FEATURES)).astype(np.float32) + shift_all
                if variant == "b":
                    features += shift_b
                for part in np.array_split(features, max(1, rows // 500)):  # requests of ~500 rows
                    [probability] = session.run(None, {"features": part})
                    book.offer(key, variant, sha, {"features": part}, {"probability": probability})
            book.drain()
            if back % 24 == 0 or back == latest:
                writer.flush()
        assert writer.pending_rows() == 0
    finally:
        writer.close()
        database.close()


def analyze(runner: CliRunner, key: str, env: dict[str, str]) -> str:
    reset_worker_context()
    result = runner.invoke(main, ["analyze", key], env=env)
    assert result.exit_code == 0, result.output
    return result.output[result.output.index(f"{key}: ") :]


def env_for(db: str, folder: Path, tmp_path: Path) -> dict[str, str]:
    return {"ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(folder), "ABX_MODELS": str(folder.parent / "models"),
            "ABX_DATA_DIR": str(tmp_path / "data")}  # fmt: skip


@pytest.fixture(autouse=True)
def _fresh_worker() -> Any:
    reset_worker_context()
    yield
    reset_worker_context()


def test_a_shifted_input_pipeline_trips_input_drift_and_is_rolled_back(
    runner: CliRunner, db: str, tmp_path: Path
) -> None:
    drift = [{"kind": "input_drift", "threshold": 0.25, "windows": 3, "action": "rollback"},
             {"kind": "prediction_drift", "threshold": 0.25, "windows": 3, "action": "alert"}]  # fmt: skip
    folder = experiment_folder(tmp_path, "shifted", False, drift)
    serve_hours(db, folder, "shifted", hours=2, rows=2000, shift_b=1.5, latest=2)
    env = env_for(db, folder, tmp_path)
    early = analyze(runner, "shifted", env)
    assert early.startswith("shifted: continue"), early  # two windows over: not yet held for 3
    serve_hours(db, folder, "shifted", hours=1, rows=2000, shift_b=1.5, seed=6)
    # The last complete hour arrives: now three hours in a row are over the threshold.
    out = analyze(runner, "shifted", env)
    assert out.startswith("shifted: rollback b"), out
    assert "input_drift of b: psi" in out and "input:features[" in out
    with psycopg.connect(db) as conn:
        kind, actor, numbers = conn.execute(
            "SELECT kind, actor, numbers FROM decisions WHERE experiment_key = 'shifted'"
        ).fetchone()  # type: ignore[misc]
    assert (kind, actor) == ("rollback", "abx")
    [tripped] = [c for c in numbers["drift"] if c["guardrail"] == "input_drift"]
    assert tripped["tripped"] and tripped["windows_over"] == 3 and tripped["distance"] > 1.0


def test_a_constant_output_model_trips_prediction_drift_announced_once(
    runner: CliRunner, db: str, tmp_path: Path
) -> None:
    drift = [{"kind": "prediction_drift", "threshold": 0.25, "windows": 2, "action": "alert"},
             {"kind": "input_drift", "windows": 2, "action": "halt"}]  # fmt: skip
    folder = experiment_folder(tmp_path, "constant", True, drift)
    serve_hours(db, folder, "constant", hours=3, rows=1000)
    env = env_for(db, folder, tmp_path)
    first = analyze(runner, "constant", env)
    assert first.startswith("constant: alert b"), first
    assert "prediction_drift of b" in first and "output:probability[0]" in first
    again = analyze(runner, "constant", env)
    assert again.startswith("constant: continue") and "still: prediction_drift" in again
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT kind, state_before, state_after FROM decisions WHERE experiment_key = 'constant'"
        ).fetchall()
    assert rows == [("alert", "running", "running")]  # audited once; inputs did not drift


def test_stable_traffic_trips_neither_over_a_simulated_month(db: str, tmp_path: Path) -> None:
    drift = [{"kind": "prediction_drift", "windows": 3}, {"kind": "input_drift", "windows": 3}]
    folder = experiment_folder(tmp_path, "stable", False, drift)
    hours = 30 * 24
    serve_hours(db, folder, "stable", hours=hours, rows=600)
    [loaded] = load_experiments([folder]).experiments
    with psycopg.connect(db) as conn:
        checks = drift_checks(conn, loaded.experiment, history_windows=hours)
    for check in checks:
        distances = [w.distance for w in check.history]
        assert len(distances) == hours and all(d is not None for d in distances)
        longest = run = 0
        for distance in distances:
            run = run + 1 if distance > check.threshold else 0  # type: ignore[operator]
            longest = max(longest, run)
        assert longest < check.windows_needed, (check.guardrail, longest)
        assert not check.tripped
        assert max(distances) < check.threshold, (check.guardrail, max(distances))  # type: ignore[type-var]


def test_a_reference_profile_sets_the_bins_and_is_what_a_variant_is_compared_with(
    runner: CliRunner, db: str, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    sha = save_model(models / "treatment.onnx")
    data = tmp_path / "reference.csv"
    rows = np.random.default_rng(9).normal(size=(3000, FEATURES))
    data.write_text("a,b,c,d\n" + "\n".join(",".join(f"{v:.5f}" for v in r) for r in rows))
    made = runner.invoke(
        main, ["models", "profile", str(models / "treatment.onnx"), "--data", str(data)]
    )
    assert made.exit_code == 0, made.output
    pinned = made.output.splitlines()[-1].strip()
    profile_sha = pinned.split("sha256: ")[1].rstrip("}")
    assert pinned == f"reference: {{path: treatment.profile.json, sha256: {profile_sha}}}"
    profile = json.loads((models / "treatment.profile.json").read_text())
    assert profile["model_sha256"] == sha and len(profile["features"]) == FEATURES + 1
    assert len(profile["features"]["input:features[0]"]["edges"]) == 33  # quantile bins

    drift = [{"kind": "input_drift", "windows": 2, "action": "alert"}]
    folder = experiment_folder(tmp_path, "profiled", False, drift)
    path = folder / "profiled.yaml"
    document = yaml.safe_load(path.read_text())
    document["variants"][1]["model"]["reference"] = {
        "path": "treatment.profile.json",
        "sha256": "0" * 64,
    }
    write_experiment(folder, document)
    bad = runner.invoke(main, ["validate", str(folder)], env={"ABX_MODELS": str(models)})
    assert (
        bad.exit_code == 1
        and "variants[1].model.reference.sha256: treatment.profile.json has" in bad.output
    )
    document["variants"][1]["model"]["reference"]["sha256"] = profile_sha
    write_experiment(folder, document)
    good = runner.invoke(main, ["validate", str(folder)], env={"ABX_MODELS": str(models)})
    assert good.exit_code == 0, good.output

    # Both variants shifted alike: nothing differs from the control, everything from the profile.
    serve_hours(db, folder, "profiled", hours=2, rows=1000, shift_b=0.0, shift_all=1.0)
    with psycopg.connect(db) as conn:
        (edges,) = conn.execute(
            "SELECT edges FROM model_sketches WHERE variant_key = 'b' AND feature = 'input:features[0]' LIMIT 1"
        ).fetchone()  # type: ignore[misc]
    assert edges == profile["features"]["input:features[0]"]["edges"]  # the profile's bins
    env = env_for(db, folder, tmp_path)
    out = analyze(runner, "profiled", env)
    assert out.startswith("profiled: alert b") and "against reference profile" in out, out
