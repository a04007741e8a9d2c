"""A bandit's YAML: every mistake is reported as file:line: field: message."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.experiments.validation import load_experiments
from tests.experiment_files import experiment_yaml, minimal_experiment


def bandit_yaml(**bandit: object) -> str:
    policy: dict[str, object] = {"method": "bandit"}
    if bandit:
        policy["bandit"] = dict(bandit)
    return experiment_yaml(minimal_experiment("exp", policy=policy))


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "exp.yaml"
    path.write_text(text, encoding="utf-8")
    return [str(p) for p in load_experiments([path]).problems]


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), start=1) if needle in line)


def test_a_bandit_with_defaults_and_one_with_every_field_are_valid(tmp_path: Path) -> None:
    assert problems(tmp_path, bandit_yaml()) == []
    full = bandit_yaml(
        control_floor=0.3, arm_floor=0.1, min_units=200, draws=5000, min_hours_between_moves=0.5
    )
    assert problems(tmp_path, full) == []
    off = full.replace("{key: a, weight: 0.5}", "{key: a, weight: 1.0}").replace(
        "{key: b, weight: 0.5}", "{key: b, weight: 0.0}"
    )
    assert off != full and problems(tmp_path, off) == []  # a treatment turned off (exported)


@pytest.mark.parametrize(
    ("fields", "needle", "expected"),
    [
        ({"colour": 1}, "colour", "policy.bandit.colour: unknown field"),
        ({"arm_floor": 1.5}, "arm_floor", "policy.bandit.arm_floor: Input should be less than"),
        ({"draws": 10}, "draws", "policy.bandit.draws: Input should be greater than or equal"),
        ({"min_units": "100"}, "min_units", "policy.bandit.min_units: Input should be a valid"),
        (
            {"min_hours_between_moves": -1},
            "min_hours_between_moves",
            "policy.bandit.min_hours_between_moves: Input should be greater than or equal",
        ),
        (
            {"min_hours_between_moves": 200},
            "min_hours_between_moves",
            "policy.bandit.min_hours_between_moves: Input should be less than or equal",
        ),
        ({"arm_floor": 0.6}, "arm_floor", "policy.bandit.arm_floor: floors sum to 1.2 over 2"),
        ({"control_floor": 0.6}, "weight: 0.5", "variants[0].weight: a bandit starts from"),
    ],
)
def test_bandit_fields_are_checked_with_their_line(
    tmp_path: Path, fields: dict[str, object], needle: str, expected: str
) -> None:
    text = bandit_yaml(**fields)
    found = problems(tmp_path, text)
    assert any(f"exp.yaml:{line_of(text, needle)}: {expected}" in p for p in found), found


def test_a_bandit_block_needs_the_bandit_method(tmp_path: Path) -> None:
    text = experiment_yaml(minimal_experiment("exp", policy={"bandit": {"arm_floor": 0.1}}))
    found = problems(tmp_path, text)
    expected = f"exp.yaml:{line_of(text, 'bandit')}: policy.bandit: a bandit block needs method"
    assert any(expected in p for p in found), found


def test_a_bandit_takes_ratio_metrics_and_checks_them_as_a_test_does(tmp_path: Path) -> None:
    """Ratios are analysed by period (docs/statistics.md); a malformed one still fails at its line."""
    metrics = {
        "primary": {"name": "revenue_per_session", "type": "ratio", "numerator": "revenue",
                    "denominator": "sessions"},
        "secondary": [
            {"name": "revenue", "type": "continuous"},
            {"name": "sessions", "type": "count"},
        ],
    }  # fmt: skip
    text = experiment_yaml(minimal_experiment("exp", metrics=metrics, policy={"method": "bandit"}))
    assert problems(tmp_path, text) == []
    metrics["secondary"] = [{"name": "revenue", "type": "continuous"}]  # no 'sessions' metric
    text = experiment_yaml(minimal_experiment("exp", metrics=metrics, policy={"method": "bandit"}))
    found = problems(tmp_path, text)
    line = line_of(text, "denominator")
    assert any(f"exp.yaml:{line}: metrics.primary.denominator: unknown metric" in p for p in found)
