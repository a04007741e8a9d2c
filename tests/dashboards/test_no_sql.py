"""Dashboards read through the stores' functions: no SQL of their own (import-linter checks
the imports; this checks what imports cannot, text sent to the database)."""

from __future__ import annotations

import re

from service.settings import PROJECT_ROOT

SQL = re.compile(r"\.execute\(|\.copy\(|\b(SELECT|INSERT INTO|UPDATE|DELETE FROM)\b")


def test_dashboards_hold_no_sql() -> None:
    found = [
        f"{path.relative_to(PROJECT_ROOT)}:{number}: {line.strip()}"
        for path in sorted((PROJECT_ROOT / "dashboards").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if SQL.search(line) and not line.lstrip().startswith("#")
    ]
    assert found == []
