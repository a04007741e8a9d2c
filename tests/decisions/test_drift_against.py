"""Drift against the reference profile and against the control at once (``against: both``), on
real onnxruntime sessions, sketches and PostgreSQL; the treatment's sketches use its profile's
bins and the control's the default ones, so the control comparison goes through re-binning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
import yaml
from click.testing import CliRunner

from service.cli.main import main
from service.decisions.inputs import drift_checks
from service.experiments.schema import Experiment
from service.experiments.validation import load_experiments
from tests.decisions.test_drift import (
    FEATURES,
    analyze,
    env_for,
    experiment_folder,
    serve_hours,
)
from tests.experiment_files import write_experiment


def profiled_folder(runner: CliRunner, tmp_path: Path, key: str, against: str) -> Path:
    """Treatment ``b`` pinned to a profile of unshifted standard-normal inputs."""
    drift = [{"kind": "input_drift", "windows": 2, "action": "alert", "against": against}]
    folder = experiment_folder(tmp_path, key, False, drift)
    models = tmp_path / "models"
    data = tmp_path / "reference.csv"
    rows = np.random.default_rng(9).normal(size=(3000, FEATURES))
    data.write_text("a,b,c,d\n" + "\n".join(",".join(f"{v:.5f}" for v in r) for r in rows))
    made = runner.invoke(
        main, ["models", "profile", str(models / "treatment.onnx"), "--data", str(data)]
    )
    assert made.exit_code == 0, made.output
    profile_sha = made.output.splitlines()[-1].strip().split("sha256: ")[1].rstrip("}")
    path = folder / f"{key}.yaml"
    document = yaml.safe_load(path.read_text())
    document["variants"][1]["model"]["reference"] = {
        "path": "treatment.profile.json",
        "sha256": profile_sha,
    }
    write_experiment(folder, document)
    return folder


def checks_against(db: str, experiment: Experiment, against: str) -> dict[str, Any]:
    policy = experiment.policy
    guardrail = policy.drift[0].model_copy(update={"against": against})
    changed = experiment.model_copy(
        update={"policy": policy.model_copy(update={"drift": [guardrail]})}
    )
    with psycopg.connect(db) as conn:
        return {c.reference: c for c in drift_checks(conn, changed) if c.variant == "b"}


def test_both_measures_at_once_and_either_one_acts(
    runner: CliRunner, db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ABX_MODELS", str(tmp_path / "models"))  # where drift_checks reads profiles
    folder = profiled_folder(runner, tmp_path, "both", "both")
    # Both variants' inputs shifted alike: far from the profile, nothing against the control.
    serve_hours(db, folder, "both", hours=2, rows=2000, shift_all=1.0)
    [loaded] = load_experiments([folder], tmp_path / "models").experiments
    experiment = loaded.experiment
    found = checks_against(db, experiment, "both")
    assert set(found) == {"reference profile", "a"}
    assert found["reference profile"].tripped and found["reference profile"].distance > 0.5
    control = found["a"]
    assert not control.tripped and control.distance is not None and control.distance < 0.1
    assert set(checks_against(db, experiment, "control")) == {"a"}
    assert set(checks_against(db, experiment, "reference")) == {"reference profile"}
    out = analyze(runner, "both", env_for(db, folder, tmp_path))
    assert out.startswith("both: alert b") and "against reference profile" in out, out

    # Now b alone shifts further: it drifts from the control as well.
    serve_hours(db, folder, "both", hours=2, rows=2000, shift_b=1.5, shift_all=1.0, seed=8)
    found = checks_against(db, experiment, "both")
    assert found["a"].tripped and found["a"].distance > 0.5
    assert found["reference profile"].tripped


def test_against_reference_needs_a_profile_on_every_treatment(tmp_path: Path) -> None:
    drift = [{"kind": "input_drift", "against": "reference"}]
    folder = experiment_folder(tmp_path, "unprofiled", False, drift)
    [problem] = load_experiments([folder]).problems
    assert "policy.drift[0].against" in str(problem) and "none on b" in str(problem)
    line = (folder / "unprofiled.yaml").read_text().splitlines()[problem.line - 1]
    assert "against" in line
