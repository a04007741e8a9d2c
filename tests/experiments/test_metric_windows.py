"""A metric's outcome window and maturity rule: strict shapes, each problem at its own line."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.experiments.schema import duration_hours
from service.experiments.validation import load_experiments
from tests.experiment_files import experiment_yaml, minimal_experiment


def problems_for(tmp_path: Path, primary: str, extra: str = "") -> list[str]:
    text = experiment_yaml(minimal_experiment("exp")).replace(
        "primary: {name: conversion, type: binary}", f"primary: {primary}"
    )
    path = tmp_path / "exp.yaml"
    path.write_text(text + extra, encoding="utf-8")
    return [str(p).removeprefix(f"{path}") for p in load_experiments([path]).problems]


@pytest.mark.parametrize(
    ("window", "hours"), [("36h", 36.0), ("7d", 168.0), ("2w", 336.0), ("1h", 1.0)]
)
def test_durations(window: str, hours: float) -> None:
    assert duration_hours(window) == hours


def test_a_window_and_maturity_rule_are_accepted(tmp_path: Path) -> None:
    primary = "{name: retained, type: binary, window: 3d, maturity: {delay: 12h, min_units: 50}}"
    assert problems_for(tmp_path, primary) == []
    experiment = load_experiments([tmp_path / "exp.yaml"]).experiments[0].experiment
    assert experiment.metrics.primary.maturity_hours == 84.0


@pytest.mark.parametrize(
    ("primary", "extra", "expected"),
    [
        ("{name: r, type: binary, window: 7 days}", "",
         ":10: metrics.primary.window: Value error, a duration like 36h, 7d or 2w"),
        ("{name: r, type: binary, window: 0d}", "", ":10: metrics.primary.window: Value error"),
        ("{name: r, type: binary, window: 7}", "",
         ":10: metrics.primary.window: Input should be a valid string"),
        ("{name: r, type: binary, window: 400d}", "",
         ":10: metrics.primary.window: Value error, at most a year, got '400d'"),
        ("{name: r, type: binary, window: 7d, maturity: {delay: soon}}", "",
         ":10: metrics.primary.maturity.delay: Value error, a duration like"),
        ("{name: r, type: binary, window: 7d, maturity: {after: 2d}}", "",
         ":10: metrics.primary.maturity.after: unknown field"),
        ("{name: r, type: binary, window: 7d, maturity: {min_units: -1}}", "",
         ":10: metrics.primary.maturity.min_units: Input should be greater than or equal to 0"),
        ("{name: r, type: binary, maturity: {delay: 1d}}", "",
         ":10: metrics.primary.maturity: a maturity rule needs the metric's 'window'"),
        ("{name: r, type: binary, window: 2w}", "",
         ":10: metrics.primary.window: 2w is longer than the experiment's outcome_window_hours (168)"),
        ("{name: r, type: binary}", "  guardrails:\n  - {name: g, type: binary, margin: 0.1, window: 9d}\n",
         ":12: metrics.guardrails[0].window: 9d is longer"),
    ],
)  # fmt: skip
def test_window_problems(tmp_path: Path, primary: str, extra: str, expected: str) -> None:
    problems = problems_for(tmp_path, primary, extra)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("policy:\n  drift:\n  - {kind: input_drift}\n",
         ":13: policy.drift[0]: drift guardrails need the control and at least one treatment"),
        ("policy:\n  drift:\n  - {kind: output_drift}\n",
         ":13: policy.drift[0].kind: Input should be 'prediction_drift' or 'input_drift'"),
        ("policy:\n  drift:\n  - {kind: input_drift, action: page}\n",
         ":13: policy.drift[0].action: Input should be 'alert', 'halt' or 'rollback'"),
        ("policy:\n  drift:\n  - {kind: input_drift, windows: 0}\n",
         ":13: policy.drift[0].windows: Input should be greater than or equal to 1"),
    ],
)  # fmt: skip
def test_drift_guardrail_problems(tmp_path: Path, policy: str, expected: str) -> None:
    problems = problems_for(tmp_path, "{name: conversion, type: binary}", policy)
    assert any(p.startswith(expected) for p in problems), problems
