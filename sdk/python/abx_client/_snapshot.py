"""The server's snapshot (``GET /v1/sdk/config``) compiled once, and local assignment over it.

The rules run in the server's order: forced, status and decision stop, targeting, layer,
holdout, promotion, coverage (capped by a ramp step), then the variant hash. Where the hash falls in
a *moved range* (allocations of this seed disagree there, so the unit's stored first
assignment may decide), ``evaluate`` returns None: only the server can answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from abx_client._hashing import (
    HASH_SPEC_VERSION,
    cumulative_bounds,
    hash_prefix,
    pick_index,
    unit_fraction,
)
from abx_client._memory import memory_key
from abx_client._targeting import Predicate, compile_targeting

EXPOSED_REASONS = frozenset({"sticky", "hashed"})


@dataclass(frozen=True)
class Assignment:
    """A unit's variant in one experiment, and why (the reasons of ``/v1/assign``).

    ``source`` says who answered: ``local`` (from the snapshot), ``server`` (asked because
    the unit's hash lies in a moved range) or ``sdk`` (the SDK could not know: reasons
    ``sdk-not-ready``, ``sdk-server-unavailable``, ``unknown-experiment``, ``sdk-stale``).
    """

    experiment: str
    variant: str | None
    reason: str
    in_experiment: bool = False
    source: str = "local"
    holdout: str | None = None
    """The holdout whose check the unit reached (reason ``holdout``: held out; otherwise its
    comparison group), as ``/v1/assign`` answers it."""
    holdout_group: str | None = None
    """``holdout`` or ``rest`` when ``holdout`` is set."""


@dataclass(frozen=True)
class CompiledExperiment:
    key: str
    seed: str
    running: bool
    control: str
    variants: tuple[str, ...]
    bounds: tuple[float, ...]
    coverage: float
    layer_prefix: bytes | None
    layer_range: tuple[float, float]
    eligible: Predicate
    forced: Mapping[str, str]
    moved: tuple[tuple[float, float], ...]
    variant_prefix: bytes
    coverage_prefix: bytes
    winner: str | None
    rolled_back: frozenset[str]
    stopped: str | None
    metrics: frozenset[str]
    segments: tuple[str, ...] = ()
    """The attributes the experiment is analysed by: sent with the unit's exposure."""
    holdout: CompiledHoldout | None = None
    memory_prefix: str = ""
    """``memory_key(key, seed)``: the client's memories key a unit by this plus its id."""
    answers: _Answers | None = field(default=None, compare=False, repr=False)
    """Every local answer this experiment can give, made once (``evaluate`` allocates none)."""


@dataclass(frozen=True)
class _Answers:
    """The ``Assignment`` objects of one compiled experiment, made at compile time.

    An answer depends only on the experiment, the reason and the variant, so ``evaluate``
    hands out these shared (frozen) objects: the application's call allocates nothing the
    garbage collector must later walk.
    """

    hashed: tuple[Assignment, ...]
    """By variant index; a rolled-back variant's entry is the control's ``rolled-back``."""
    control: Mapping[str, Assignment]
    """Reason -> the control's answer with that reason."""
    forced: Mapping[str, Assignment]
    promoted: Assignment | None
    stale: Assignment
    """The control with reason ``sdk-stale`` (``stale_policy="control"``; source ``sdk``)."""


def _answers(compiled: CompiledExperiment) -> _Answers:
    key, control = compiled.key, compiled.control
    holdout = compiled.holdout.key if compiled.holdout is not None else None
    rest = "rest" if holdout is not None else None
    before_holdout = ("experiment-not-running", "targeted-out", "not-in-layer")
    controls = {reason: Assignment(key, control, reason) for reason in before_holdout}
    if compiled.stopped is not None:
        controls[compiled.stopped] = Assignment(key, control, compiled.stopped)
    if holdout is not None:
        controls["holdout"] = Assignment(
            key, control, "holdout", holdout=holdout, holdout_group="holdout"
        )
    for reason in ("not-in-coverage", "rolled-back"):
        controls[reason] = Assignment(key, control, reason, holdout=holdout, holdout_group=rest)
    hashed = tuple(
        controls["rolled-back"]
        if variant in compiled.rolled_back
        else Assignment(key, variant, "hashed", True, holdout=holdout, holdout_group=rest)
        for variant in compiled.variants
    )
    promoted = (
        Assignment(key, compiled.winner, "promoted", holdout=holdout, holdout_group=rest)
        if compiled.winner is not None
        else None
    )
    forced = {unit: Assignment(key, variant, "forced") for unit, variant in compiled.forced.items()}
    stale = Assignment(key, control, "sdk-stale", source="sdk")
    return _Answers(hashed, controls, forced, promoted, stale)


@dataclass(frozen=True)
class CompiledHoldout:
    key: str
    seed: str
    share: float
    prefix: bytes
    memory_prefix: str = ""


def compile_experiment(data: Mapping[str, Any]) -> CompiledExperiment:
    if data.get("hashing_version", HASH_SPEC_VERSION) != HASH_SPEC_VERSION:
        raise ValueError(f"hashing version {data['hashing_version']} is not supported")
    key, seed = data["key"], data["seed"]
    decision = data["decision"]
    coverage = float(data["coverage"])
    if decision.get("coverage_cap") is not None:
        coverage = min(coverage, float(decision["coverage_cap"]))
    layer = data.get("layer")
    holdout = data.get("holdout")
    compiled = CompiledExperiment(
        key=key,
        seed=seed,
        running=data["status"] == "running",
        control=data["control"],
        variants=tuple(v["key"] for v in data["variants"]),
        bounds=cumulative_bounds(tuple(float(v["weight"]) for v in data["variants"])),
        coverage=coverage,
        layer_prefix=hash_prefix("layer", layer["name"]) if layer else None,
        layer_range=(float(layer["range"][0]), float(layer["range"][1])) if layer else (0.0, 1.0),
        eligible=compile_targeting(data.get("targeting")),
        forced=dict(data.get("forced") or {}),
        moved=tuple((float(lo), float(hi)) for lo, hi in data["allocation"]["moved_ranges"]),
        variant_prefix=hash_prefix("variant", key, seed),
        coverage_prefix=hash_prefix("coverage", key, seed),
        winner=decision.get("winner"),
        rolled_back=frozenset(decision.get("rolled_back") or ()),
        stopped=decision.get("stopped"),
        metrics=frozenset(data.get("metrics") or ()),
        segments=tuple(data.get("segments") or ()),
        holdout=CompiledHoldout(
            holdout["key"],
            holdout["seed"],
            float(holdout["share"]),
            hash_prefix("holdout", holdout["key"], holdout["seed"]),
            memory_key(holdout["key"], holdout["seed"]),
        )
        if holdout
        else None,
        memory_prefix=memory_key(key, seed),
    )
    return replace(compiled, answers=_answers(compiled))


@dataclass(frozen=True)
class Snapshot:
    version: str
    experiments: Mapping[str, CompiledExperiment]
    holdout_metrics: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Holdout key -> its metrics: ``track`` without an experiment sends to these too."""
    settle_seconds: float | None = None
    """The notice a weight change gives before it applies (the server's
    ``ABX_ALLOCATION_SETTLE_SECONDS``); None from a server that does not say."""

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Snapshot:
        return cls(
            str(document["version"]),
            {key: compile_experiment(data) for key, data in document["experiments"].items()},
            {
                key: frozenset(data.get("metrics") or ())
                for key, data in (document.get("holdouts") or {}).items()
            },
            _seconds(document.get("allocation_settle_seconds")),
        )


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value >= 0 else None


def evaluate(
    compiled: CompiledExperiment, unit: str, attributes: Mapping[str, Any]
) -> Assignment | None:
    """The server's answer from the snapshot, or None when the unit's history decides."""
    answers = compiled.answers
    assert answers is not None, "compile_experiment makes the answers"
    forced = answers.forced.get(unit)
    if forced is not None:
        return forced
    if not compiled.running:
        return answers.control["experiment-not-running"]
    if compiled.stopped is not None:
        return answers.control[compiled.stopped]
    if not compiled.eligible(attributes):
        return answers.control["targeted-out"]
    if compiled.layer_prefix is not None:
        start, end = compiled.layer_range
        if not start <= unit_fraction(compiled.layer_prefix, unit) < end:
            return answers.control["not-in-layer"]
    holdout = compiled.holdout
    if holdout is not None and unit_fraction(holdout.prefix, unit) < holdout.share:
        return answers.control["holdout"]
    if answers.promoted is not None:
        return answers.promoted
    if unit_fraction(compiled.coverage_prefix, unit) >= compiled.coverage:
        return answers.control["not-in-coverage"]
    fraction = unit_fraction(compiled.variant_prefix, unit)
    for low, high in compiled.moved:
        if low <= fraction < high:
            return None
    return answers.hashed[pick_index(fraction, compiled.bounds)]


def from_stored(compiled: CompiledExperiment, stored: str) -> Assignment:
    """The answer for a unit whose first assignment the server told us (in a moved range).

    Only a unit past the holdout's check reaches a moved range, so it is in group ``rest``.
    """
    holdout = compiled.holdout.key if compiled.holdout is not None else None
    group = "rest" if holdout is not None else None
    if stored in compiled.rolled_back:
        return Assignment(compiled.key, compiled.control, "rolled-back", source="server",
                          holdout=holdout, holdout_group=group)  # fmt: skip
    if stored in compiled.variants:
        return Assignment(compiled.key, stored, "sticky", True, source="server",
                          holdout=holdout, holdout_group=group)  # fmt: skip
    return Assignment(compiled.key, compiled.control, "variant-removed", source="server",
                      holdout=holdout, holdout_group=group)  # fmt: skip
