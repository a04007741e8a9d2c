"""The decision timeline as the pages show it (the audit log itself is ``decisions.store``'s)."""

from __future__ import annotations

from typing import Any


def scalar_numbers(numbers: dict[str, Any]) -> list[tuple[str, Any]]:
    """The top-level numbers of a decision that fit in a table cell (the rest stay in the JSON)."""
    return [
        (name, value)
        for name, value in numbers.items()
        if isinstance(value, str | int | float | bool) or value is None
    ]
