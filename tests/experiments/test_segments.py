"""The ``segments`` field: strict shapes with file:line problems, and the bucketing rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.experiments.schema import Experiment, SegmentAttribute
from service.experiments.segments import (
    CLIENT,
    NONE,
    OTHER,
    admits,
    recorded_attributes,
    recorded_value,
    segment_of,
)
from service.experiments.validation import load_experiments
from tests.experiment_files import experiment_yaml, minimal_experiment


def problems_for(tmp_path: Path, extra: str) -> list[str]:
    path = tmp_path / "exp.yaml"
    path.write_text(experiment_yaml(minimal_experiment("exp")) + extra, encoding="utf-8")
    return [str(p).removeprefix(f"{path}") for p in load_experiments([path]).problems]


def test_names_and_mappings_are_accepted(tmp_path: Path) -> None:
    extra = ("segments:\n- platform\n- {attribute: country, values: [US, DE]}\n"
             "- {attribute: app_version, max_values: 3}\npolicy: {segment_correction: fdr_bh}\n")  # fmt: skip
    assert problems_for(tmp_path, extra) == []
    experiment = load_experiments([tmp_path / "exp.yaml"]).experiments[0].experiment
    assert [(s.attribute, s.cap) for s in experiment.segment_attributes] == [
        ("platform", 10), ("country", 2), ("app_version", 3)
    ]  # fmt: skip
    assert experiment.policy.segment_correction == "fdr_bh"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("segments:\n- 3\n", ":12: segments[0]: a segment is an attribute name, or a mapping"),
        ("segments:\n- {attribute: country, colour: red}\n", ":12: segments[0].colour: unknown field"),
        ("segments:\n- bad name\n", ":12: segments[0]: String should match pattern"),
        ("segments:\n- {values: [a]}\n", ":12: segments[0].attribute: Field required"),
        ("segments:\n- {attribute: os, max_values: 51}\n",
         ":12: segments[0].max_values: Input should be less than or equal to 50"),
        ("segments:\n- {attribute: os, max_values: 0}\n",
         ":12: segments[0].max_values: Input should be greater than or equal to 1"),
        ("segments:\n- platform\n- platform\n", ":13: segments[1]: attribute 'platform' given twice"),
        ("segments:\n- {attribute: c, values: [US], max_values: 3}\n",
         ":12: segments[0].max_values: give either 'values' or 'max_values'"),
        ("segments:\n- {attribute: c, values: [US, other]}\n",
         ":12: segments[0].values[1]: 'other' is the bucket of undeclared values"),
        ("segments:\n- {attribute: c, values: [US, US]}\n", ":12: segments[0].values[1]: 'US' given twice"),
        ("segments: [a, b, c, d, e, f]\n", ":11: segments: List should have at most 5 items"),
        ("segments: [abx.client]\n", ":11: segments[0]: names starting with 'abx.' are abx's own"),
        ("policy: {segment_correction: bonferroni}\n",
         ":11: policy.segment_correction: Input should be 'holm' or 'fdr_bh'"),
    ],
)  # fmt: skip
def test_problems_name_their_line(tmp_path: Path, extra: str, expected: str) -> None:
    problems = problems_for(tmp_path, extra)
    assert any(p.startswith(expected) for p in problems), problems


def test_only_the_segment_attributes_are_recorded_as_text() -> None:
    experiment = Experiment.model_validate(minimal_experiment(segments=["platform", "beta", "age"]))
    attributes = {"platform": "ios", "beta": True, "age": 31, "email": "x@example.com"}
    assert recorded_attributes(experiment, attributes) == {
        "platform": "ios", "beta": "true", "age": "31", CLIENT: "server"
    }  # fmt: skip
    assert recorded_attributes(experiment, {}, "abx-client-python/0.1.0") == {
        "platform": NONE, "beta": NONE, "age": NONE, CLIENT: "abx-client-python/0.1.0"
    }  # fmt: skip
    assert recorded_attributes(Experiment.model_validate(minimal_experiment()), attributes) is None
    assert recorded_value(None) == NONE
    assert recorded_value({"nested": 1}) == NONE
    assert recorded_value("a\x00b" + "x" * 100) == "ab" + "x" * 62
    assert recorded_value("\ud800") == "?"  # a lone surrogate jsonb would refuse


def test_first_seen_values_up_to_the_cap_the_rest_other() -> None:
    spec = SegmentAttribute(attribute="platform", max_values=2)
    admitted: dict[str, int] = {}
    seen = []
    for pk, value in enumerate(["ios", "android", NONE, "web", "ios", OTHER], start=1):
        if admits(spec, admitted, value):
            admitted[value] = pk
        seen.append(segment_of(spec, admitted, value, pk))
    # (none) is a bucket outside the cap; a raw value spelled 'other' is never its own bucket
    assert seen == ["ios", "android", NONE, OTHER, "ios", OTHER]


def test_declared_values_and_units_counted_before_a_value_got_its_bucket() -> None:
    declared = SegmentAttribute(attribute="country", values=["US", "DE"])
    assert [admits(declared, {}, v) for v in ("US", "FR", NONE)] == [True, False, True]
    # 'FR' got its bucket at exposure 10 (the cap was raised): units counted before stay other
    admitted = {"FR": 10}
    assert segment_of(declared, admitted, "FR", 9) == OTHER
    assert segment_of(declared, admitted, "FR", 10) == "FR"
    assert segment_of(declared, admitted, None, 11) == OTHER  # (none) not admitted yet
