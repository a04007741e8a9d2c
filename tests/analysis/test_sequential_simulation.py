"""Seeded A/A and A/B simulations of continuous monitoring (vectorised, fast).

Each simulated experiment is looked at every 100 units per arm up to 10,000
per arm (100 looks). Per-batch sufficient statistics are drawn exactly: for
normal data the batch sum is normal and the within-batch sum of squares is
sigma^2 chi^2(batch - 1), independent of it; for 0/1 data the batch sum is
binomial. False-positive rates are checked against a one-sided binomial
bound, alpha + 3 Monte-Carlo standard errors.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest
from scipy import stats

from analysis import confidence_sequence as cs
from analysis import msprt
from analysis.guardrails import guardrail_paths

ALPHA = 0.05
TRIALS = 4_000
LOOKS = 100
BATCH = 100
HORIZON = LOOKS * BATCH
FPR_BOUND = ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / TRIALS)


class Looks(NamedTuple):
    """Cumulative per-look sums of one arm, shape (trials, looks)."""

    n: np.ndarray
    total: np.ndarray
    total_squares: np.ndarray


def _normal_looks(rng: np.random.Generator, mean: float, sd: float) -> Looks:
    shape = (TRIALS, LOOKS)
    batch_sum = rng.normal(BATCH * mean, sd * math.sqrt(BATCH), size=shape)
    within = sd**2 * rng.chisquare(BATCH - 1, size=shape)
    n = np.broadcast_to(BATCH * np.arange(1, LOOKS + 1, dtype=float), shape)
    squares = within + batch_sum**2 / BATCH
    return Looks(n, np.cumsum(batch_sum, axis=1), np.cumsum(squares, axis=1))


def _binary_looks(rng: np.random.Generator, rate: float) -> Looks:
    successes = np.cumsum(rng.binomial(BATCH, rate, size=(TRIALS, LOOKS)), axis=1).astype(float)
    n = np.broadcast_to(BATCH * np.arange(1, LOOKS + 1, dtype=float), successes.shape)
    return Looks(n, successes, successes)


def _rejections(control: Looks, treatment: Looks, tau2: float) -> dict[str, float]:
    """Share of experiments that ever reject 'no difference', per method."""
    mean_a, mean_b = control.total / control.n, treatment.total / treatment.n
    var_a = control.total_squares / control.n - mean_a**2
    var_b = treatment.total_squares / treatment.n - mean_b**2
    difference = mean_b - mean_a
    variance = var_a / control.n + var_b / treatment.n
    log_ratio = msprt.log_mixture_likelihood_ratios(difference, variance, tau2)
    # Balanced arms: effective n is the per-arm n and sigma^2 the sum of variances.
    rho = cs.optimal_rho(HORIZON, ALPHA)
    width = cs.halfwidths(control.n, np.sqrt(var_a + var_b), ALPHA, rho)
    critical = stats.norm.ppf(1 - ALPHA / 2)
    return {
        "msprt": float(np.mean(np.any(log_ratio >= math.log(1 / ALPHA), axis=1))),
        "confidence_sequence": float(np.mean(np.any(np.abs(difference) > width, axis=1))),
        "naive": float(np.mean(np.any(np.abs(difference) > critical * np.sqrt(variance), axis=1))),
    }


def test_aa_continuous_false_positive_rate() -> None:
    rng = np.random.default_rng(101)
    control, treatment = _normal_looks(rng, 10.0, 3.0), _normal_looks(rng, 10.0, 3.0)
    rates = _rejections(control, treatment, tau2=msprt.tau2_from_expected_effect(0.15))
    assert rates["msprt"] <= FPR_BOUND
    assert rates["confidence_sequence"] <= FPR_BOUND
    assert rates["naive"] > 2 * ALPHA


def test_aa_binary_false_positive_rate() -> None:
    rng = np.random.default_rng(102)
    control, treatment = _binary_looks(rng, 0.1), _binary_looks(rng, 0.1)
    rates = _rejections(control, treatment, tau2=msprt.tau2_from_expected_effect(0.005))
    assert rates["msprt"] <= FPR_BOUND
    assert rates["confidence_sequence"] <= FPR_BOUND
    assert rates["naive"] > 2 * ALPHA


def test_ab_sequential_methods_reach_high_power() -> None:
    # Effect 0.06 sd: a fixed-horizon z of 4.2 at 10,000 per arm.
    rng = np.random.default_rng(103)
    control, treatment = _normal_looks(rng, 10.0, 3.0), _normal_looks(rng, 10.18, 3.0)
    rates = _rejections(control, treatment, tau2=msprt.tau2_for_horizon(2 * 9.0 / HORIZON))
    assert rates["msprt"] >= 0.85
    assert rates["confidence_sequence"] >= 0.85


def test_ab_binary_power() -> None:
    # 0.10 -> 0.115 conversion: a fixed-horizon z of about 3.4 at 10,000 per arm.
    rng = np.random.default_rng(104)
    control, treatment = _binary_looks(rng, 0.10), _binary_looks(rng, 0.115)
    rates = _rejections(control, treatment, tau2=msprt.tau2_from_expected_effect(0.015))
    assert rates["msprt"] >= 0.6
    assert rates["confidence_sequence"] >= 0.6


def _guardrail_rates(true_harm: float) -> tuple[float, float]:
    """Share of experiments ever breached / ever shown to hold (latency, 3 % margin)."""
    rng = np.random.default_rng(int(1_000 * true_harm) + 105)
    control = _normal_looks(rng, 100.0, 30.0)
    treatment = _normal_looks(rng, 100.0 * (1 + true_harm), 30.0)
    paths = guardrail_paths(
        *control,
        *treatment,
        margin=0.03,
        relative=True,
        higher_is_better=False,
        alpha=ALPHA,
        rho=cs.optimal_rho(HORIZON, 2 * ALPHA),
    )
    return float(np.mean(paths.breached[:, -1])), float(np.mean(paths.holds[:, -1]))


@pytest.mark.parametrize(
    ("true_harm", "breach_low", "breach_high", "holds_low", "holds_high"),
    [
        (0.00, 0.0, FPR_BOUND, 0.9, 1.0),  # equal variant: rarely breached, usually holds
        (0.03, 0.0, FPR_BOUND, 0.0, FPR_BOUND),  # exactly at the margin: both errors <= alpha
        (0.06, 0.9, 1.0, 0.0, 0.0),  # twice the margin: breached with high probability
    ],
)
def test_guardrail_error_rates_and_power(
    true_harm: float, breach_low: float, breach_high: float, holds_low: float, holds_high: float
) -> None:
    breached, holds = _guardrail_rates(true_harm)
    assert breach_low <= breached <= breach_high
    assert holds_low <= holds <= holds_high
