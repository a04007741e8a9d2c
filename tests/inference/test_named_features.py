"""Inputs sent as named values: put in each model's own column order, or refused by field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.errors import InputMismatch
from service.experiments.schema import ModelRef
from service.inference.catalog import ExperimentModels, ServingModel, input_plans
from service.inference.runner import FailureCounts, SessionRunner, run_with_fallback
from service.inference.sessions import load_model
from service.inference.signature import LISTED_PROBLEMS, InputPlan, TensorSpec, convert_inputs
from tests.model_fixtures import MODELS, demo_models, permuted_model, raising_model

NAMES = [f"col_{i:02d}" for i in range(20)]
"""The demo models' 20 columns, named in their order."""
REVERSED = list(range(19, -1, -1))
FEATURES = TensorSpec("features", np.float32, (None, 20))
ROWS = (np.arange(40, dtype=np.float32).reshape(2, 20) % 7 - 2.0).tolist()


def plans_for(
    names: list[str], spec: TensorSpec = FEATURES, **scaling: Any
) -> tuple[InputPlan, ...]:
    ref = ModelRef.model_validate(
        {
            "path": "m.onnx",
            "sha256": "0" * 64,
            "inputs": {"features": {"model_input": spec.name, "features": names, **scaling}},
        }
    )
    return input_plans(ref, [spec])


def named(row: list[float], names: list[str] = NAMES) -> dict[str, float]:
    return dict(zip(names, row, strict=True))


PLANS = plans_for(NAMES, offset=1.0, factor=0.5)


def test_a_named_row_and_a_named_batch_feed_what_positional_rows_feed() -> None:
    positional, rows = convert_inputs({"features": ROWS}, PLANS, 10)
    assert rows == 2
    single, one = convert_inputs({"features": named(ROWS[0])}, PLANS, 10)
    assert one == 1 and np.array_equal(single["features"], positional["features"][:1])
    # JSON objects keep no order that matters: the names do.
    shuffled = [dict(reversed(named(row).items())) for row in ROWS]
    batch, rows = convert_inputs({"features": shuffled}, PLANS, 10)
    assert rows == 2 and batch["features"].dtype == np.float32
    assert np.array_equal(batch["features"], positional["features"])


def test_each_plan_takes_its_own_columns_by_name_and_ignores_the_rest() -> None:
    request = {"features": [named(row) | {"not_a_model_column": 99.0} for row in ROWS]}
    in_order = convert_inputs(request, plans_for(NAMES), 10)[0]["features"]
    reversed_ = convert_inputs(request, plans_for(NAMES[::-1]), 10)[0]["features"]
    assert np.array_equal(in_order, np.asarray(ROWS, np.float32))
    assert np.array_equal(reversed_, in_order[:, ::-1])
    subset = plans_for(["col_07", "col_02", "col_19"], TensorSpec("x", np.float32, (None, 3)))
    picked = convert_inputs(request, subset, 10)[0]["x"]
    assert np.array_equal(picked, in_order[:, [7, 2, 19]])


def test_scaling_per_feature_name_lands_in_the_models_column() -> None:
    plans = plans_for(
        ["a", "b", "c"],
        TensorSpec("x", np.float32, (None, 3)),
        offset={"b": 2.0},
        factor={"c": 10.0},
    )
    feeds, _ = convert_inputs({"features": {"c": 1.0, "b": 3.0, "a": 5.0}}, plans, 10)
    assert feeds["x"].tolist() == [[5.0, 1.0, 10.0]]
    assert convert_inputs({"features": [[5.0, 3.0, 1.0]]}, plans, 10)[0]["x"].tolist() == [
        [5.0, 1.0, 10.0]
    ]


def test_named_values_for_integer_and_boolean_inputs_keep_their_dtype() -> None:
    ids = plans_for(["user", "item"], TensorSpec("ids", np.int64, (None, 2)))
    assert convert_inputs({"features": {"item": 7, "user": 3}}, ids, 10)[0]["ids"].tolist() == [
        [3, 7]
    ]
    flags = plans_for(["on"], TensorSpec("flags", np.bool_, (None, 1)))
    assert convert_inputs({"features": [{"on": True}]}, flags, 10)[0]["flags"].dtype == np.bool_


def missing(name: str, row: dict[str, float]) -> dict[str, float]:
    return {key: value for key, value in row.items() if key != name}


@pytest.mark.parametrize(
    ("value", "plans", "expected"),
    [
        (missing("col_03", named(ROWS[0])), PLANS, [("inputs.features.col_03", "missing")]),
        (
            [named(ROWS[0]), missing("col_11", named(ROWS[1]))],
            PLANS,
            [("inputs.features[1].col_11", "missing")],
        ),
        (
            named(ROWS[0]) | {"col_05": "4"},
            PLANS,
            [("inputs.features.col_05", "must be a number, not a string")],
        ),
        (
            [named(ROWS[0]) | {"col_00": True, "col_01": None}],
            PLANS,
            [
                ("inputs.features[0].col_00", "must be a number, not a boolean"),
                ("inputs.features[0].col_01", "must be a number, not null"),
            ],
        ),
        (
            [named(ROWS[0]), ROWS[1]],
            PLANS,
            [("inputs.features[1]", "not an object of named values")],
        ),
        (
            named(ROWS[0]),
            (InputPlan("features", FEATURES),),
            [("inputs.features", "the experiment does not name this input's features")],
        ),
        (
            named(ROWS[0]) | {"col_09": float("inf")},
            PLANS,
            [("inputs.features", "values must be finite numbers")],
        ),
        ([named(ROWS[0])] * 11, PLANS, [("inputs.features", "11 rows; expected 1 to 10")]),
        (
            {"user": 1.5, "item": 2},
            plans_for(["user", "item"], TensorSpec("ids", np.int64, (None, 2))),
            [("inputs.features.user", "must be an integer, not a decimal number")],
        ),
    ],
)
def test_bad_named_values_are_refused_by_field(
    value: Any, plans: tuple[InputPlan, ...], expected: list[tuple[str, str]]
) -> None:
    with pytest.raises(InputMismatch) as caught:
        convert_inputs({"features": value}, plans, 10)
    assert caught.value.status == 422
    found = [(error["field"], error["message"]) for error in caught.value.errors or []]
    assert len(found) == len(expected), found
    for (field, message), (want_field, want_message) in zip(found, expected, strict=True):
        assert field == want_field and want_message in message


def test_a_batch_of_bad_rows_lists_the_first_problems_and_counts_the_rest() -> None:
    with pytest.raises(InputMismatch) as caught:
        convert_inputs({"features": [{"col_00": 1.0}] * 2}, PLANS, 10)
    errors = caught.value.errors or []
    assert len(errors) == LISTED_PROBLEMS + 1
    assert errors[0] == {"field": "inputs.features[0].col_01", "message": "missing"}
    assert errors[-1] == {"field": "inputs.features", "message": "28 more problems not listed"}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ServingModel]:
    """The logistic demo model; the same with its columns reversed; one that raises."""
    built = demo_models()
    folder = tmp_path_factory.mktemp("named")
    paths: dict[str, tuple[Path, str, list[str]]] = {
        "control": (MODELS / "churn_logreg.onnx", built["churn_logreg.onnx"], NAMES),
    }
    reversed_path = folder / "reversed.onnx"
    paths["reversed"] = (
        reversed_path,
        permuted_model(MODELS / "churn_logreg.onnx", reversed_path, REVERSED),
        [NAMES[i] for i in REVERSED],
    )
    raising = folder / "raises.onnx"
    paths["raises"] = (raising, raising_model(raising), NAMES)
    serving = {}
    for key, (path, sha, names) in paths.items():
        ref = ModelRef.model_validate(
            {"path": path.name, "sha256": sha, "inputs": {"features": {"features": names}}}
        )
        model = load_model(path, sha, None, 1)
        serving[key] = ServingModel(key, ref, model, None, input_plans(ref, model.inputs))
    return serving


def answer(served: ServingModel, inputs: dict[str, Any]) -> np.ndarray:
    """The model's probabilities for request ``inputs``, converted with its own plans."""
    assert served.model is not None
    feeds, _ = convert_inputs(inputs, served.plans, 10)
    return served.model.run(feeds)["probability"]


def test_models_with_other_column_orders_answer_the_same_named_request(
    models: dict[str, ServingModel],
) -> None:
    request = {"features": [named(row) for row in ROWS]}
    in_order = answer(models["control"], request)
    np.testing.assert_array_equal(in_order, answer(models["control"], {"features": ROWS}))
    np.testing.assert_allclose(answer(models["reversed"], request), in_order, rtol=1e-6)
    # Positional rows are the model's own order: the reversed model needs them reversed.
    reversed_rows = [row[::-1] for row in ROWS]
    np.testing.assert_allclose(
        answer(models["reversed"], {"features": reversed_rows}), in_order, rtol=1e-6
    )


def test_the_fallback_takes_the_named_values_in_its_own_order(
    models: dict[str, ServingModel],
) -> None:
    request = {"features": named([1.0] * 19 + [0.5])}  # a row of ones makes "raises" raise
    experiment = ExperimentModels("named", models, "reversed", None, None, ())
    feeds, rows = convert_inputs(request, models["raises"].plans, 10)
    result = run_with_fallback(
        SessionRunner(64),
        experiment,
        models["raises"],
        feeds,
        rows,
        lambda other: convert_inputs(request, other.plans, 10)[0],
        FailureCounts(),
    )
    assert (result.served_by.variant, result.failure) == ("reversed", "error")
    np.testing.assert_allclose(
        result.outputs["probability"], answer(models["control"], request), rtol=1e-6
    )
