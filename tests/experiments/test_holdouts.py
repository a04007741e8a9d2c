"""Holdout files: every mistake is a file:line problem, and the example holdout is valid."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from service.experiments.validation import load_experiments
from tests.conftest import EXAMPLES
from tests.experiment_files import minimal_experiment, write_experiment

HOLDOUT = textwrap.dedent(
    """\
    key: launches
    description: Everything launched, against units that got none of it.
    owner: team@example.com
    share: 0.03
    scope: all
    start: 2026-01-01
    metrics:
      - {name: conversion, type: binary}
    """
)


def folder_with(tmp_path: Path, holdout: str, *others: str) -> Path:
    write_experiment(tmp_path, minimal_experiment("exp"))
    write_experiment(
        tmp_path, minimal_experiment("layered", layer={"name": "l1", "range": [0, 0.5]})
    )
    (tmp_path / "holdouts").mkdir()
    (tmp_path / "holdouts" / "launches.yaml").write_text(holdout, encoding="utf-8")
    for index, text in enumerate(others):
        (tmp_path / "holdouts" / f"other{index}.yaml").write_text(text, encoding="utf-8")
    return tmp_path


def test_the_example_holdout_is_valid_and_covers_every_example() -> None:
    result = load_experiments([EXAMPLES])
    assert result.ok, result.problems
    (loaded,) = result.holdouts
    assert loaded.holdout.share <= 0.1
    assert all(loaded.holdout.covers(item.experiment) for item in result.experiments)


def test_a_valid_holdout_loads(tmp_path: Path) -> None:
    result = load_experiments([folder_with(tmp_path, HOLDOUT)])
    assert result.ok, result.problems
    assert [h.holdout.key for h in result.holdouts] == ["launches"]
    assert {e.experiment.key for e in result.experiments} == {"exp", "layered"}


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ("share: 0.03", "share: 0.2", ":4: share: Input should be less than or equal to 0.1"),
        ("share: 0.03", "share: 0", ":4: share: Input should be greater than 0"),
        ("share: 0.03", 'share: "0.03"', ":4: share: Input should be a valid number"),
        ("scope: all", "scope: most", ":5: scope: `all`, or a mapping"),
        (
            "scope: all",
            "scope: {experiments: [nope]}",
            ":5: scope.experiments[0]: unknown experiment 'nope'",
        ),
        (
            "scope: all",
            "scope: {layers: [l9]}",
            ":5: scope.layers[0]: no experiment is in layer 'l9'",
        ),
        ("scope: all", "scope: {experimints: [exp]}", ":5: scope.experimints: unknown field"),
        ("scope: all", "scope: {}", ":5: scope: name experiments or layers"),
        ("start: 2026-01-01", "start: soon", ":6: start: Value error, an ISO date"),
        ("key: launches", "key: exp", ":1: key: key 'exp' is also an experiment's"),
        (
            "owner: team@example.com\n",
            "owner: team@example.com\ncolour: blue\n",
            ":4: colour: unknown field",
        ),
        (
            "  - {name: conversion, type: binary}",
            "  - {name: conversion, type: binary}\n  - {name: conversion, type: binary}",
            ":9: metrics[1].name: duplicate metric 'conversion'",
        ),
        (
            "  - {name: conversion, type: binary}",
            "  - {name: model_fallback_rate, type: binary}",
            ":8: metrics[0].name: 'model_fallback_rate' is read from predictions",
        ),
        (
            "metrics:\n  - {name: conversion, type: binary}\n",
            "metrics: []\n",
            ":7: metrics: List should have at least 1 item",
        ),
    ],
)
def test_mistakes_are_reported_with_their_line(
    tmp_path: Path, replace: str, by: str, expected: str
) -> None:
    assert replace in HOLDOUT
    folder = folder_with(tmp_path, HOLDOUT.replace(replace, by))
    problems = [str(p) for p in load_experiments([folder]).problems]
    assert len(problems) == 1, problems
    assert problems[0].startswith(str(folder / "holdouts" / "launches.yaml") + expected), problems


def test_an_experiment_may_be_in_one_holdout_only(tmp_path: Path) -> None:
    second = HOLDOUT.replace("key: launches", "key: second").replace(
        "scope: all", "scope: {layers: [l1]}"
    )
    folder = folder_with(tmp_path, HOLDOUT, second)
    (problem,) = [str(p) for p in load_experiments([folder]).problems]
    assert problem.startswith(str(folder / "holdouts" / "other0.yaml") + ":5: scope: ")
    assert "'layered' is already in the scope of holdout 'launches'" in problem


def test_a_holdout_file_named_alone_is_checked_as_a_holdout(tmp_path: Path) -> None:
    folder = folder_with(tmp_path, HOLDOUT.replace("share: 0.03", "share: 0.5"))
    (problem,) = [
        str(p) for p in load_experiments([folder / "holdouts" / "launches.yaml"]).problems
    ]
    assert ":4: share:" in problem


def test_abx_validate_counts_holdouts(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from service.cli.main import main

    folder = folder_with(tmp_path, HOLDOUT)
    ok = CliRunner().invoke(main, ["validate", str(folder)])
    assert ok.exit_code == 0 and "2 experiment(s), 1 holdout(s) valid" in ok.output, ok.output
    (folder / "holdouts" / "launches.yaml").write_text(HOLDOUT.replace("0.03", "0.3"))
    bad = CliRunner().invoke(main, ["validate", str(folder)])
    assert bad.exit_code == 1
    assert f"{folder / 'holdouts' / 'launches.yaml'}:4: share:" in bad.output
