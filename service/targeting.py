"""Targeting rules compiled once into predicates over a unit's attributes.

A missing attribute makes every condition false except ``exists: false``; a
value of the wrong type (a string for ``gt``, an unparseable version) is false
too, never an error: the web app's attributes are data, not configuration.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from service.experiment_schema import AllOf, AnyOf, Condition, NotOf

Attributes = Mapping[str, Any]
Predicate = Callable[[Attributes], bool]
VersionKey = tuple[tuple[int, ...], int, tuple[tuple[int, int | str], ...]]

_VERSION = re.compile(r"^v?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
_MISSING = object()


def parse_version(text: str) -> VersionKey | None:
    """Order versions as semver does: numbers padded, a pre-release before its release."""
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    numbers = tuple(int(part) for part in match.group(1).split("."))
    numbers = numbers + (0,) * (8 - len(numbers)) if len(numbers) < 8 else numbers
    pre = match.group(2)
    if pre is None:
        return numbers, 1, ()
    parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split("."))
    return numbers, 0, parts


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _same(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from 1 and 0."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _compare(op: str, left: Any, right: Any) -> bool:
    if op.endswith("gte"):
        return bool(left >= right)
    if op.endswith("gt"):
        return bool(left > right)
    if op.endswith("lte"):
        return bool(left <= right)
    if op.endswith("lt"):
        return bool(left < right)
    return bool(left == right)


def _condition(rule: Condition) -> Predicate:
    name, op, expected, options = rule.attribute, rule.op, rule.value, rule.values or []

    def test(value: Any) -> bool:
        if op == "eq":
            return _same(value, expected)
        if op == "neq":
            return not _same(value, expected)
        if op == "in":
            return any(_same(value, option) for option in options)
        if op == "not_in":
            return not any(_same(value, option) for option in options)
        if op.startswith("version_"):
            have = parse_version(value) if isinstance(value, str) else None
            want = parse_version(str(expected))
            return have is not None and want is not None and _compare(op, have, want)
        return _is_number(value) and _compare(op, value, expected)

    if op == "exists":
        return lambda attributes: (attributes.get(name, _MISSING) is not _MISSING) == expected

    def predicate(attributes: Attributes) -> bool:
        value = attributes.get(name, _MISSING)
        return value is not _MISSING and test(value)

    return predicate


def compile_targeting(node: Condition | AllOf | AnyOf | NotOf | None) -> Predicate:
    """Turn a validated targeting tree into one predicate; no rule means everyone."""
    if node is None:
        return lambda attributes: True
    if isinstance(node, AllOf):
        parts = [compile_targeting(child) for child in node.all]
        return lambda attributes: all(part(attributes) for part in parts)
    if isinstance(node, AnyOf):
        options = [compile_targeting(child) for child in node.any]
        return lambda attributes: any(option(attributes) for option in options)
    if isinstance(node, NotOf):
        inner = compile_targeting(node.not_)
        return lambda attributes: not inner(attributes)
    return _condition(node)
