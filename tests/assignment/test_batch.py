"""Batch assignment: the same variant, reason, record flag and holdout group as the scalar core.

Random experiments cover every rule of ``core.assign``: forced units, status, decision stops,
targeting, layer slices, holdouts, promotion, coverage (with ramp caps), allocation history
(stored first assignments, switching) and rollbacks; the published vectors of
docs/hashing.md are checked through the batch path too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from service.assignment.batch import assign_batch
from service.assignment.core import (
    Allocation,
    Reason,
    ServingOverride,
    assign,
    compile_experiment,
    compile_holdout,
)
from service.assignment.hashing import (
    cumulative_bounds,
    hash_fractions,
    hash_prefix,
    pick_index,
    pick_indexes,
    unit_hashes,
)
from service.experiments.holdouts import Holdout
from service.experiments.schema import Experiment

VECTORS = json.loads((Path(__file__).parent / "vectors" / "hashing_v1.json").read_text("utf-8"))
KEYS = ["a", "b", "c", "d"]
COUNTRIES = ["US", "CA", "FR", "DE"]

units = st.text(min_size=1, max_size=12) | st.from_regex(r"user-[0-9]{1,4}", fullmatch=True)
attributes = st.fixed_dictionaries({}, optional={"country": st.sampled_from(COUNTRIES)})
weights = (
    st.lists(st.integers(0, 10), min_size=4, max_size=4)
    .filter(lambda w: sum(w) > 0)
    .map(lambda w: tuple(x / sum(w) for x in w))
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Any, list[str], list[dict[str, Any]], dict[str, str]]:
    count = draw(st.integers(2, 4))
    keys = KEYS[:count]
    current = draw(weights)[:count]
    if not any(current):
        current = (1.0, *current[1:])
    data: dict[str, Any] = {
        "key": "batch_exp", "description": "d", "owner": "o",
        "status": draw(st.sampled_from(["running"] * 6 + ["paused", "draft"])),
        "control": keys[0],
        "variants": [{"key": k, "weight": w} for k, w in zip(keys, current, strict=True)],
        "coverage": draw(st.sampled_from([1.0, 1.0, 0.5, 0.0, 0.97])),
        "metrics": {"primary": {"name": "m", "type": "binary"}},
    }  # fmt: skip
    unit_list = draw(st.lists(units, min_size=0, max_size=60, unique=True))
    if unit_list and draw(st.booleans()):
        data["forced"] = {unit_list[0]: draw(st.sampled_from(keys))}
    if draw(st.booleans()):
        data["targeting"] = {"attribute": "country", "op": "in", "values": ["US", "CA"]}
    if draw(st.booleans()):
        start = draw(st.sampled_from([0.0, 0.2, 0.5]))
        data["layer"] = {"name": "layer1", "range": [start, start + 0.5]}
    experiment = Experiment.model_validate(data)
    earlier = tuple(draw(st.lists(weights.map(lambda w: w[:count]), max_size=2)))
    earlier = tuple(w for w in earlier if any(w))
    pending = draw(st.none() | weights.map(lambda w: w[:count]))
    if pending is not None and not any(pending):
        pending = None
    allocation = Allocation(current, earlier, pending)
    serving = ServingOverride(
        winner=draw(st.sampled_from([None] * 5 + keys)),
        rolled_back=frozenset(draw(st.sets(st.sampled_from(keys[1:]), max_size=2))),
        stopped=draw(st.sampled_from([None] * 6 + [Reason.HALTED, Reason.PAUSED,
                                                   Reason.CONCLUDED])),
        coverage_cap=draw(st.none() | st.sampled_from([0.1, 0.5, 1.0])),
    )  # fmt: skip
    holdout = None
    if draw(st.booleans()):
        holdout = compile_holdout(Holdout.model_validate({
            "key": "hold", "description": "d", "owner": "o", "share": draw(
                st.sampled_from([0.05, 0.1])),
            "scope": "all", "start": "2026-01-01", "metrics": [{"name": "m", "type": "binary"}],
        }))  # fmt: skip
    compiled = compile_experiment(experiment, allocation, serving, holdout)
    rows = [draw(attributes) for _ in unit_list]
    stored_keys = [*keys, "removed"]
    stored = {u: draw(st.sampled_from(stored_keys)) for u in unit_list if draw(st.booleans())}
    return compiled, unit_list, rows, stored


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_batch_equals_scalar(scenario: tuple[Any, list[str], list[dict[str, Any]],
                                             dict[str, str]]) -> None:  # fmt: skip
    compiled, unit_list, rows, stored = scenario
    asked_by_scalar: list[str] = []

    def one(unit: str) -> str | None:
        asked_by_scalar.append(unit)
        return stored.get(unit)

    expected = [
        assign(compiled, unit, attrs, lambda unit=unit: one(unit))  # type: ignore[misc]
        for unit, attrs in zip(unit_list, rows, strict=True)
    ]
    calls: list[list[str]] = []

    def many(asked: Any) -> dict[str, str]:
        calls.append(list(asked))
        return {unit: stored[unit] for unit in asked if unit in stored}

    batch = assign_batch(compiled, unit_list, rows, many)
    assert len(batch) == len(unit_list)
    assert [batch.assignment(i) for i in range(len(batch))] == expected
    assert list(batch.variants()) == [a.variant for a in expected]
    assert list(batch.reasons()) == [a.reason.value for a in expected]
    assert list(batch.exposed()) == [a.exposed for a in expected]
    # Stored assignments are asked for once, for exactly the units the scalar path asks about.
    assert len(calls) <= 1
    assert sorted(calls[0] if calls else []) == sorted(asked_by_scalar)


def test_batch_equals_scalar_over_thousands_of_units_with_history() -> None:
    """Hypothesis keeps batches small; here every late rule is hit many times at once."""
    experiment = Experiment.model_validate({
        "key": "big", "description": "d", "owner": "o", "status": "running", "control": "a",
        "variants": [{"key": "a", "weight": 0.25}, {"key": "b", "weight": 0.25},
                     {"key": "c", "weight": 0.5}],
        "coverage": 0.9, "layer": {"name": "big_layer", "range": [0.0, 0.8]},
        "metrics": {"primary": {"name": "m", "type": "binary"}},
    })  # fmt: skip
    holdout = compile_holdout(Holdout.model_validate({
        "key": "hold", "description": "d", "owner": "o", "share": 0.1, "scope": "all",
        "start": "2026-01-01", "metrics": [{"name": "m", "type": "binary"}],
    }))  # fmt: skip
    rng = np.random.default_rng(3)
    unit_list = [f"user-{i}" for i in range(4000)]
    stored = {u: str(rng.choice(["a", "b", "c", "gone"])) for u in unit_list if rng.random() < 0.5}
    reasons: set[Reason] = set()
    for pending in (None, (0.1, 0.1, 0.8)):
        allocation = Allocation((0.25, 0.25, 0.5), ((0.5, 0.5, 0.0),), pending)
        serving = ServingOverride(rolled_back=frozenset({"b"}), coverage_cap=0.95)
        compiled = compile_experiment(experiment, allocation, serving, holdout)
        expected = [assign(compiled, u, {}, lambda u=u: stored.get(u)) for u in unit_list]
        batch = assign_batch(compiled, unit_list, None,
                             lambda asked: {u: stored[u] for u in asked if u in stored})  # fmt: skip
        assert [batch.assignment(i) for i in range(len(batch))] == expected
        reasons |= {a.reason for a in expected}
    assert reasons == {Reason.NOT_IN_LAYER, Reason.HOLDOUT, Reason.NOT_IN_COVERAGE,
                       Reason.STICKY, Reason.HASHED, Reason.SWITCHING, Reason.ROLLED_BACK,
                       Reason.VARIANT_REMOVED}  # fmt: skip


def test_batch_without_attributes_is_the_scalar_with_empty_attributes() -> None:
    experiment = Experiment.model_validate(VECTORS["assignments"]["experiment"])
    compiled = compile_experiment(experiment)
    unit_list = [f"u{i}" for i in range(200)] + ["qa-1"]
    batch = assign_batch(compiled, unit_list, None, lambda asked: {})
    expected = [assign(compiled, u, {}, lambda: None) for u in unit_list]
    assert [batch.assignment(i) for i in range(len(batch))] == expected
    assert {a.reason for a in expected} == {Reason.TARGETED_OUT, Reason.FORCED}


def test_assignment_vectors_through_the_batch() -> None:
    vectors = VECTORS["assignments"]
    compiled = compile_experiment(Experiment.model_validate(vectors["experiment"]))
    cases = vectors["cases"]
    batch = assign_batch(compiled, [c["unit"] for c in cases], [c["attributes"] for c in cases],
                         lambda asked: {})  # fmt: skip
    assert list(zip(batch.variants(), batch.reasons(), strict=True)) == [
        (c["variant"], c["reason"]) for c in cases
    ]


def test_holdout_vectors_through_the_batch() -> None:
    vectors = VECTORS["holdout_assignments"]
    holdout = compile_holdout(Holdout.model_validate(vectors["holdout"]))
    compiled = compile_experiment(Experiment.model_validate(vectors["experiment"]), holdout=holdout)
    cases = vectors["cases"]
    batch = assign_batch(compiled, [c["unit"] for c in cases], [c["attributes"] for c in cases],
                         lambda asked: {})  # fmt: skip
    found = []
    for i in range(len(batch)):
        result = batch.assignment(i)
        group = result.holdout.group if result.holdout is not None else None
        found.append((result.variant, result.reason.value, group))
    assert found == [(c["variant"], c["reason"], c["holdout_group"]) for c in cases]


def test_fraction_vectors_through_the_batch_hash() -> None:
    by_prefix: dict[bytes, list[dict[str, Any]]] = {}
    for case in VECTORS["fractions"]:
        by_prefix.setdefault(hash_prefix(case["purpose"], *case["parts"]), []).append(case)
    for prefix, cases in by_prefix.items():
        hashes = unit_hashes(prefix, [c["unit"].encode() for c in cases])
        assert [f"{h:016x}" for h in hashes.tolist()] == [c["sha256"][:16] for c in cases]
        assert hash_fractions(hashes).tolist() == [c["fraction"] for c in cases]
    assert len(unit_hashes(b"abx1|variant|x|x.v1|", [])) == 0


@given(st.lists(st.integers(0, 5), min_size=1, max_size=6).filter(lambda w: sum(w) > 0),
       st.lists(st.floats(0.0, 1.0, exclude_max=True), max_size=50))  # fmt: skip
def test_pick_indexes_is_pick_index(raw: list[int], fractions: list[float]) -> None:
    bounds = cumulative_bounds(tuple(x / sum(raw) for x in raw))
    picked = pick_indexes(np.asarray(fractions, dtype=np.float64), bounds)
    assert picked.tolist() == [pick_index(f, bounds) for f in fractions]
    # Bounds that rounding left out of order: the first one above still wins.
    unordered = (0.3, 0.2, 1.0)
    picked = pick_indexes(np.asarray(fractions, dtype=np.float64), unordered)
    assert picked.tolist() == [pick_index(f, unordered) for f in fractions]
