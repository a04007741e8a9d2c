"""What a client SDK needs to assign locally: every experiment compiled for evaluation.

Published by ``GET /v1/sdk/config`` and pushed by ``GET /v1/sdk/stream``. The snapshot
holds, per experiment, the rules of ``core.assign`` as data (status, decision state,
targeting, layer, the holdout whose scope holds it, coverage and its ramp cap, weights in
force, forced units) and the
**moved ranges**: the stretches of the variant hash where the allocations of this seed
(earlier, current and announced) disagree. Outside them no allocation the server could be
serving gives a different variant, so ``core.assign`` never consults the sticky store
there and a client's local answer is the server's. Inside them the client asks the server.

The snapshot depends on the registry's content only (no clock, no process id), so every
serving process of one deployment publishes the same version for the same state; the
version is a digest of the content and serves as the ETag.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from service.assignment.core import CompiledExperiment
from service.assignment.hashing import HASH_SPEC_VERSION, pick_index
from service.assignment.registry import Registry, ServedExperiment
from service.assignment.state import ExperimentState, initial_state
from service.experiments.holdouts import Holdout


@dataclass(frozen=True)
class Snapshot:
    version: str
    body: bytes
    """The JSON document, encoded once: every request for this version sends these bytes."""

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


def moved_ranges(bounds_sets: Iterable[tuple[float, ...]]) -> list[tuple[float, float]]:
    """Half-open ranges ``[low, high)`` of the variant hash whose variant differs between
    allocations (cumulative bounds as ``hashing.cumulative_bounds`` makes them), merged."""
    sets = sorted(set(bounds_sets))
    if len(sets) < 2:
        return []
    points = sorted({0.0, 1.0} | {b for bounds in sets for b in bounds if 0.0 < b < 1.0})
    ranges: list[tuple[float, float]] = []
    for low, high in itertools.pairwise(points):
        # No bound lies inside (low, high): every allocation picks one index on the whole range.
        if len({pick_index(low, bounds) for bounds in sets}) > 1:
            if ranges and ranges[-1][1] == low:
                ranges[-1] = (ranges[-1][0], high)
            else:
                ranges.append((low, high))
    return ranges


def _experiment(served: ServedExperiment, state: ExperimentState | None) -> dict[str, Any]:
    compiled: CompiledExperiment = served.before_switch
    versions = [compiled] if served.after_switch is None else [compiled, served.after_switch]
    experiment = compiled.experiment
    allocation = compiled.allocation
    pending = served.after_switch.allocation.pending_weights if served.after_switch else None
    pending = pending if pending is not None else allocation.pending_weights
    serving = compiled.serving
    definition = experiment.model_dump(mode="json", by_alias=True, exclude_none=True)
    bounds = {c.bounds for c in versions} | {b for c in versions for b in c.other_bounds}
    return {
        "key": experiment.key,
        "status": experiment.status,
        "seed": experiment.seed,
        "hashing_version": HASH_SPEC_VERSION,
        "control": experiment.control,
        "variants": [
            {"key": v.key, "weight": weight}
            for v, weight in zip(experiment.variants, allocation.weights, strict=True)
        ],
        "coverage": experiment.coverage,
        "layer": experiment.layer.model_dump() if experiment.layer else None,
        "holdout": (
            {"key": holdout.key, "seed": holdout.seed, "share": holdout.share}
            if (holdout := compiled.holdout) is not None
            else None
        ),
        "targeting": definition.get("targeting"),
        "forced": dict(experiment.forced),
        "metrics": [m.name for m in experiment.metrics.all_metrics() if m.type != "ratio"],
        "segments": [spec.attribute for spec in experiment.segment_attributes],
        "allocation": {
            "earlier_weights": [list(w) for w in allocation.earlier_weights],
            "pending_weights": list(pending) if pending is not None else None,
            "moved_ranges": [list(r) for r in moved_ranges(bounds)],
        },
        "decision": {
            "state": (state or initial_state(experiment)).state,
            "winner": serving.winner,
            "rolled_back": sorted(serving.rolled_back),
            "stopped": serving.stopped.value if serving.stopped is not None else None,
            "coverage_cap": serving.coverage_cap,
        },
    }


def build_snapshot(
    served: Mapping[str, ServedExperiment],
    states: Mapping[str, ExperimentState],
    holdouts: Mapping[str, Holdout] | None = None,
    settle_seconds: float | None = None,
) -> Snapshot:
    """The document of ``GET /v1/sdk/config``.

    ``settle_seconds`` (``ABX_ALLOCATION_SETTLE_SECONDS``) is published as
    ``allocation_settle_seconds``: the notice every weight change gives. An SDK that polls
    polls often enough to hear of a change, and send what it assigned before, well inside it.
    """
    experiments = {key: _experiment(served[key], states.get(key)) for key in sorted(served)}
    # Holdouts by key, with the metrics an SDK's track() fans out to (each experiment names
    # the holdout whose check it runs under "holdout").
    holdout_entries = {
        key: {"seed": h.seed, "share": h.share, "metrics": [m.name for m in h.metrics]}
        for key, h in sorted((holdouts or {}).items())
    }
    content: dict[str, Any] = {"experiments": experiments}
    if settle_seconds is not None:
        content["allocation_settle_seconds"] = settle_seconds
    if holdout_entries:
        content["holdouts"] = holdout_entries
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    version = hashlib.sha256(canonical).hexdigest()[:32]
    document = {"version": version, "hashing_version": HASH_SPEC_VERSION, **content}
    return Snapshot(version, json.dumps(document, separators=(",", ":")).encode())


class SnapshotCache:
    """The snapshot of one registry, rebuilt only when the registry swapped its tables."""

    def __init__(self, registry: Registry, settle_seconds: float | None = None) -> None:
        self._registry = registry
        self._settle_seconds = settle_seconds
        self._lock = threading.Lock()
        self._source: tuple[object, object] | None = None
        self._snapshot: Snapshot | None = None
        self._held: tuple[object, object] | None = None

    @property
    def settle_seconds(self) -> float | None:
        """The settle time the snapshot publishes (None: not published)."""
        return self._settle_seconds

    def current(self) -> Snapshot:
        served, states = self._registry.view()
        with self._lock:
            if self._snapshot is None or self._source != (id(served), id(states)):
                self._snapshot = build_snapshot(
                    served, states, self._registry.holdouts, self._settle_seconds
                )
                # Identity of the very objects held: the registry keeps them alive while
                # they are current, so an id cannot be reused by a newer table meanwhile.
                self._source = (id(served), id(states))
                self._held = (served, states)
            return self._snapshot
