"""Hot reload under load, and model references checked by ``abx validate``."""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from service.cli.main import main
from service.experiments.validation import load_experiments
from tests.conftest import Api, ServerFactory, wait_for
from tests.experiment_files import minimal_experiment, write_experiment
from tests.model_fixtures import MODELS, demo_models

ROW = [[0.5] * 20]


@pytest.fixture(scope="module", autouse=True)
def built() -> dict[str, str]:
    return demo_models()


def test_reload_swaps_models_under_load_and_loses_no_request(
    server_factory: ServerFactory, db: str, experiments_dir: Path, built: dict[str, str]
) -> None:
    server = server_factory(db, experiments_dir, ABX_RELOAD_POLL_SECONDS="0.2")
    statuses: Counter[int] = Counter()
    digests: Counter[str] = Counter()
    stop = threading.Event()

    def client() -> None:
        api = Api(server.base_url, key=None)
        while not stop.is_set():
            response = api.post(
                "/v1/predict",
                {"experiment": "search_reranker", "unit": "qa", "inputs": {"features": ROW}},
            )
            statuses[response.status_code] += 1
            if response.status_code == 200:
                digests[response.json()["model"]["sha256"]] += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    yaml_file = experiments_dir / "search_reranker.yaml"
    original = yaml_file.read_text()
    try:
        assert wait_for(lambda: sum(statuses.values()) > 20)
        # The control now serves the MLP: a new model for an existing variant.
        swapped = original.replace("churn_logreg.onnx", "churn_mlp.onnx", 1).replace(
            built["churn_logreg.onnx"], built["churn_mlp.onnx"], 1
        )
        yaml_file.write_text(swapped)
        assert wait_for(lambda: digests[built["churn_mlp.onnx"]] > 20, timeout=20)
        # A broken change (checksum of another file) is refused; the last good one serves on.
        yaml_file.write_text(swapped.replace(built["churn_mlp.onnx"], built["mlp_heavy.onnx"], 1))
        assert wait_for(lambda: "reload rejected" in server.log(), timeout=20)
        before = digests[built["churn_mlp.onnx"]]
        assert wait_for(lambda: digests[built["churn_mlp.onnx"]] > before + 20)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert set(statuses) == {200}, statuses
    assert "sha256" in server.log() and "search_reranker.yaml" in server.log()


def problems(
    tmp_path: Path, path: str, sha: str, extra: dict[str, Any] | None = None,
    b: dict[str, Any] | None = None,
) -> list[str]:  # fmt: skip
    """Problems of a two-variant experiment whose control's model is ``path`` (with ``extra``)."""
    variants = [
        {"key": "a", "weight": 1.0, "model": {"path": path, "sha256": sha, **(extra or {})}},
        {"key": "b", "weight": 0.0, **(b or {})},
    ]
    file = write_experiment(tmp_path, minimal_experiment("m", variants=variants))
    return [str(p) for p in load_experiments([file], MODELS).problems]


def test_model_references_are_checked(tmp_path: Path, built: dict[str, str]) -> None:
    sha = built["churn_logreg.onnx"]
    model_b = {"model": {"path": "churn_mlp.onnx", "sha256": built["churn_mlp.onnx"]}}
    assert problems(tmp_path, "churn_logreg.onnx", sha, b=model_b) == []
    assert "outside the models root" in problems(tmp_path, "../README.md", sha, b=model_b)[0]
    assert "no model file 'gone.onnx'" in problems(tmp_path, "gone.onnx", sha, b=model_b)[0]
    wrong = problems(tmp_path, "churn_mlp.onnx", sha, b=model_b)
    assert wrong and "variants[0].model.sha256" in wrong[0] and "not the" in wrong[0]
    assert "every served variant needs a model" in problems(tmp_path, "churn_logreg.onnx", sha)[0]
    bad_scale = {"inputs": {"features": {"offset": [1.0, 2.0]}}}
    assert (
        "has 2 values; the model's input 'features' has 20 features"
        in problems(tmp_path, "churn_logreg.onnx", sha, bad_scale, model_b)[0]
    )
    no_input = {"inputs": {"x": {"model_input": "nope"}}}
    assert (
        "names no model input" in problems(tmp_path, "churn_logreg.onnx", sha, no_input, model_b)[0]
    )
    no_output = {"outputs": {"score": "s"}}
    assert "is not an output" in problems(tmp_path, "churn_logreg.onnx", sha, no_output, model_b)[0]
    int8 = {"model": {"path": "mlp_heavy_int8.onnx", "sha256": built["mlp_heavy_int8.onnx"],
                      "batching": True}}  # fmt: skip
    assert "turn batching off" in problems(tmp_path, "churn_logreg.onnx", sha, b=int8)[0]
    shadow = {"shadow": {"sample_rate": 0.5}}
    assert (
        "a shadow variant needs a model"
        in problems(tmp_path, "churn_logreg.onnx", sha, b=shadow)[0]
    )


def test_a_truncated_model_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "models"
    root.mkdir()
    (root / "cut.onnx").write_bytes((MODELS / "churn_mlp.onnx").read_bytes()[:5000])
    sha = hashlib.sha256((root / "cut.onnx").read_bytes()).hexdigest()
    model = {"model": {"path": "cut.onnx", "sha256": sha}}
    variants = [{"key": "a", "weight": 1.0, **model}, {"key": "b", "weight": 0.0, **model}]
    file = write_experiment(tmp_path, minimal_experiment("m", variants=variants))
    found = [str(p) for p in load_experiments([file], root).problems]
    assert found and "is not an ONNX model" in found[0]


def test_quantize_command_reports_accuracy_and_speed(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["models", "quantize", str(MODELS / "churn_mlp.onnx"), str(tmp_path / "q.onnx")]
    )
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output and "delta" in result.output
    assert (tmp_path / "q.onnx").stat().st_size < (MODELS / "churn_mlp.onnx").stat().st_size


def test_demo_models_are_reproducible(tmp_path: Path, built: dict[str, str]) -> None:
    """The checksums in experiments/*.yaml hold on a fresh build."""
    result = CliRunner().invoke(main, ["models", "demo", "--root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name, digest in built.items():
        assert f"{name}  sha256 {digest}" in result.output
    yaml_text = "".join(p.read_text() for p in (MODELS.parent).glob("*.yaml"))
    assert all(digest in yaml_text for digest in built.values())
    # ...and a reference profile of each from its training data, for model.reference.
    assert "reference: {path: churn_logreg.profile.json, sha256: " in result.output
    profile = json.loads((tmp_path / "churn_logreg.profile.json").read_text())
    assert profile["model_sha256"] == built["churn_logreg.onnx"]
    assert (
        "input:features[19]" in profile["features"]
        and "output:probability[0]" in profile["features"]
    )
