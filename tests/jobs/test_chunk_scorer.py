"""One chunk scored in process: batch assignment agrees with ``/v1/assign``'s per-unit path
for every kind of unit column, targeting reads the file's extra columns, scores are the
models' own (real onnxruntime sessions), and refused units are rejects with their row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from service.assignment.registry import Registry
from service.assignment.service import AssignmentService
from service.experiments.validation import load_experiments
from service.inference.catalog import BatchingConfig, ExperimentModels, build_catalog
from service.inference.runner import SessionRunner
from service.inference.sessions import SessionPool
from service.jobs.scoring import ChunkScorer, LookupOnlySticky
from service.storage.database import Database
from service.storage.writer import BatchWriter
from tests.experiment_files import minimal_experiment, write_experiment
from tests.jobs.test_jobs import FEATURES, direct
from tests.model_fixtures import MODELS, demo_models


@pytest.fixture(scope="module")
def built() -> dict[str, str]:
    return demo_models()


@pytest.fixture
def parts(db: str, tmp_path: Path, built: dict[str, str]) -> Iterator[
        tuple[AssignmentService, ExperimentModels]]:  # fmt: skip
    inputs = {"features": {"features": FEATURES, "offset": 1.0, "factor": 0.5}}
    experiment = minimal_experiment(
        "chunk",
        variants=[
            {"key": "a", "weight": 0.5, "model": {"path": "churn_logreg.onnx",
             "sha256": built["churn_logreg.onnx"], "inputs": inputs}},
            {"key": "b", "weight": 0.5, "model": {"path": "churn_mlp.onnx",
             "sha256": built["churn_mlp.onnx"], "inputs": inputs}},
        ],
        coverage=0.8,
        targeting={"attribute": "country", "op": "in", "values": ["US", "CA"]},
    )  # fmt: skip
    write_experiment(tmp_path, experiment)
    loaded = load_experiments([tmp_path])
    registry = Registry(loaded)
    catalog = build_catalog(list(registry.experiments.values()), MODELS, SessionPool(1),
                            BatchingConfig(False, 64, 0.0))  # fmt: skip
    models = catalog.get("chunk")
    assert models is not None
    database = Database(db)
    database.open()
    sticky = LookupOnlySticky(database, BatchWriter(database, {}), 1000, 1.0)
    yield AssignmentService(registry, sticky, lookup_grace=0.0), models
    database.close()


def features(count: int) -> dict[str, Any]:
    values = np.random.default_rng(5).normal(size=(count, 20)).round(3)
    return {name: values[:, i] for i, name in enumerate(FEATURES)}


@pytest.mark.parametrize(
    "units",
    [
        pd.Series([f"user-{i}" for i in range(300)], dtype="str"),
        pd.Series(np.arange(10_000, 10_300, dtype=np.int64)),
        pd.Series(
            [*range(100), *[f"u-{i}" for i in range(100)], *[float(i) for i in range(100)]],
            dtype=object,
        ),
    ],
    ids=["text", "integers", "mixed"],
)
def test_a_chunk_is_assigned_like_the_per_unit_path(
    parts: tuple[AssignmentService, ExperimentModels], units: pd.Series
) -> None:
    assignments, models = parts
    count = len(units)
    frame = pd.DataFrame({"unit": units, "country": ["US", "FR", "CA"] * (count // 3),
                          **features(count)})  # fmt: skip
    # Units the job refuses, in every column type that can hold them.
    if units.dtype == object or isinstance(units.dtype, pd.StringDtype):
        frame.loc[3, "unit"] = ""
        frame.loc[4, "unit"] = "x" * 300
        frame.loc[5, "unit"] = None
        frame.loc[6, "unit"] = "nul\x00unit"  # what PostgreSQL cannot store, as /v1/assign
    if units.dtype == object:  # Arrow's strings cannot hold a lone surrogate at all
        frame.loc[7, "unit"] = "lone\ud800surrogate"
    refused = {3, 4, 5, 6} if units.dtype != np.int64 else set()
    if units.dtype == object:
        refused.add(7)
    scorer = ChunkScorer(assignments, models, SessionRunner(64), None, 64)
    result = scorer.score(frame)

    good = frame.drop(index=sorted(refused))
    expected_units = [str(int(u)) if isinstance(u, (int, np.integer)) else str(u)
                      for u in good["unit"]]  # fmt: skip
    assert list(result.scored["unit"]) == expected_units
    expected = [assignments.assign("chunk", unit, {"country": country})
                for unit, country in zip(expected_units, good["country"], strict=True)]  # fmt: skip
    assert list(result.scored["variant"]) == [a.variant for a in expected]
    assert list(result.scored["reason"]) == [a.reason.value for a in expected]
    assert {a.reason.value for a in expected} >= {"hashed", "targeted-out"}
    assert list(result.scored["served_by"]) == [a.variant for a in expected]
    for variant, model in {"a": "churn_logreg.onnx", "b": "churn_mlp.onnx"}.items():
        mine = (result.scored["variant"] == variant).to_numpy()
        np.testing.assert_allclose(result.scored["probability"][mine],
                                   direct(model, good[mine]), rtol=1e-5, atol=1e-6)  # fmt: skip
    assert [(r["row"], r["unit"]) for r in result.rejects] == [(i, None) for i in sorted(refused)]
    reasons = {r["row"]: r["reason"] for r in result.rejects}
    assert all("unit is empty or longer than 256" in reasons[row] for row in {3, 4, 5} & refused)
    if 6 in refused:
        assert reasons[6] == "unit must not contain the NUL character (\\u0000)"
    if 7 in refused:
        assert reasons[7].startswith("unit must not contain a lone UTF-16 surrogate")


def test_an_explicit_variant_skips_assignment_and_an_empty_chunk_is_empty(
    parts: tuple[AssignmentService, ExperimentModels],
) -> None:
    assignments, models = parts
    frame = pd.DataFrame({"unit": [f"user-{i}" for i in range(50)], **features(50)})
    result = ChunkScorer(assignments, models, SessionRunner(16), "b", 16).score(frame)
    assert set(result.scored["variant"]) == {"b"} and set(result.scored["reason"]) == {"explicit"}
    np.testing.assert_allclose(result.scored["probability"], direct("churn_mlp.onnx", frame),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    # Refused rows: a missing number in a float column, text in a column of mixed values.
    frame.loc[2, "x4"] = np.nan
    frame.loc[2, "x7"] = np.inf
    mixed = frame.astype({"x5": object})
    mixed.loc[6, "x5"] = "abc"
    for chunk, refused in ((frame, {2: "column 'x4': not a finite number ('nan')"}),
                           (mixed, {2: "column 'x4': not a finite number ('nan')",
                                    6: "column 'x5': not a finite number ('abc')"})):  # fmt: skip
        result = ChunkScorer(assignments, models, SessionRunner(16), "b", 16).score(chunk)
        assert [(r["row"], r["unit"], r["reason"]) for r in result.rejects] == [
            (row, f"user-{row}", reason) for row, reason in refused.items()
        ]
        good = chunk.drop(index=list(refused)).astype({"x5": float})
        assert list(result.scored["unit"]) == list(good["unit"])
        np.testing.assert_allclose(result.scored["probability"], direct("churn_mlp.onnx", good),
                                   rtol=1e-5, atol=1e-6)  # fmt: skip
    empty = ChunkScorer(assignments, models, SessionRunner(16), None, 16).score(frame.iloc[:0])
    assert len(empty.scored) == 0 and empty.rejects == []
