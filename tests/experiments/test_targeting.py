"""Targeting operators, groups, and how missing or mistyped attributes behave."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter

from service.experiments.schema import TargetingNode
from service.experiments.targeting import compile_targeting, parse_version

NODE: TypeAdapter[Any] = TypeAdapter(TargetingNode)


def matches(rule: dict[str, Any], attributes: dict[str, Any]) -> bool:
    return compile_targeting(NODE.validate_python(rule))(attributes)


@pytest.mark.parametrize(
    ("rule", "attributes", "expected"),
    [
        ({"attribute": "country", "op": "eq", "value": "US"}, {"country": "US"}, True),
        ({"attribute": "country", "op": "eq", "value": "US"}, {"country": "us"}, False),
        ({"attribute": "country", "op": "neq", "value": "US"}, {"country": "CA"}, True),
        ({"attribute": "country", "op": "neq", "value": "US"}, {}, False),
        ({"attribute": "country", "op": "in", "values": ["US", "CA"]}, {"country": "CA"}, True),
        ({"attribute": "country", "op": "not_in", "values": ["US", "CA"]}, {"country": "FR"}, True),
        ({"attribute": "age", "op": "gte", "value": 18}, {"age": 18}, True),
        ({"attribute": "age", "op": "gt", "value": 18}, {"age": 18.5}, True),
        ({"attribute": "age", "op": "lt", "value": 18}, {"age": "17"}, False),
        ({"attribute": "age", "op": "lte", "value": 18}, {"age": True}, False),
        ({"attribute": "paid", "op": "eq", "value": True}, {"paid": 1}, False),
        ({"attribute": "paid", "op": "eq", "value": 1}, {"paid": 1.0}, True),
        ({"attribute": "v", "op": "version_gte", "value": "2.0.0"}, {"v": "2.10.1"}, True),
        ({"attribute": "v", "op": "version_gt", "value": "2.0"}, {"v": "2.0.0"}, False),
        ({"attribute": "v", "op": "version_lt", "value": "3.0.0"}, {"v": "3.0.0-beta.1"}, True),
        ({"attribute": "v", "op": "version_eq", "value": "1.2"}, {"v": "v1.2.0"}, True),
        ({"attribute": "v", "op": "version_lte", "value": "1.2"}, {"v": "garbage"}, False),
        ({"attribute": "beta", "op": "exists", "value": True}, {"beta": None}, True),
        ({"attribute": "beta", "op": "exists", "value": False}, {}, True),
    ],
)
def test_condition(rule: dict[str, Any], attributes: dict[str, Any], expected: bool) -> None:
    assert matches(rule, attributes) is expected


def test_groups_nest() -> None:
    rule = {
        "all": [
            {"attribute": "country", "op": "in", "values": ["US", "CA"]},
            {
                "any": [
                    {"attribute": "plan", "op": "eq", "value": "pro"},
                    {"not": {"attribute": "age", "op": "lt", "value": 30}},
                ]
            },
        ]
    }
    assert matches(rule, {"country": "US", "plan": "pro", "age": 20})
    assert matches(rule, {"country": "CA", "plan": "free", "age": 40})
    assert not matches(rule, {"country": "CA", "plan": "free", "age": 20})
    assert not matches(rule, {"country": "FR", "plan": "pro"})


def test_no_rule_targets_everyone() -> None:
    assert compile_targeting(None)({})


def test_versions_order_like_semver() -> None:
    ordered = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "1.0.0", "1.0.1", "1.2", "1.10.0", "2"]
    keys = [parse_version(v) for v in ordered]
    assert all(k is not None for k in keys)
    assert keys == sorted(keys)  # type: ignore[type-var]
    assert parse_version("not.a.version") is None
