"""Assignment core: rule order, determinism, weights, stickiness, layers, coverage ramps."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from service.assignment.allocation import AllocationPlan, AllocationRow, resolve_allocation
from service.assignment.core import Allocation, Reason, assign, compile_experiment
from service.experiments.schema import Experiment


def experiment(**overrides: Any) -> Experiment:
    data: dict[str, Any] = {
        "key": "exp",
        "description": "d",
        "owner": "o",
        "status": "running",
        "control": "a",
        "variants": [{"key": "a", "weight": 0.5}, {"key": "b", "weight": 0.5}],
        "metrics": {"primary": {"name": "m", "type": "binary"}},
    }
    data.update(overrides)
    return Experiment.model_validate(data)


def no_store() -> str | None:
    return None


weights_strategy = (
    st.lists(st.integers(0, 10), min_size=2, max_size=5)
    .filter(lambda w: sum(w) > 0)
    .map(lambda w: [x / sum(w) for x in w])
)


def with_weights(weights: list[float], **overrides: Any) -> Experiment:
    variants = [{"key": f"v{i}", "weight": w} for i, w in enumerate(weights)]
    return experiment(variants=variants, control="v0", **overrides)


def test_rule_order() -> None:
    exp = experiment(
        status="running",
        forced={"qa": "b"},
        targeting={"attribute": "country", "op": "eq", "value": "US"},
        coverage=0.0,
    )
    compiled = compile_experiment(exp)
    assert assign(compiled, "qa", {}, no_store).reason is Reason.FORCED  # before targeting
    assert assign(compiled, "u1", {"country": "FR"}, no_store).reason is Reason.TARGETED_OUT
    assert assign(compiled, "u1", {"country": "US"}, no_store).reason is Reason.NOT_IN_COVERAGE
    paused = compile_experiment(experiment(status="paused", forced={"qa": "b"}))
    assert assign(paused, "u1", {}, no_store).reason is Reason.NOT_RUNNING
    assert assign(paused, "qa", {}, no_store).variant == "b"  # QA works before launch


def test_unexposed_units_get_the_control() -> None:
    compiled = compile_experiment(experiment(coverage=0.0))
    result = assign(compiled, "u", {}, no_store)
    assert result.variant == "a" and not result.exposed and not result.record


@given(weights_strategy, st.text(min_size=1, max_size=20))
def test_assignment_is_deterministic(weights: list[float], unit: str) -> None:
    compiled = compile_experiment(with_weights(weights))
    first = assign(compiled, unit, {}, no_store)
    assert assign(compile_experiment(with_weights(weights)), unit, {}, no_store) == first
    assert first.reason is Reason.HASHED and first.record


@settings(max_examples=10, deadline=None)
@given(weights_strategy)
def test_weights_are_respected(weights: list[float]) -> None:
    compiled = compile_experiment(with_weights(weights))
    counts = {f"v{i}": 0 for i in range(len(weights))}
    n = 20_000
    for i in range(n):
        counts[assign(compiled, f"user-{i}", {}, no_store).variant] += 1
    positive = [(counts[f"v{i}"], w * n) for i, w in enumerate(weights) if w > 0]
    assert all(counts[f"v{i}"] == 0 for i, w in enumerate(weights) if w == 0)
    if len(positive) > 1:
        observed, expected = zip(*positive, strict=True)
        assert stats.chisquare(observed, expected).pvalue > 1e-4


@settings(max_examples=25, deadline=None)
@given(weights_strategy, weights_strategy)
def test_units_keep_their_variant_when_weights_change(
    before: list[float], after: list[float]
) -> None:
    """Stickiness: the old allocation's first assignments survive any new weights."""
    size = min(len(before), len(after))
    before, after = _renormalise(before[:size]), _renormalise(after[:size])
    if before is None or after is None:
        return
    store: dict[str, str] = {}
    old = compile_experiment(with_weights(before))
    for i in range(300):
        result = assign(old, f"u{i}", {}, no_store)
        store[f"u{i}"] = result.variant
    history = Allocation(tuple(after), earlier_weights=(tuple(before),))
    new = compile_experiment(with_weights(after), history)
    for i in range(300):
        unit = f"u{i}"
        assert assign(new, unit, {}, lambda unit=unit: store.get(unit)).variant == store[unit]


def _renormalise(weights: list[float]) -> list[float] | None:
    total = sum(weights)
    return [w / total for w in weights] if total > 0 else None


def test_store_is_only_asked_when_history_can_change_the_answer() -> None:
    asked: list[str] = []

    def store() -> str | None:
        asked.append("x")
        return None

    same = compile_experiment(experiment(), Allocation((0.5, 0.5), earlier_weights=((0.5, 0.5),)))
    for i in range(200):
        assign(same, f"u{i}", {}, store)
    assert asked == []
    changed = compile_experiment(
        experiment(), Allocation((0.5, 0.5), earlier_weights=((0.9, 0.1),))
    )
    for i in range(200):
        assign(changed, f"u{i}", {}, store)
    assert 40 < len(asked) < 120  # only units between 0.5 and 0.9 (about 40 %)


def test_pending_allocation_holds_new_units_that_it_would_move() -> None:
    pending = compile_experiment(experiment(), Allocation((0.5, 0.5), pending_weights=(0.9, 0.1)))
    reasons = {assign(pending, f"u{i}", {}, no_store).reason for i in range(200)}
    assert reasons == {Reason.HASHED, Reason.SWITCHING}
    stored = assign(pending, "u1", {}, lambda: "b")
    assert stored.variant == "b" and stored.reason in {Reason.HASHED, Reason.STICKY}


def test_a_removed_variant_sends_its_units_to_the_control() -> None:
    compiled = compile_experiment(
        experiment(), Allocation((0.5, 0.5), earlier_weights=((0.0, 1.0),))
    )
    results = [assign(compiled, f"u{i}", {}, lambda: "gone") for i in range(50)]
    assert {r.reason for r in results} >= {Reason.VARIANT_REMOVED}
    assert all(r.variant == "a" for r in results if r.reason is Reason.VARIANT_REMOVED)


@settings(max_examples=20, deadline=None)
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_raising_coverage_never_drops_anyone(low: float, high: float) -> None:
    low, high = sorted((low, high))
    small = compile_experiment(experiment(coverage=low))
    large = compile_experiment(experiment(coverage=high))
    for i in range(300):
        before = assign(small, f"u{i}", {}, no_store)
        after = assign(large, f"u{i}", {}, no_store)
        if before.exposed:
            assert after.exposed and after.variant == before.variant


@settings(max_examples=20, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4))
def test_layer_members_never_share_a_unit(cuts: list[float]) -> None:
    edges = sorted({0.0, 1.0, *cuts})
    members = [
        compile_experiment(experiment(key=f"e{i}", layer={"name": "L", "range": [lo, hi]}))
        for i, (lo, hi) in enumerate(itertools.pairwise(edges))
        if lo < hi
    ]
    for i in range(500):
        inside = [
            m for m in members if assign(m, f"u{i}", {}, no_store).reason is not Reason.NOT_IN_LAYER
        ]
        assert len(inside) == 1  # the slices tile [0, 1): exactly one experiment per unit


def test_layer_slices_split_traffic_by_their_width() -> None:
    first = compile_experiment(experiment(key="e1", layer={"name": "L", "range": [0.0, 0.3]}))
    inside = sum(assign(first, f"u{i}", {}, no_store).exposed for i in range(20_000))
    assert stats.binomtest(inside, 20_000, 0.3).pvalue > 1e-4


def test_resolve_allocation_announces_then_waits_for_every_writer() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    later = t0 + timedelta(seconds=10)
    rows = [AllocationRow({"a": 0.5, "b": 0.5}, t0), AllocationRow({"a": 0.9, "b": 0.1}, later)]
    keys = ("a", "b")
    old = Allocation((0.5, 0.5), ((0.9, 0.1),))
    switching = Allocation((0.5, 0.5), ((0.9, 0.1),), pending_weights=(0.9, 0.1))
    announced = resolve_allocation(rows, keys, t0 + timedelta(seconds=5), t0 + timedelta(seconds=5))
    assert announced == AllocationPlan(old, switching, later)
    not_flushed = resolve_allocation(
        rows, keys, t0 + timedelta(seconds=11), t0 + timedelta(seconds=9)
    )
    assert not_flushed == AllocationPlan(old, switching, later)
    flushed = resolve_allocation(rows, keys, t0 + timedelta(seconds=12), t0 + timedelta(seconds=11))
    assert flushed == AllocationPlan(Allocation((0.9, 0.1), ((0.5, 0.5),)))
    no_writers = resolve_allocation(rows, keys, t0 + timedelta(seconds=12), None)
    assert no_writers == flushed
    assert resolve_allocation([], keys, t0, None) is None
    first_only = resolve_allocation(
        rows[:1], keys, t0 - timedelta(seconds=1), t0 - timedelta(seconds=9)
    )
    assert first_only == AllocationPlan(Allocation((0.5, 0.5)))
