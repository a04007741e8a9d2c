"""``abx validate``: every kind of mistake is reported as file:line: field: message."""

from __future__ import annotations

import json
import math
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli.main import main
from service.experiments.validation import load_experiments
from tests.conftest import EXAMPLES
from tests.experiment_files import experiment_yaml, minimal_experiment
from tests.model_fixtures import MODELS, demo_models


def valid(key: str) -> str:
    return experiment_yaml(
        minimal_experiment(key, description="A valid experiment.", owner="team@example.com")
    )


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(*paths: Path) -> list[str]:
    return [str(p) for p in load_experiments(paths).problems]


def test_examples_are_valid() -> None:
    result = load_experiments([EXAMPLES])
    assert result.ok, result.problems
    keys = {item.experiment.key for item in result.experiments}
    assert len(keys) >= 3
    assert any(len(item.experiment.variants) == 3 for item in result.experiments)
    layers = [item.experiment.layer.name for item in result.experiments if item.experiment.layer]
    assert any(layers.count(name) >= 2 for name in layers)


@pytest.mark.parametrize(
    ("replace", "by", "expected"),
    [
        ("status: running\n", "status: running\ncolour: blue\n", ":5: colour: unknown field"),
        (
            "{key: b, weight: 0.5}",
            "{key: b, weight: 0.4}",
            ":6: variants: weights must sum to 1, they sum to 0.9",
        ),
        (
            "{key: b, weight: 0.5}",
            "{key: a, weight: 0.5}",
            ":8: variants[1].key: duplicate variant key 'a'",
        ),
        ("control: a", "control: z", ":5: control: unknown control 'z'"),
        (
            "{key: b, weight: 0.5}",
            "{key: b, weight: '0.5'}",
            ":8: variants[1].weight: Input should be a valid number",
        ),
        (
            "status: running",
            "status: live",
            ":4: status: Input should be 'draft', 'running', 'paused' or 'concluded'",
        ),
        ("key: exp", "key: 'bad key'", ":1: key: String should match pattern"),
        (
            "primary: {name: conversion, type: binary}",
            "primary: {name: conversion}",
            ":10: metrics.primary.type: Field required",
        ),
        ("owner: team@example.com\n", "", ":1: owner: Field required"),
    ],
)
def test_single_file_problems(tmp_path: Path, replace: str, by: str, expected: str) -> None:
    text = valid("exp").replace(replace, by)
    assert text != valid("exp")
    path = write(tmp_path, "exp.yaml", text)
    problems = problems_of(path)
    assert any(p.startswith(str(path)) and expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("targeting", "expected"),
    [
        (
            "{attribute: country, op: equals, value: US}",
            "targeting.op: unknown targeting operator 'equals'",
        ),
        ("{attribute: age, op: gt, value: '18'}", "targeting.value: operator 'gt' needs a number"),
        (
            "{attribute: v, op: version_gte, value: banana}",
            "targeting.value: operator 'version_gte' needs a version",
        ),
        (
            "{attribute: c, op: in, value: US}",
            "targeting.values: operator 'in' takes a list in 'values'",
        ),
        ("{attribute: c, op: in, values: []}", "targeting.values: must not be empty"),
        ("{attribute: c, op: eq}", "targeting.value: operator 'eq' takes a single 'value'"),
        (
            "{attribute: b, op: exists, value: 1}",
            "targeting.value: operator 'exists' needs true or false",
        ),
        (
            "{all: [{attribute: c, op: eq, value: 1}, {any: [{attribute: d, op: nope, value: 2}]}]}",
            "targeting.all[1].any[0].op: unknown targeting operator 'nope'",
        ),
        ("[1, 2]", "targeting: a targeting rule must be a mapping"),
    ],
)
def test_targeting_problems(tmp_path: Path, targeting: str, expected: str) -> None:
    path = write(tmp_path, "exp.yaml", valid("exp") + f"targeting: {targeting}\n")
    problems = problems_of(path)
    assert any(f"{path}:11: {expected}" in p for p in problems), problems


def test_forced_unit_to_an_unknown_variant(tmp_path: Path) -> None:
    path = write(tmp_path, "exp.yaml", valid("exp") + "forced:\n  qa-1: a\n  qa-2: nope\n")
    assert problems_of(path) == [
        f"{path}:13: forced.qa-2: unknown variant 'nope'; variants: ['a', 'b']"
    ]


def test_duplicate_yaml_key_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "exp.yaml", valid("exp") + "forced:\n  qa-1: a\n  qa-1: b\n")
    assert problems_of(path) == [
        f"{path}:13: experiment: duplicate key 'qa-1' (first written on line 12)"
    ]


def test_broken_yaml_and_non_mapping(tmp_path: Path) -> None:
    broken = write(tmp_path, "broken.yaml", "key: [unclosed\n")
    listed = write(tmp_path, "list.yaml", "- 1\n- 2\n")
    problems = problems_of(broken, listed)
    assert any(p.startswith(f"{broken}:") and "invalid YAML" in p for p in problems)
    assert f"{listed}:1: experiment: the file must hold one YAML mapping" in problems


def test_duplicate_experiment_keys_across_files(tmp_path: Path) -> None:
    first = write(tmp_path, "one.yaml", valid("same"))
    second = write(tmp_path, "two.yaml", valid("same"))
    assert problems_of(tmp_path) == [
        f"{second}:1: key: duplicate experiment key 'same' (also in {first})"
    ]


def test_overlapping_layer_ranges(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", valid("a") + "layer: {name: L, range: [0.0, 0.6]}\n")
    b = write(tmp_path, "b.yaml", valid("b") + "layer: {name: L, range: [0.5, 1.0]}\n")
    write(tmp_path, "c.yaml", valid("c") + "layer: {name: M, range: [0.0, 1.0]}\n")
    problems = problems_of(tmp_path)
    assert len(problems) == 1
    assert problems[0].startswith(
        f"{b}:11: layer.range: range [0.5, 1.0) of layer 'L' overlaps [0.0, 0.6)"
    )


def test_inverted_layer_range(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", valid("a") + "layer: {name: L, range: [0.6, 0.2]}\n")
    assert problems_of(path) == [f"{path}:11: layer.range: start 0.6 must be below end 0.2"]


def test_cli_exit_codes(runner: CliRunner, tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", valid("good"))
    ok = runner.invoke(main, ["validate", str(good)])
    assert ok.exit_code == 0 and "1 experiment(s) valid" in ok.output
    bad = write(tmp_path, "bad.yaml", valid("bad").replace("control: a", "control: q"))
    failed = runner.invoke(main, ["validate", str(tmp_path)])
    assert failed.exit_code == 1
    assert f"{bad}:5: control: unknown control 'q'" in failed.output
    empty = tmp_path / "empty"
    empty.mkdir()
    nothing = runner.invoke(main, ["validate", str(empty)])
    assert nothing.exit_code == 1 and "no experiment files" in nothing.output
    missing = runner.invoke(main, ["validate", str(tmp_path / "missing.yaml")])
    assert missing.exit_code == 1 and "cannot read file" in missing.output


NAMED = textwrap.dedent(
    """\
    key: named
    description: Both models take their columns by name.
    owner: team@example.com
    status: running
    control: a
    variants:
      - key: a
        weight: 0.5
        model:
          path: churn_logreg.onnx
          sha256: {sha}
          inputs:
            features:
              features: {names_a}
              factor: {factor}
      - key: b
        weight: 0.5
        model:
          path: churn_logreg.onnx
          sha256: {sha}
          inputs: {inputs_b}
    metrics:
      primary: {{name: conversion, type: binary}}
    """
)
NAMES = [f"col_{i:02d}" for i in range(20)]


def named_problems(tmp_path: Path, **fields: object) -> list[str]:
    sha = demo_models()["churn_logreg.onnx"]
    values = {
        "names_a": NAMES,
        "factor": 0.5,
        "inputs_b": {"features": {"features": NAMES[::-1]}},
    } | fields
    text = NAMED.format(sha=sha, **{key: json.dumps(value) for key, value in values.items()})
    path = write(tmp_path, "named.yaml", text)
    return [str(p).removeprefix(f"{path}:") for p in load_experiments([path], MODELS).problems]


def test_feature_names_are_checked_against_each_other_and_the_model(tmp_path: Path) -> None:
    assert named_problems(tmp_path) == []
    assert named_problems(tmp_path, names_a=NAMES[:19]) == [
        "14: variants[0].model.inputs.features.features: 19 names; the model's input "
        "'features' has 20 features, one name each in the model's order"
    ]
    assert named_problems(tmp_path, names_a=[*NAMES[:19], "col_03"]) == [
        "14: variants[0].model.inputs.features.features[19]: "
        "duplicate feature name 'col_03' (also features[3])"
    ]
    assert named_problems(tmp_path, names_a=[*NAMES[:19], ""]) == [
        "14: variants[0].model.inputs.features.features[19]: String should have at least 1 character"
    ]
    assert named_problems(tmp_path, factor={"col_01": 2.0, "col_99": 1.0}) == [
        "15: variants[0].model.inputs.features.factor.col_99: 'col_99' is not in 'features'"
    ]
    assert named_problems(tmp_path, inputs_b={"features": {"factor": {"col_01": 2.0}}}) == [
        "21: variants[1].model.inputs.features.factor: factor per feature name needs 'features'",
        "21: variants[1].model.inputs.features: another variant names the features of input "
        "'features'; variant 'b' must name them too, or requests that send them by name fail "
        "on its model",
    ]


ALIAS_BOMB = "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else 'lol'}]\n" for i in range(9)
)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        (ALIAS_BOMB, 2, "its aliases (*l0, …) expand to more than 20000 values"),
        ("key: x\n" + "a:\n" + "".join("  " * i + "- \n" for i in range(1, 40)), 34, "nested deeper than 32 levels"),
        ("key: " + "[" * 5000 + "]" * 5000 + "\n", 1, "nested deeper than 32 levels"),
        ("k: [" + ", ".join(["1"] * 30_000) + "]\n", 1, "more than 20000 values in one file"),
        ("k: " + "x" * 300_000 + "\n", 1, "the file is larger than 262144 bytes"),
    ],
)  # fmt: skip
def test_yaml_that_could_hang_or_exhaust_is_refused_as_file_line(
    tmp_path: Path, runner: CliRunner, text: str, line: int, message: str
) -> None:
    path = write(tmp_path, "bomb.yaml", text)
    started = time.monotonic()
    result = runner.invoke(main, ["validate", str(path)])
    assert time.monotonic() - started < 5
    assert result.exit_code == 1
    assert f"{path}:{line}: experiment: {message}" in result.output, result.output


def test_a_shared_block_through_an_alias_stays_valid() -> None:
    assert problems_of(EXAMPLES / "churn_model.yaml") == []


def test_hot_reload_refuses_a_bomb_in_bounded_time_and_keeps_the_old_configuration(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from service.experiments.reload import HotReloader

    folder = tmp_path / "experiments"
    folder.mkdir()
    write(folder, "good.yaml", valid("good"))
    applied: list[object] = []
    reloader = HotReloader(folder, tmp_path, applied.append, interval=0)
    bomb = write(folder, "bomb.yaml", ALIAS_BOMB)
    started = time.monotonic()
    assert reloader.check() is False
    assert time.monotonic() - started < 5
    assert applied == [] and reloader.rejected == 1
    assert f"{bomb}:2: experiment: its aliases" in caplog.text
    bomb.unlink()
    assert reloader.check() is True and len(applied) == 1


@pytest.mark.parametrize(
    ("guardrail", "expected"),
    [
        ("{name: model_latency_ms, type: continuous, margin: 0.1}",
         "metrics.guardrails[0].name: unknown model-health guardrail 'model_latency_ms': did you"
         " mean 'model_latency_p99_ms'? names starting with 'model_' are the built-in ones, read"
         " from /v1/predict: model_fallback_rate, model_latency_p99_ms"),
        ("{name: model_error_rate, type: binary, margin: 0.01}",
         "unknown model-health guardrail 'model_error_rate': did you mean 'model_fallback_rate'?"),
        ("{name: model_fallback_rate, type: continuous, margin: 0.01}",
         "metrics.guardrails[0].type: 'model_fallback_rate' is a binary metric"),
    ],
)  # fmt: skip
def test_model_guardrails_must_be_the_built_in_ones(
    tmp_path: Path, guardrail: str, expected: str
) -> None:
    text = valid("exp") + f"  guardrails:\n    - {guardrail}\n"
    path = write(tmp_path, "exp.yaml", text)
    (problem,) = problems_of(path)
    assert expected in problem and problem.startswith(f"{path}:"), problem


@pytest.mark.parametrize("method", ["msprt", "confidence_sequence", "group_sequential", "bandit"])
def test_validate_warns_when_planned_units_are_too_few_for_the_power(
    runner: CliRunner, tmp_path: Path, method: str
) -> None:
    """10 % -> 11 % needs 14,751 units per arm for 80 % power in a fixed two-sided test at 5 %
    (Fleiss, Levin & Paik, Statistical Methods for Rates and Proportions, 3rd ed., eq. 4.14
    without continuity correction: 14,750.8; statsmodels' arcsine NormalIndPower: 14,744);
    no sequential method can need fewer (a bandit's need is in units in all, which its
    ``planned_units`` per arm, doubled, must cover)."""
    policy = {"method": method, "expected_effect": 0.01, "baseline": 0.10}
    few = tmp_path / "few.yaml"
    few.write_text(experiment_yaml(minimal_experiment("few", policy={**policy,
                                                                      "planned_units": 14_000})))  # fmt: skip
    warned = runner.invoke(main, ["validate", str(few)])
    assert warned.exit_code == 0 and "1 experiment(s) valid" in warned.output
    line = next(
        i for i, text in enumerate(few.read_text().splitlines(), 1) if "planned_units" in text
    )
    assert f"{few}:{line}: policy.planned_units: warning: {method} needs " in warned.output
    needed = int(warned.output.split(" needs ")[1].split()[0])
    assert needed >= 14_751
    enough = tmp_path / "enough" / "enough.yaml"
    enough.parent.mkdir()
    enough.write_text(experiment_yaml(minimal_experiment("enough", policy={**policy,
                                                                            "planned_units": needed})))  # fmt: skip
    quiet = runner.invoke(main, ["validate", str(enough)])
    assert quiet.exit_code == 0 and "warning" not in quiet.output


def test_validate_sizes_a_multiplicative_lift_of_a_continuous_primary(
    runner: CliRunner, tmp_path: Path
) -> None:
    """Revenue of mean 20 and SD 26 lifted by 2 (10 %): the treatment's SD is 28.6, so the
    mSPRT needs R (z_0.975 + z_0.8)^2 (26^2 + 28.6^2) / 2^2 = R x 2,931.3 units, not the
    R x 2,652.6 of equal deviations (R: the mixture's inflation factor)."""
    from scipy.stats import norm

    from analysis.inflation_factor import mixture_inflation_factor

    z2 = (norm.ppf(0.975) + norm.ppf(0.8)) ** 2
    inflation = mixture_inflation_factor(0.05, 0.8)
    unequal, equal = z2 * (26**2 + 28.6**2) / 4 * inflation, z2 * 2 * 26**2 / 4 * inflation
    policy = {"expected_effect": 2.0, "standard_deviation": 26.0,
              "planned_units": round((unequal + equal) / 2)}  # fmt: skip
    metrics = {"primary": {"name": "revenue", "type": "continuous"}}
    for key, extra, warns in (("mean_known", {"baseline": 20.0}, True), ("no_mean", {}, False)):
        path = tmp_path / key / f"{key}.yaml"
        path.parent.mkdir()
        path.write_text(experiment_yaml(minimal_experiment(key, metrics=metrics,
                                                           policy={**policy, **extra})))  # fmt: skip
        result = runner.invoke(main, ["validate", str(path)])
        assert result.exit_code == 0 and "1 experiment(s) valid" in result.output, result.output
        assert ("warning: msprt needs " in result.output) is warns, result.output
        if warns:
            assert int(result.output.split(" needs ")[1].split()[0]) == math.ceil(unequal)


@pytest.mark.parametrize(
    ("primary", "policy", "complaint"),
    [
        ("binary", {"baseline": 1.2}, "policy.baseline: a rate below 1, got 1.2"),
        ("binary", {"standard_deviation": 3.0}, "policy.standard_deviation: not for a binary"),
        ("binary", {"power": 1.0}, "policy.power"),
    ],
)
def test_power_inputs_must_fit_the_primary_metric(
    tmp_path: Path, primary: str, policy: dict[str, float], complaint: str
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(experiment_yaml(minimal_experiment(
        "p", metrics={"primary": {"name": "m", "type": primary}}, policy=policy)))  # fmt: skip
    found = [str(problem) for problem in load_experiments([path]).problems]
    assert any(complaint in text for text in found), found
