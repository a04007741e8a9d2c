"""Assignment core: which variant a unit gets, and why. Pure: no I/O, no clock.

Rules apply in this order: forced -> status (and a decision's stop) ->
targeting -> layer slice -> holdout -> promotion -> coverage (capped by a ramp step) ->
sticky -> hash, and a rolled-back variant sends its units to the control. Four independent
hashes (docs/hashing.md) keep the decisions apart: the layer hash is shared by a layer's
experiments, the holdout hash (one per holdout, shared by every experiment in its scope)
holds a sticky share of units on the control, the coverage hash makes ramps nested
(raising coverage never drops anyone), and the variant hash alone picks the variant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from hashlib import sha256
from typing import Any

from service.assignment.hashing import (
    cumulative_bounds,
    fraction_threshold,
    hash_prefix,
    pick_index,
    unit_fraction,
)
from service.experiments.holdouts import HOLDOUT_GROUP, REST_GROUP, Holdout
from service.experiments.schema import Experiment
from service.experiments.targeting import Predicate, compile_targeting


class Reason(StrEnum):
    FORCED = "forced"
    NOT_RUNNING = "experiment-not-running"
    TARGETED_OUT = "targeted-out"
    NOT_IN_LAYER = "not-in-layer"
    HOLDOUT = "holdout"
    NOT_IN_COVERAGE = "not-in-coverage"
    SWITCHING = "allocation-switching"
    VARIANT_REMOVED = "variant-removed"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled-back"
    HALTED = "experiment-halted"
    PAUSED = "experiment-paused"
    CONCLUDED = "experiment-concluded"
    STICKY = "sticky"
    HASHED = "hashed"


EXPOSED_REASONS = frozenset({Reason.STICKY, Reason.HASHED})


@dataclass(frozen=True)
class HoldoutExposure:
    """The unit reached a holdout's check: an exposure of the holdout, in one of its groups."""

    holdout: str
    seed: str
    group: str
    """``holdout`` (kept on the control) or ``rest`` (everyone else who got this far)."""


@dataclass(frozen=True)
class CompiledHoldout:
    key: str
    seed: str
    share: float
    prefix: bytes
    threshold: bytes
    """``fraction_threshold(share)``: a digest below it is a member (``fraction < share``)."""
    member: HoldoutExposure
    rest: HoldoutExposure


def compile_holdout(holdout: Holdout) -> CompiledHoldout:
    """Precompute the membership prefix and the two exposures (shared, never rebuilt)."""
    return CompiledHoldout(
        key=holdout.key,
        seed=holdout.seed,
        share=holdout.share,
        prefix=hash_prefix("holdout", holdout.key, holdout.seed),
        threshold=fraction_threshold(holdout.share),
        member=HoldoutExposure(holdout.key, holdout.seed, HOLDOUT_GROUP),
        rest=HoldoutExposure(holdout.key, holdout.seed, REST_GROUP),
    )


@dataclass(frozen=True)
class Assignment:
    experiment: str
    variant: str
    reason: Reason
    record: bool = False
    """True for a first assignment that the edge must persist as the sticky record."""
    holdout: HoldoutExposure | None = None
    """Set when the experiment is in a holdout's scope and the unit reached its check."""

    @property
    def exposed(self) -> bool:
        """Only units that entered the experiment by hash or stickiness are exposures."""
        return self.reason in EXPOSED_REASONS


@dataclass(frozen=True)
class Allocation:
    """The weights in force, those used before under the same seed, and any due to replace them.

    ``pending_weights`` is set from a new allocation's switch time until every
    process has flushed the first assignments it made under the old one (see
    ``allocation_history``); meanwhile units whose variant would differ and who
    have no stored assignment wait: they get the control, unexposed.
    """

    weights: tuple[float, ...]
    earlier_weights: tuple[tuple[float, ...], ...] = ()
    pending_weights: tuple[float, ...] | None = None


@dataclass(frozen=True)
class ServingOverride:
    """What the decision workers (or a human) changed: read from ``experiment_state``."""

    winner: str | None = None
    rolled_back: frozenset[str] = frozenset()
    stopped: Reason | None = None
    """HALTED, PAUSED or CONCLUDED: everyone gets the control, unexposed."""
    coverage_cap: float | None = None
    """A ramp step: at most this share of eligible units enters."""


NO_OVERRIDE = ServingOverride()


@dataclass(frozen=True)
class CompiledExperiment:
    """An experiment prepared once for fast assignment."""

    experiment: Experiment
    allocation: Allocation
    eligible: Predicate
    variant_prefix: bytes
    coverage_prefix: bytes
    layer_prefix: bytes | None
    bounds: tuple[float, ...]
    other_bounds: tuple[tuple[float, ...], ...]
    serving: ServingOverride = NO_OVERRIDE
    """Bounds of earlier and pending allocations that differ from the current ones."""
    holdout: CompiledHoldout | None = None
    """The holdout whose scope holds this experiment (validation allows at most one)."""


def compile_experiment(
    experiment: Experiment,
    allocation: Allocation | None = None,
    serving: ServingOverride = NO_OVERRIDE,
    holdout: CompiledHoldout | None = None,
) -> CompiledExperiment:
    """Precompute hash prefixes, cumulative bounds and the targeting predicate."""
    allocation = allocation or Allocation(tuple(v.weight for v in experiment.variants))
    current = cumulative_bounds(allocation.weights)
    others = list(allocation.earlier_weights)
    if allocation.pending_weights is not None:
        others.append(allocation.pending_weights)
    other_bounds = {cumulative_bounds(w) for w in others if any(x > 0 for x in w)} - {current}
    layer = experiment.layer
    return CompiledExperiment(
        experiment=experiment,
        allocation=allocation,
        eligible=compile_targeting(experiment.targeting),
        variant_prefix=hash_prefix("variant", experiment.key, experiment.seed),
        coverage_prefix=hash_prefix("coverage", experiment.key, experiment.seed),
        layer_prefix=hash_prefix("layer", layer.name) if layer is not None else None,
        bounds=current,
        other_bounds=tuple(sorted(other_bounds)),
        serving=serving,
        holdout=holdout,
    )


StoredVariant = Callable[[], str | None]


def assign(
    compiled: CompiledExperiment,
    unit_id: str,
    attributes: Mapping[str, Any],
    stored_variant: StoredVariant,
) -> Assignment:
    """Assign one unit; ``stored_variant`` is asked only when history could change the answer."""
    experiment = compiled.experiment
    key, control = experiment.key, experiment.control
    forced = experiment.forced.get(unit_id)
    if forced is not None:
        return Assignment(key, forced, Reason.FORCED)
    if experiment.status != "running":
        return Assignment(key, control, Reason.NOT_RUNNING)
    serving = compiled.serving
    if serving.stopped is not None:
        return Assignment(key, control, serving.stopped)
    if not compiled.eligible(attributes):
        return Assignment(key, control, Reason.TARGETED_OUT)
    if compiled.layer_prefix is not None and experiment.layer is not None:
        start, end = experiment.layer.range
        if not start <= unit_fraction(compiled.layer_prefix, unit_id) < end:
            return Assignment(key, control, Reason.NOT_IN_LAYER)
    # The holdout comes before promotion: a launched winner is what it measures.
    rest = None
    holdout = compiled.holdout
    if holdout is not None:
        # fraction < share, as one SHA-256 and a bytes comparison (hashing.fraction_threshold).
        if sha256(holdout.prefix + unit_id.encode()).digest() < holdout.threshold:
            return Assignment(key, control, Reason.HOLDOUT, holdout=holdout.member)
        rest = holdout.rest
    if serving.winner is not None:
        return Assignment(key, serving.winner, Reason.PROMOTED, holdout=rest)
    coverage = experiment.coverage
    if serving.coverage_cap is not None:
        coverage = min(coverage, serving.coverage_cap)
    if unit_fraction(compiled.coverage_prefix, unit_id) >= coverage:
        return Assignment(key, control, Reason.NOT_IN_COVERAGE, holdout=rest)
    fraction = unit_fraction(compiled.variant_prefix, unit_id)
    index = pick_index(fraction, compiled.bounds)
    if any(pick_index(fraction, bounds) != index for bounds in compiled.other_bounds):
        stored = stored_variant()
        if stored is not None:
            if stored in serving.rolled_back:
                return Assignment(key, control, Reason.ROLLED_BACK, holdout=rest)
            if stored in experiment.variant_keys:
                return Assignment(key, stored, Reason.STICKY, holdout=rest)
            return Assignment(key, control, Reason.VARIANT_REMOVED, holdout=rest)
        if compiled.allocation.pending_weights is not None:
            return Assignment(key, control, Reason.SWITCHING, holdout=rest)
    variant = experiment.variants[index].key
    if variant in serving.rolled_back:
        return Assignment(key, control, Reason.ROLLED_BACK, holdout=rest)
    return Assignment(key, variant, Reason.HASHED, record=True, holdout=rest)
