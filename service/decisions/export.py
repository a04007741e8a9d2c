"""``abx export-state``: write concluded decisions back into the experiment YAML.

PostgreSQL holds what the workers decided; git stays the source of truth for
definitions, so a human commits these edits. Comments and layout of the file
are kept: only the lines that change are rewritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from service.assignment.state import ExperimentState
from service.experiments.schema import Experiment


@dataclass(frozen=True)
class FileChange:
    path: Path
    before: str
    after: str


def target_weights(experiment: Experiment, state: ExperimentState) -> dict[str, float] | None:
    """The weights that make the YAML say what serving does now, or None to leave them."""
    keys = experiment.variant_keys
    if state.state == "promoted" and state.winner:
        return {key: 1.0 if key == state.winner else 0.0 for key in keys}
    if state.state in ("rolled_back", "inconclusive"):
        return {key: 1.0 if key == experiment.control else 0.0 for key in keys}
    if state.rolled_back:
        kept = {v.key: v.weight for v in experiment.variants if v.key not in state.rolled_back}
        total = sum(kept.values())
        return {key: round(kept.get(key, 0.0) / total, 6) for key in keys}
    return None


def _set_weight(text: str, variant: str, weight: float) -> str:
    """Rewrite the weight of one variant, in flow (``{key: a, weight: 0.5}``) or block style."""
    flow = re.compile(
        r"(\{[^}]*\bkey:\s*" + re.escape(variant) + r"\b[^}]*\bweight:\s*)([0-9.eE+-]+)"
    )
    if flow.search(text):
        return flow.sub(lambda m: m.group(1) + f"{weight:g}", text, count=1)
    block = re.compile(
        r"(-\s+key:\s*"
        + re.escape(variant)
        + r"\s*\n(?:[ \t]+[^\n]*\n)*?[ \t]+weight:\s*)([0-9.eE+-]+)"
    )
    return block.sub(lambda m: m.group(1) + f"{weight:g}", text, count=1)


def export_change(path: Path, experiment: Experiment, state: ExperimentState) -> FileChange | None:
    weights = target_weights(experiment, state)
    if weights is None:
        return None
    before = path.read_text(encoding="utf-8")
    after = before
    for variant, weight in weights.items():
        after = _set_weight(after, variant, weight)
    after = re.sub(r"(?m)^status:\s*\w+", "status: concluded", after, count=1)
    note = f"# abx: {state.state}" + (f" ({state.winner})" if state.winner else "") + "\n"
    if not after.startswith(note):
        after = note + after
    return None if after == before else FileChange(path, before, after)
