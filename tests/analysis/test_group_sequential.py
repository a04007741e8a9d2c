"""Group-sequential boundaries against published tables, an independent multivariate-normal
computation, and simulation."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose
from scipy import stats

from analysis.group_sequential import (
    Z_MAX,
    alpha_spent,
    boundary_at_look,
    classic_boundaries,
    crossing_probabilities,
    spending_boundaries,
)

CASES = json.loads((Path(__file__).parents[1] / "cases" / "group_sequential.json").read_text())


def _case_id(case: dict[str, Any]) -> str:
    fractions = case.get("information_fractions", case.get("k"))
    return f"{case.get('kind', case.get('spending'))}-{fractions}-{case['alpha']}"


@pytest.mark.parametrize("case", CASES["classic"], ids=_case_id)
def test_classic_constant_matches_jennison_turnbull_tables(case: dict[str, Any]) -> None:
    bounds = classic_boundaries(case["k"], case["alpha"], case["kind"], case["two_sided"])
    k = case["k"]
    expected_shape = [
        1.0 if case["kind"] == "pocock" else math.sqrt(k / j) for j in range(1, k + 1)
    ]
    assert_allclose(bounds, [case["constant"] * s for s in expected_shape], atol=case["atol"] * 3)
    assert bounds[-1] == pytest.approx(case["constant"], abs=case["atol"])


@pytest.mark.parametrize("case", CASES["classic_full"], ids=_case_id)
def test_classic_boundaries_match_software(case: dict[str, Any]) -> None:
    bounds = classic_boundaries(case["k"], case["alpha"], case["kind"], case["two_sided"])
    assert_allclose(bounds, case["expected"], atol=case["atol"])


@pytest.mark.parametrize("case", CASES["spending"], ids=_case_id)
def test_spending_boundaries_match_published_values(case: dict[str, Any]) -> None:
    bounds = spending_boundaries(
        case["information_fractions"],
        alpha=case["alpha"],
        spending=case["spending"],
        two_sided=case["two_sided"],
        gamma=case["gamma"],
    )
    assert_allclose(bounds, case["expected"], atol=case["atol"])


def _probability_of_crossing_by_each_look(
    fractions: list[float], bounds: list[float], two_sided: bool
) -> list[float]:
    """P(cross at or before look k | H0) from the multivariate-normal CDF (Genz's method)."""
    times = np.asarray(fractions)
    correlation = np.sqrt(np.minimum.outer(times, times) / np.maximum.outer(times, times))
    crossed = []
    for k in range(1, len(times) + 1):
        law = stats.multivariate_normal(
            np.zeros(k),
            correlation[:k, :k],
            seed=20240501,
            abseps=1e-7,
            releps=0,
            maxpts=100_000 * k,
        )
        upper = np.asarray(bounds[:k])
        lower = -upper if two_sided else np.full(k, -np.inf)
        crossed.append(1.0 - float(law.cdf(upper, lower_limit=lower)))
    return crossed


@pytest.mark.parametrize("case", CASES["independent_checks"], ids=_case_id)
def test_crossing_probability_equals_spending_function(case: dict[str, Any]) -> None:
    fractions, alpha = case["information_fractions"], case["alpha"]
    two_sided, side_alpha = case["two_sided"], alpha / 2 if case["two_sided"] else alpha
    bounds = spending_boundaries(fractions, alpha, case["spending"], two_sided, case["gamma"])
    sides = 2.0 if two_sided else 1.0
    planned = [
        sides * alpha_spent(t, side_alpha, case["spending"], case["gamma"]) for t in fractions
    ]
    independent = _probability_of_crossing_by_each_look(fractions, bounds, two_sided)
    assert_allclose(independent, planned, atol=2e-6)
    assert independent[-1] == pytest.approx(alpha, abs=2e-6)
    recursive = crossing_probabilities(
        fractions, bounds, [-b for b in bounds] if two_sided else None
    )
    assert_allclose(
        np.cumsum(np.add(recursive.upper_by_look, recursive.lower_by_look)), planned, atol=1e-8
    )


def test_crossing_probabilities_under_drift_match_multivariate_normal() -> None:
    fractions, bounds, drift = [0.3, 0.7, 1.0], [2.8, 2.3, 2.1], 2.5
    recursive = crossing_probabilities(fractions, bounds, drift=drift)
    times = np.asarray(fractions)
    correlation = np.sqrt(np.minimum.outer(times, times) / np.maximum.outer(times, times))
    law = stats.multivariate_normal(
        drift * np.sqrt(times), correlation, seed=7, abseps=1e-7, releps=0, maxpts=300_000
    )
    assert recursive.upper_total == pytest.approx(1.0 - law.cdf(np.asarray(bounds)), abs=2e-6)
    assert recursive.lower_total == 0.0


def test_classic_boundaries_spend_exactly_alpha() -> None:
    bounds = classic_boundaries(4, 0.05, "pocock")
    crossed = _probability_of_crossing_by_each_look([0.25, 0.5, 0.75, 1.0], bounds, True)
    assert crossed[-1] == pytest.approx(0.05, abs=2e-6)


def test_boundary_at_look_reproduces_earlier_boundaries_at_unplanned_fractions() -> None:
    observed = [1_150, 2_730, 4_010]  # looks at 23 %, 54.6 %, 80.2 % of a 5 000-unit plan
    look = boundary_at_look(observed, 5_000, alpha=0.05, spending="obf")
    expected = spending_boundaries([0.23, 0.546, 0.802], alpha=0.05, spending="obf")
    assert look.look_number == 3
    assert look.z_critical_by_look == pytest.approx(expected, abs=1e-9)
    assert look.z_critical == pytest.approx(expected[-1], abs=1e-9)
    assert look.information_fraction == pytest.approx(0.802)
    assert look.alpha_spent_cumulative == pytest.approx(2 * alpha_spent(0.802, 0.025))
    assert look.nominal_p_threshold == pytest.approx(2 * stats.norm.sf(look.z_critical))
    assert not look.is_final


def test_boundary_at_final_look_below_plan_spends_all_alpha() -> None:
    look = boundary_at_look([300, 600, 850], 1_000, alpha=0.05, spending="pocock", final=True)
    bounds = list(look.z_critical_by_look)
    crossing = crossing_probabilities([0.3, 0.6, 0.85], bounds, [-b for b in bounds])
    assert look.is_final
    assert look.alpha_spent_cumulative == pytest.approx(0.05)
    assert crossing.total == pytest.approx(0.05, abs=1e-7)


def test_boundary_after_overrun_has_no_alpha_left() -> None:
    overrun = boundary_at_look([400, 1_100], 1_000, alpha=0.05)
    assert overrun.is_final
    assert overrun.alpha_spent_cumulative == pytest.approx(0.05)
    after = boundary_at_look([400, 1_100, 1_300], 1_000, alpha=0.05)
    assert after.z_critical == Z_MAX
    assert after.alpha_spent_this_look == 0.0


def test_negligible_alpha_gives_capped_boundary_not_infinity() -> None:
    assert spending_boundaries([0.001, 1.0], alpha=0.05, spending="obf")[0] == Z_MAX


def test_one_sided_first_look_is_normal_quantile() -> None:
    first = spending_boundaries([0.3, 1.0], alpha=0.025, spending="pocock", two_sided=False)[0]
    assert first == pytest.approx(stats.norm.isf(alpha_spent(0.3, 0.025, "pocock")), abs=1e-9)


def test_sequential_boundaries_hold_type_one_error_where_naive_peeking_fails() -> None:
    rng = np.random.default_rng(20240501)
    trials, looks, alpha = 20_000, 5, 0.05
    # Equal-information looks: Z_k = S_k / sqrt(k) with S_k a sum of k standard normals.
    z = np.cumsum(rng.standard_normal((trials, looks)), axis=1) / np.sqrt(np.arange(1, looks + 1))
    bounds = np.asarray(spending_boundaries([k / looks for k in range(1, looks + 1)], alpha))
    sequential_rate = np.mean(np.any(np.abs(z) >= bounds, axis=1))
    naive_rate = np.mean(np.any(np.abs(z) >= stats.norm.isf(alpha / 2), axis=1))
    monte_carlo_se = math.sqrt(alpha * (1 - alpha) / trials)
    assert sequential_rate <= alpha + 3 * monte_carlo_se
    assert naive_rate > alpha + 10 * monte_carlo_se  # about 0.14 (Armitage et al. 1969)


fraction_lists = st.lists(
    st.floats(min_value=0.05, max_value=0.95), min_size=1, max_size=6, unique=True
).map(lambda values: [*sorted(values), 1.0])


def _spaced(gap: float) -> Any:
    return lambda fractions: all(b - a >= gap for a, b in itertools.pairwise(fractions))


@settings(max_examples=60, deadline=None)
@given(fractions=fraction_lists.filter(_spaced(0.1)))
def test_obf_boundaries_decrease_as_information_grows(fractions: list[float]) -> None:
    # Looks much closer than this can raise the boundary: e.g. looks at 0.80 and 0.84 give
    # 2.250 then 2.279, since the second look has almost no alpha of its own to spend.
    bounds = spending_boundaries(fractions, alpha=0.05, spending="obf")
    assert all(later < earlier for earlier, later in itertools.pairwise(bounds))


@settings(max_examples=40, deadline=None)
@given(
    fractions=fraction_lists.filter(_spaced(0.02)),
    spending=st.sampled_from([("obf", None), ("pocock", None), ("hsd", -4.0), ("hsd", 1.0)]),
    alphas=st.tuples(st.floats(0.005, 0.2), st.floats(0.005, 0.2)).filter(
        lambda pair: abs(pair[0] - pair[1]) > 1e-3
    ),
    two_sided=st.booleans(),
)
def test_more_alpha_gives_lower_boundaries(
    fractions: list[float],
    spending: tuple[str, float | None],
    alphas: tuple[float, float],
    two_sided: bool,
) -> None:
    small, large = sorted(alphas)
    name, gamma = spending
    strict = spending_boundaries(fractions, small, name, two_sided, gamma)
    lenient = spending_boundaries(fractions, large, name, two_sided, gamma)
    for b_strict, b_lenient in zip(strict, lenient, strict=True):
        # Both are capped at Z_MAX when a look has (numerically) no alpha to spend.
        assert b_lenient < b_strict or b_lenient == b_strict == Z_MAX


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: spending_boundaries([0.5, 1.0], alpha=0.0), "alpha must be in"),
        (lambda: spending_boundaries([0.5, 1.0], alpha=1.0), "alpha must be in"),
        (lambda: spending_boundaries([0.5, 1.0], alpha=float("nan")), "alpha must be in"),
        (lambda: spending_boundaries([0.5, 1.0], spending="linear"), "unknown spending"),
        (lambda: spending_boundaries([0.5, 1.0], spending="hsd"), "gamma is required"),
        (lambda: spending_boundaries([0.5, 1.0], spending="obf", gamma=-4), "gamma applies only"),
        (lambda: spending_boundaries([0.5, 1.0], spending="hsd", gamma=math.inf), "gamma must be"),
        (lambda: spending_boundaries([0.5, 0.5, 1.0]), "strictly increasing"),
        (lambda: spending_boundaries([0.7, 0.4]), "strictly increasing"),
        (lambda: spending_boundaries([0.0, 1.0]), "finite and > 0"),
        (lambda: spending_boundaries([0.5, 1.2]), r"lie in \(0, 1\]"),
        (lambda: spending_boundaries([0.5, float("nan")]), "finite and > 0"),
        (lambda: spending_boundaries([]), "must not be empty"),
        (lambda: alpha_spent(-0.1, 0.05), "information fraction must be"),
        (lambda: classic_boundaries(0), "integer >= 1"),
        (lambda: classic_boundaries(2.5), "integer >= 1"),  # type: ignore[arg-type]
        (lambda: classic_boundaries(3, kind="hsd"), "unknown classic boundary kind"),
        (lambda: classic_boundaries(3, alpha=1.5), "alpha must be in"),
        (lambda: boundary_at_look([100, 200], 0), "information_max must be"),
        (lambda: boundary_at_look([200, 100], 1_000), "strictly increasing"),
        (lambda: boundary_at_look([-5, 100], 1_000), "finite and > 0"),
        (lambda: crossing_probabilities([0.5, 1.0], [2.0]), "one boundary per"),
        (lambda: crossing_probabilities([0.5, 1.0], [2.0, 2.0], [2.5, -2.0]), "below its upper"),
        (lambda: crossing_probabilities([1.0], [float("nan")]), "must not be NaN"),
        (lambda: crossing_probabilities([1.0], [2.0], drift=math.inf), "must not be NaN"),
    ],
)
def test_invalid_input_raises_value_error(call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
