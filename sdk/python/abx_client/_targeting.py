"""Targeting rules (the experiment YAML's ``targeting``) compiled into predicates.

The same semantics as the server's: a missing attribute fails every condition except
``exists: false``; a value of the wrong type fails, never raises; booleans never equal
numbers; versions compare as semver (numbers padded, a pre-release before its release).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

Attributes = Mapping[str, Any]
Predicate = Callable[[Attributes], bool]
VersionKey = tuple[tuple[int, ...], int, tuple[tuple[int, int | str], ...]]

_VERSION = re.compile(r"^v?(\d+(?:\.\d+)*)(?:-([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
_MISSING = object()
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


@lru_cache(maxsize=4096)
def parse_version(text: str) -> VersionKey | None:
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    numbers = tuple(int(part) for part in match.group(1).split("."))
    numbers = numbers + (0,) * (8 - len(numbers)) if len(numbers) < 8 else numbers
    pre = match.group(2)
    if pre is None:
        return numbers, 1, ()
    parts: tuple[tuple[int, int | str], ...] = tuple(
        (0, int(p)) if p.isdigit() else (1, p) for p in pre.split(".")
    )
    return numbers, 0, parts


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _key(value: Any) -> tuple[bool, Any]:
    return isinstance(value, bool), value


def _hashable(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _test(op: str, expected: Any, options: list[Any] | None) -> Callable[[Any], bool]:
    if op in ("eq", "neq"):
        wanted = _key(expected)
        if op == "eq":
            return lambda value: _key(value) == wanted
        return lambda value: _key(value) != wanted
    if op in ("in", "not_in"):
        choices = frozenset(_key(option) for option in options or [])
        if op == "in":
            return lambda value: _hashable(value) and _key(value) in choices
        return lambda value: not (_hashable(value) and _key(value) in choices)
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


def _condition(rule: Mapping[str, Any]) -> Predicate:
    name, op = rule["attribute"], rule["op"]
    if op == "exists":
        expected = rule.get("value")
        return lambda attributes: (attributes.get(name, _MISSING) is not _MISSING) == expected
    test = _test(op, rule.get("value"), rule.get("values"))

    def predicate(attributes: Attributes) -> bool:
        value = attributes.get(name, _MISSING)
        return value is not _MISSING and test(value)

    return predicate


def compile_targeting(node: Mapping[str, Any] | None) -> Predicate:
    """A predicate over a unit's attributes; no rule means everyone."""
    if node is None:
        return lambda attributes: True
    if "all" in node:
        parts = [compile_targeting(child) for child in node["all"]]
        return lambda attributes: all(part(attributes) for part in parts)
    if "any" in node:
        options = [compile_targeting(child) for child in node["any"]]
        return lambda attributes: any(option(attributes) for option in options)
    if "not" in node:
        inner = compile_targeting(node["not"])
        return lambda attributes: not inner(attributes)
    return _condition(node)
