"""What a unit id may be: the same rule for every request that names one."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import PlainValidator

from service.storage.values import text_problem

MAX_UNIT_LENGTH = 256


def _unit_text(value: Any) -> str:
    """Integers are accepted as unit ids and hashed as their decimal text (docs/hashing.md)."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_UNIT_LENGTH:
        raise ValueError(
            f"must be a non-empty string of at most {MAX_UNIT_LENGTH} characters, or an integer"
        )
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


UnitId = Annotated[str, PlainValidator(_unit_text)]
