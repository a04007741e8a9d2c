"""Targeting rules compiled once into predicates over a unit's attributes.

A missing attribute makes every condition false except ``exists: false``; a
value of the wrong type (a string for ``gt``, an unparseable version) is false
too, never an error: the web app's attributes are data, not configuration.
Everything that can be decided from the rule (operator, parsed versions,
option sets) is decided at compile time: this runs on every request.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

from service.experiments.schema import AllOf, AnyOf, Condition, NotOf

Attributes = Mapping[str, Any]
Predicate = Callable[[Attributes], bool]
VersionKey = tuple[tuple[int, ...], int, tuple[tuple[int, int | str], ...]]

_VERSION = re.compile(r"^v?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
_MISSING = object()
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq, "gt": operator.gt, "gte": operator.ge, "lt": operator.lt, "lte": operator.le,
}  # fmt: skip


@lru_cache(maxsize=4096)
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


def _key(value: Any) -> tuple[bool, Any]:
    """A hashable identity that keeps booleans apart from 1 and 0 (True == 1 in Python)."""
    return isinstance(value, bool), value


def _test(rule: Condition) -> Callable[[Any], bool]:
    """The check on the attribute's value, with everything about the rule precomputed."""
    op, expected = rule.op, rule.value
    if op in ("eq", "neq"):
        wanted = _key(expected)
        if op == "eq":
            return lambda value: _key(value) == wanted
        return lambda value: _key(value) != wanted
    if op in ("in", "not_in"):
        options = frozenset(_key(option) for option in rule.values or [])
        if op == "in":
            return lambda value: _hashable(value) and _key(value) in options
        return lambda value: not (_hashable(value) and _key(value) in options)
    if op.startswith("version_"):
        compare, want = _COMPARE[op.removeprefix("version_")], parse_version(str(expected))
        if want is None:
            return lambda value: False

        def version_test(value: Any) -> bool:
            have = parse_version(value) if isinstance(value, str) else None
            return have is not None and compare(have, want)

        return version_test
    compare = _COMPARE[op]
    return lambda value: _is_number(value) and compare(value, expected)


def _hashable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _condition(rule: Condition) -> Predicate:
    name = rule.attribute
    if rule.op == "exists":
        expected = rule.value
        return lambda attributes: (attributes.get(name, _MISSING) is not _MISSING) == expected
    test = _test(rule)

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
