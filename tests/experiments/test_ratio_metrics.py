"""Ratio metrics in the YAML: strict shapes, each problem at its own file:line."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from service.events.validation import validate_events
from service.experiments.validation import load_experiments
from tests.experiment_files import experiment_yaml, minimal_experiment

SECONDARY = (
    "  secondary:\n  - {name: revenue, type: continuous}\n  - {name: sessions, type: count}\n"
)


def problems_for(tmp_path: Path, primary: str, extra: str = SECONDARY) -> list[str]:
    text = experiment_yaml(minimal_experiment("exp")).replace(
        "primary: {name: conversion, type: binary}", f"primary: {primary}"
    )
    path = tmp_path / "exp.yaml"
    path.write_text(text + extra, encoding="utf-8")
    return [str(p).removeprefix(f"{path}") for p in load_experiments([path]).problems]


def test_a_ratio_of_declared_metrics_is_accepted(tmp_path: Path) -> None:
    primary = "{name: revenue_per_session, type: ratio, numerator: revenue, denominator: sessions}"
    guardrail = "  guardrails:\n  - {name: rps_guard, type: ratio, numerator: revenue, " \
                "denominator: sessions, margin: 0.05}\n"  # fmt: skip
    assert problems_for(tmp_path, primary, SECONDARY + guardrail) == []
    experiment = load_experiments([tmp_path / "exp.yaml"]).experiments[0].experiment
    ratios = experiment.metrics.ratio_metrics()
    assert [(m.name, m.numerator, m.denominator) for m in ratios] == [
        ("revenue_per_session", "revenue", "sessions"), ("rps_guard", "revenue", "sessions")
    ]  # fmt: skip


def test_a_windowed_ratio_of_parts_with_its_window_is_accepted(tmp_path: Path) -> None:
    primary = ("{name: rps, type: ratio, numerator: revenue, denominator: sessions, window: 7d,"
               " maturity: {delay: 1d, min_units: 50}}")  # fmt: skip
    parts = ("  secondary:\n  - {name: revenue, type: continuous, window: 168h}\n"
             "  - {name: sessions, type: count, window: 1w}\n")  # fmt: skip
    assert problems_for(tmp_path, primary, parts) == []
    experiment = load_experiments([tmp_path / "exp.yaml"]).experiments[0].experiment
    assert experiment.metrics.primary.maturity_hours == 8 * 24


@pytest.mark.parametrize(
    ("primary", "extra", "expected"),
    [
        ("{name: r, type: ratio, denominator: sessions}", SECONDARY,
         ":10: metrics.primary: a ratio metric needs 'numerator'"),
        ("{name: r, type: ratio, numerator: revenue}", SECONDARY,
         ":10: metrics.primary: a ratio metric needs 'denominator'"),
        ("{name: r, type: ratio, numerator: revenu, denominator: sessions}", SECONDARY,
         ":10: metrics.primary.numerator: unknown metric 'revenu' (did you mean 'revenue'?)"),
        ("{name: r, type: ratio, numerator: r, denominator: sessions}", SECONDARY,
         ":10: metrics.primary.numerator: a ratio cannot divide itself"),
        ("{name: r, type: ratio, numerator: revenue, denominator: revenue}", SECONDARY,
         ":10: metrics.primary.denominator: numerator and denominator are the same metric"),
        ("{name: r, type: ratio, numerator: revenue, denominator: sessions, window: 7d}", SECONDARY,
         ":10: metrics.primary.numerator: 'revenue' needs the ratio's window ('window: 7d'), has none"),
        ("{name: r, type: ratio, numerator: revenue, denominator: sessions, window: 7d}",
         "  secondary:\n  - {name: revenue, type: continuous, window: 7d}\n"
         "  - {name: sessions, type: count, window: 2d}\n",
         ":10: metrics.primary.denominator: 'sessions' needs the ratio's window ('window: 7d'), has 2d"),
        ("{name: r, type: binary, numerator: revenue}", SECONDARY,
         ":10: metrics.primary.numerator: only a 'type: ratio' metric takes 'numerator'"),
        ("{name: r, type: ratio, numerator: 3, denominator: sessions}", SECONDARY,
         ":10: metrics.primary.numerator: Input should be a valid string"),
        ("{name: r, type: ratio, numerator: revenue, denominator: sessions, scale: 2}", SECONDARY,
         ":10: metrics.primary.scale: unknown field"),
        ("{name: r, type: ratio, numerator: revenue, denominator: q}",
         SECONDARY + "  - {name: q, type: ratio, numerator: revenue, denominator: sessions}\n",
         ":10: metrics.primary.denominator: 'q' is itself a ratio"),
        ("{name: r, type: ratio, numerator: revenue, denominator: sessions}",
         "  secondary:\n  - {name: revenue, type: continuous}\n"
         "  - {name: sessions, type: count, window: 1d}\n",
         ":10: metrics.primary.denominator: 'sessions' has the outcome window 1d; give the ratio"),
        ("{name: c, type: binary}",
         SECONDARY + "  guardrails:\n  - {name: model_latency_p99_ms, type: continuous, margin: 0.1}\n"
         "  - {name: g, type: ratio, numerator: revenue, denominator: model_latency_p99_ms, margin: 1}\n",
         ":16: metrics.guardrails[1].denominator: 'model_latency_p99_ms' is a model-health"),
    ],
)  # fmt: skip
def test_ratio_problems(tmp_path: Path, primary: str, extra: str, expected: str) -> None:
    found = problems_for(tmp_path, primary, extra)
    assert any(line.startswith(expected) for line in found), found


def test_events_under_a_ratio_name_are_refused(tmp_path: Path) -> None:
    primary = "{name: revenue_per_session, type: ratio, numerator: revenue, denominator: sessions}"
    assert problems_for(tmp_path, primary) == []
    experiment = load_experiments([tmp_path / "exp.yaml"]).experiments[0].experiment
    events = [
        {"event_id": "1", "experiment": "exp", "unit": "u1", "metric": "revenue", "value": 3.5},
        {"event_id": "2", "experiment": "exp", "unit": "u1", "metric": "revenue_per_session",
         "value": 1.5},
    ]  # fmt: skip
    _, errors = validate_events(
        events, {"exp": experiment}.get, datetime.now(UTC), timedelta(minutes=5)
    )
    assert [(e.index, e.field) for e in errors] == [(1, "events[1].metric")]
    assert (
        "is a ratio metric" in errors[0].message and "'revenue' and 'sessions'" in errors[0].message
    )
