"""The one minimal experiment the tests start from, and how to write one as a YAML file.

Tests change what they need (``minimal_experiment(key="x", policy={...})``) instead of
keeping their own copies of a whole experiment file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def minimal_experiment(key: str = "exp", **fields: Any) -> dict[str, Any]:
    """A valid running A/B experiment: control ``a``, treatment ``b``, one binary metric."""
    experiment: dict[str, Any] = {
        "key": key,
        "description": "A test experiment.",
        "owner": "test",
        "status": "running",
        "control": "a",
        "variants": [{"key": "a", "weight": 0.5}, {"key": "b", "weight": 0.5}],
        "metrics": {"primary": {"name": "conversion", "type": "binary"}},
    }
    experiment.update(fields)
    return experiment


def experiment_yaml(experiment: dict[str, Any]) -> str:
    """The experiment as a file would hold it: fields in order, short lists and maps inline."""
    return yaml.safe_dump(experiment, sort_keys=False, default_flow_style=None, width=120)


def write_experiment(folder: Path, experiment: dict[str, Any], name: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name or f"{experiment['key']}.yaml")
    path.write_text(experiment_yaml(experiment), encoding="utf-8")
    return path
