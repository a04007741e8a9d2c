"""What PostgreSQL can store, checked before a request is acknowledged. Pure.

PostgreSQL's ``text`` and ``jsonb`` hold no NUL character, UTF-8 holds no lone UTF-16
surrogate (which Python strings can carry after ``json.loads``), and JSON has no infinities.
A value that breaks one of these is refused by the database at write time, long after the
client was answered, so the API refuses it up front with the field it is in.
"""

from __future__ import annotations

import math
from typing import Any

MAX_JSON_DEPTH = 32
"""Nesting of objects and arrays inside ``properties`` (and other free-form JSON)."""


def text_problem(text: str) -> str | None:
    """Why PostgreSQL cannot store ``text``, or None when it can."""
    if text.isascii():
        return "must not contain the NUL character (\\u0000)" if "\x00" in text else None
    if "\x00" in text:
        return "must not contain the NUL character (\\u0000)"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"must not contain a lone UTF-16 surrogate (at character {error.start})"
    return None


def json_problem(value: Any, path: str, depth: int = 0) -> tuple[str, str] | None:
    """The first (field, reason) in a JSON value PostgreSQL's ``jsonb`` cannot store, or None.

    Fields are named as in the body (``properties.a[2].b``), at any depth.
    """
    if isinstance(value, str):
        problem = text_problem(value)
        return (path, problem) if problem else None
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, "must be a finite number")
    if isinstance(value, dict | list):
        if depth >= MAX_JSON_DEPTH:
            return path, f"is nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(value, list):
            for index, item in enumerate(value):
                found = json_problem(item, f"{path}[{index}]", depth + 1)
                if found:
                    return found
            return None
        for key, item in value.items():
            problem = text_problem(key)
            if problem:
                return f"{path}.{key!a}", f"(a key) {problem}"
            found = json_problem(item, f"{path}.{key}", depth + 1)
            if found:
                return found
    return None
