"""Holm, Bonferroni and Benjamini-Hochberg against statsmodels and a published example."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests

from analysis.multiple_testing import benjamini_hochberg, bonferroni, bonferroni_alpha, holm

P_VALUE_LISTS = [
    [0.01, 0.04, 0.03],
    [0.001, 0.2, 0.012, 0.0125, 0.9],
    [0.05],
    [0.0, 1.0, 0.5],
    [0.02, 0.02, 0.02],  # ties
    [0.0125, 0.0167, 0.025, 0.05],  # exactly at the Holm thresholds for alpha = 0.05
]

p_value_lists = st.lists(
    st.one_of(st.floats(0.0, 1.0), st.sampled_from([0.0, 0.01, 0.0125, 0.025, 0.05, 1.0])),
    min_size=1,
    max_size=12,
)


@pytest.mark.parametrize("p_values", P_VALUE_LISTS)
@pytest.mark.parametrize("method", ["holm", "bonferroni"])
def test_equals_statsmodels(p_values: list[float], method: str) -> None:
    result = (holm if method == "holm" else bonferroni)(p_values, alpha=0.05)
    reject, adjusted, _, _ = multipletests(p_values, alpha=0.05, method=method)
    assert result.reject == tuple(bool(r) for r in reject)
    assert result.p_values_adjusted == pytest.approx(list(adjusted), rel=1e-15)
    assert result.p_values_raw == tuple(p_values)
    assert result.method == method


# multipletests costs ~25 ms a call here, so this comparison keeps to a few dozen families.
@settings(max_examples=40, deadline=None)
@given(p_values=p_value_lists, alpha=st.sampled_from([0.01, 0.05, 0.1]))
def test_equals_statsmodels_on_random_families(p_values: list[float], alpha: float) -> None:
    for method, procedure in (("holm", holm), ("bonferroni", bonferroni)):
        result = procedure(p_values, alpha=alpha)
        reject, adjusted, _, _ = multipletests(p_values, alpha=alpha, method=method)
        assert result.reject == tuple(bool(r) for r in reject)
        assert np.allclose(result.p_values_adjusted, adjusted, rtol=1e-15, atol=0.0)


@settings(max_examples=300, deadline=None)
@given(p_values=p_value_lists)
def test_holm_adjusted_are_monotone_bounded_and_not_below_raw(p_values: list[float]) -> None:
    result = holm(p_values)
    order = np.argsort(p_values, kind="stable")
    in_raw_order = [result.p_values_adjusted[i] for i in order]
    assert all(a <= b for a, b in itertools.pairwise(in_raw_order))
    assert all(
        raw <= adj <= 1.0 for raw, adj in zip(p_values, result.p_values_adjusted, strict=True)
    )
    assert result.reject == tuple(adj <= 0.05 for adj in result.p_values_adjusted)
    bonferroni_rejects = bonferroni(p_values).reject
    assert all(h or not b for h, b in zip(result.reject, bonferroni_rejects, strict=True))


def test_holm_rejects_more_than_bonferroni_on_a_classic_family() -> None:
    p_values = [0.01, 0.02, 0.04]  # Bonferroni threshold 0.0167; Holm: 0.0167, 0.025, 0.05
    assert bonferroni(p_values).reject == (True, False, False)
    assert holm(p_values).reject == (True, True, True)
    assert holm(p_values).p_values_adjusted == pytest.approx((0.03, 0.04, 0.04))


def test_bonferroni_alpha_split() -> None:
    assert bonferroni_alpha(0.05, 4) == pytest.approx(0.0125)
    assert bonferroni_alpha(0.05, 1) == 0.05


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: holm([]), "at least one p-value"),
        (lambda: holm([0.1, 1.2]), r"lie in \[0, 1\]"),
        (lambda: holm([0.1, -0.01]), r"lie in \[0, 1\]"),
        (lambda: bonferroni([0.1, float("nan")]), r"lie in \[0, 1\]"),
        (lambda: holm([0.1], alpha=0.0), "alpha must be in"),
        (lambda: bonferroni([0.1], alpha=1.0), "alpha must be in"),
        (lambda: bonferroni_alpha(0.05, 0), "integer >= 1"),
        (lambda: bonferroni_alpha(0.05, 2.0), "integer >= 1"),
        (lambda: bonferroni_alpha(-0.05, 2), "alpha must be in"),
    ],
)
def test_invalid_input_raises_value_error(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_benjamini_hochberg_published_example() -> None:
    """The worked example of Benjamini & Hochberg (1995): four rejections, Holm three."""
    cases = json.loads((Path(__file__).parents[1] / "cases" / "multiple_testing.json").read_text())
    for case in cases["cases"]:
        found = benjamini_hochberg(case["p_values"], alpha=case["alpha"])
        assert sum(found.reject) == case["rejected_fdr_bh"]
        assert found.reject[: case["rejected_fdr_bh"]] == (True,) * case["rejected_fdr_bh"]
        assert sum(holm(case["p_values"], alpha=case["alpha"]).reject) == case["rejected_holm"]


@pytest.mark.parametrize("p_values", P_VALUE_LISTS)
def test_benjamini_hochberg_equals_statsmodels(p_values: list[float]) -> None:
    result = benjamini_hochberg(p_values, alpha=0.05)
    reject, adjusted, _, _ = multipletests(p_values, alpha=0.05, method="fdr_bh")
    assert result.reject == tuple(bool(r) for r in reject)
    assert result.p_values_adjusted == pytest.approx(list(adjusted), rel=1e-15)
    assert result.method == "fdr_bh"
