"""Load YAML keeping the line of every key and item, and refusing duplicate keys.

PyYAML silently keeps the last of two equal keys; for experiment files that
would hide a mistake (a unit forced twice, a field written twice), so the
composed node tree is checked before it is turned into Python data.

A file is read only within bounds, so a careless or hostile one can neither hang nor exhaust
``abx validate``, ``abx serve`` or hot reload: at most ``MAX_YAML_BYTES``, nesting at most
``MAX_YAML_DEPTH`` deep, and at most ``MAX_YAML_NODES`` nodes once aliases are expanded (a
few nested anchors expand into billions: an "alias bomb"), each refusal a ``file:line``
problem. Depth and size are checked on PyYAML's event stream, linear in the file and kept on
a stack (no recursion), before anything is composed; the expansion is counted on the
composed graph, where an alias is a shared node, memoized, so in linear time too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MAX_YAML_BYTES = 256 * 1024
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 20_000
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""libyaml's parser where PyYAML has it: the bounds pass reads every event of the file."""
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


def _check_bounds(text: str) -> tuple[int, str] | None:
    """Refuse deep nesting and too many nodes from the event stream; return the first alias.

    The stream is linear in the file; aliases are refused later only if what they expand to
    passes the limit, so that a shared block (``inputs: *churn_inputs``) stays possible.
    """
    _check_flow_depth(text)
    depth = nodes = 0
    first_alias: tuple[int, str] | None = None
    try:
        for event in yaml.parse(text, Loader=_FAST_LOADER):
            first_alias = _bounded_event(event, depth, nodes, first_alias)
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
            if isinstance(event, yaml.NodeEvent):
                nodes += 1
    except yaml.YAMLError:
        pass  # a syntax error: the composer below reports it, with the usual message
    return first_alias


_QUOTED_OR_COMMENT = re.compile(r""""(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|(?:^|\s)#.*$""")


def _check_flow_depth(text: str) -> None:
    """Refuse flow collections (``[[[…``) nested past the limit before any parser sees them.

    Both of PyYAML's scanners take time quadratic in the flow nesting (``"[" * 5000`` takes
    seconds), before they hand out the events that would show it, so the brackets outside
    quotes and comments are counted first, in one linear pass.
    """
    depth = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if "[" not in line and "{" not in line and depth == 0:
            continue
        for char in _QUOTED_OR_COMMENT.sub("", line):
            if char in "[{":
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise YamlSyntaxError(number, f"nested deeper than {MAX_YAML_DEPTH} levels")
            elif char in "]}":
                depth = max(0, depth - 1)


def _bounded_event(
    event: yaml.Event, depth: int, nodes: int, first_alias: tuple[int, str] | None
) -> tuple[int, str] | None:
    """Raise if ``event`` passes a bound (given the depth and nodes before it)."""
    line = event.start_mark.line + 1 if event.start_mark is not None else 1
    if isinstance(event, yaml.AliasEvent) and first_alias is None:
        first_alias = (line, str(event.anchor))
    if isinstance(event, yaml.CollectionStartEvent) and depth + 1 > MAX_YAML_DEPTH:
        raise YamlSyntaxError(line, f"nested deeper than {MAX_YAML_DEPTH} levels")
    if isinstance(event, yaml.NodeEvent) and nodes + 1 > MAX_YAML_NODES:
        raise YamlSyntaxError(line, f"more than {MAX_YAML_NODES} values in one file")
    return first_alias


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Nodes the tree holds once every alias is expanded (memoized: linear in the file)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    size = 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            size += _expanded_size(key_node, sizes) + _expanded_size(value_node, sizes)
            if size > MAX_YAML_NODES:
                break
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            size += _expanded_size(item, sizes)
            if size > MAX_YAML_NODES:
                break
    sizes[id(node)] = size
    return size


def _read_bounded(path: Path) -> str:
    with path.open("rb") as handle:
        raw = handle.read(MAX_YAML_BYTES + 1)
    if len(raw) > MAX_YAML_BYTES:
        raise YamlSyntaxError(1, f"the file is larger than {MAX_YAML_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise YamlSyntaxError(line, f"not UTF-8 text: {error.reason}") from error


def load_yaml(path: Path) -> SourceDocument:
    """Parse one YAML document from ``path`` with its line index, within bounds."""
    text = _read_bounded(path)
    try:
        first_alias = _check_bounds(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        lines: dict[DataPath, int] = {}
        if (
            node is not None
            and first_alias is not None
            and _expanded_size(node, {}) > MAX_YAML_NODES
        ):
            line, anchor = first_alias
            raise YamlSyntaxError(
                line, f"its aliases (*{anchor}, …) expand to more than {MAX_YAML_NODES} values"
            )
        if node is not None:
            _index_lines(node, (), lines)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise YamlSyntaxError(line, f"invalid YAML: {error.problem or error}") from error
    except yaml.YAMLError as error:
        raise YamlSyntaxError(1, f"invalid YAML: {error}") from error
    except RecursionError as error:  # only where the two parsers disagree on a broken file
        raise YamlSyntaxError(1, f"nested deeper than {MAX_YAML_DEPTH} levels") from error
    return SourceDocument(path=path, data=data, lines=lines)
