"""Hashing spec v1: published vectors, uniformity, independence across experiments."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

from service.assignment.core import assign, compile_experiment, compile_holdout
from service.assignment.hashing import cumulative_bounds, hash_prefix, pick_index, unit_fraction
from service.experiments.holdouts import Holdout
from service.experiments.schema import Experiment

VECTORS = json.loads((Path(__file__).parent / "vectors" / "hashing_v1.json").read_text("utf-8"))


def test_fraction_vectors_match_the_spec_and_an_independent_computation() -> None:
    for case in VECTORS["fractions"]:
        prefix = hash_prefix(case["purpose"], *case["parts"])
        assert (prefix + case["unit"].encode()).decode() == case["hashed_string"]
        digest = hashlib.sha256(case["hashed_string"].encode("utf-8")).hexdigest()
        assert digest == case["sha256"]
        # The spec in words: top 53 bits of the first 8 bytes, over 2**53.
        assert int(digest[:16], 16) >> 11 == int(case["fraction"] * 2**53)
        assert unit_fraction(prefix, case["unit"]) == case["fraction"]


def test_assignment_vectors() -> None:
    compiled = compile_experiment(Experiment.model_validate(VECTORS["assignments"]["experiment"]))
    for case in VECTORS["assignments"]["cases"]:
        result = assign(compiled, case["unit"], case["attributes"], lambda: None)
        assert (result.variant, result.reason.value) == (case["variant"], case["reason"]), case


def test_holdout_assignment_vectors() -> None:
    vectors = VECTORS["holdout_assignments"]
    holdout = compile_holdout(Holdout.model_validate(vectors["holdout"]))
    compiled = compile_experiment(Experiment.model_validate(vectors["experiment"]), holdout=holdout)
    reasons = set()
    for case in vectors["cases"]:
        result = assign(compiled, case["unit"], case["attributes"], lambda: None)
        group = result.holdout.group if result.holdout is not None else None
        assert (result.variant, result.reason.value, group) == (
            case["variant"],
            case["reason"],
            case["holdout_group"],
        ), case
        reasons.add(case["reason"])
    assert {"holdout", "hashed", "not-in-coverage", "not-in-layer", "forced"} <= reasons


def test_buckets_are_uniform_over_100k_units() -> None:
    prefix = hash_prefix("variant", "uniformity", "uniformity.v1")
    fractions = np.array([unit_fraction(prefix, f"user-{i}") for i in range(100_000)])
    counts, _ = np.histogram(fractions, bins=100, range=(0.0, 1.0))
    assert stats.chisquare(counts).pvalue > 0.001
    assert stats.kstest(fractions, "uniform").pvalue > 0.001


def test_experiments_are_independent() -> None:
    """Two experiments' variant buckets for the same units: no association (chi-square)."""
    first = hash_prefix("variant", "exp_a", "exp_a.v1")
    second = hash_prefix("variant", "exp_b", "exp_b.v1")
    bounds = cumulative_bounds((0.25, 0.25, 0.25, 0.25))
    table = np.zeros((4, 4))
    for i in range(40_000):
        unit = f"user-{i}"
        table[
            pick_index(unit_fraction(first, unit), bounds),
            pick_index(unit_fraction(second, unit), bounds),
        ] += 1
    assert stats.chi2_contingency(table).pvalue > 0.001


def test_a_new_seed_rerandomizes() -> None:
    v1 = hash_prefix("variant", "exp", "exp.v1")
    v2 = hash_prefix("variant", "exp", "exp.v2")
    bounds = cumulative_bounds((0.5, 0.5))
    same = sum(
        pick_index(unit_fraction(v1, f"u{i}"), bounds)
        == pick_index(unit_fraction(v2, f"u{i}"), bounds)
        for i in range(10_000)
    )
    assert 4_700 < same < 5_300  # independent coin flips agree half the time


@given(
    st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=8),
    st.floats(0, 1, exclude_max=True),
)
def test_pick_index_never_lands_on_a_zero_weight_variant(raw: list[float], fraction: float) -> None:
    total = sum(raw)
    if total == 0:
        return
    weights = tuple(w / total for w in raw)
    index = pick_index(fraction, cumulative_bounds(weights))
    assert weights[index] > 0


@given(st.text(min_size=1, max_size=64))
def test_fraction_is_deterministic_and_in_range(unit: str) -> None:
    prefix = hash_prefix("variant", "prop", "prop.v1")
    value = unit_fraction(prefix, unit)
    assert 0.0 <= value < 1.0
    assert unit_fraction(prefix, unit) == value
