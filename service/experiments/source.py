"""Load YAML keeping the line of every key and item, and refusing duplicate keys.

PyYAML silently keeps the last of two equal keys; for experiment files that
would hide a mistake (a unit forced twice, a field written twice), so the
composed node tree is checked before it is turned into Python data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PathElement = str | int
DataPath = tuple[PathElement, ...]


class YamlSyntaxError(ValueError):
    """The file is not YAML we accept; carries the 1-based line."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


@dataclass(frozen=True)
class SourceDocument:
    path: Path
    data: Any
    lines: dict[DataPath, int] = field(repr=False)

    def line_of(self, data_path: DataPath) -> int:
        """Return the line of the deepest part of ``data_path`` present in the file."""
        for end in range(len(data_path), -1, -1):
            line = self.lines.get(tuple(data_path[:end]))
            if line is not None:
                return line
        return 1


def _index_lines(node: yaml.Node, prefix: DataPath, lines: dict[DataPath, int]) -> None:
    lines.setdefault(prefix, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                raise YamlSyntaxError(
                    line, f"duplicate key {key!r} (first written on line {seen[key]})"
                )
            seen[key] = line
            lines[(*prefix, key)] = line
            _index_lines(value_node, (*prefix, key), lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _index_lines(item, (*prefix, index), lines)


def load_yaml(path: Path) -> SourceDocument:
    """Parse one YAML document from ``path`` with its line index."""
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        lines: dict[DataPath, int] = {}
        if node is not None:
            _index_lines(node, (), lines)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlSyntaxError(line, f"invalid YAML: {error.problem or error}") from error
    except yaml.YAMLError as error:
        raise YamlSyntaxError(1, f"invalid YAML: {error}") from error
    return SourceDocument(path=path, data=data, lines=lines)
