"""Bandits, small: the final comparison keeps alpha under adaptive weights, regret drops, floors hold.

The full runs, with their figures, are ``benchmarks/bandit.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from analysis import guardrails
from analysis.sufficient_stats import SufficientStats
from service.decisions import bandit
from service.decisions.bandit_simulation import (
    BanditScenario,
    replay_bandit,
    replay_ratio_bandit,
)
from service.decisions.ratios import period_ratio
from service.decisions.sequential import design_for
from service.decisions.simulation import experiment_for
from service.experiments.schema import Experiment

FLOORS = {"control_floor": 0.2, "arm_floor": 0.1, "draws": 1000, "min_units": 50}
EXPERIMENT = experiment_for(2, "bandit", alpha=0.05, planned_units=5000, bandit=FLOORS)
GUARDRAIL = {"name": "errors", "type": "binary", "margin": 0.005, "margin_type": "absolute"}
GUARDED = Experiment.model_validate(
    EXPERIMENT.model_dump(by_alias=True)
    | {"metrics": {"primary": {"name": "primary", "type": "binary"}, "guardrails": [GUARDRAIL]}}
)


def false_positive_rate(scenario: BanditScenario, replays: int, seed: int) -> tuple[int, ...]:
    """Replays with a significant primary, an SRM alarm, a breached guardrail."""
    rng = np.random.default_rng(seed)
    found = [replay_bandit(GUARDED, scenario, rng) for _ in range(replays)]
    return (sum(r.significant for r in found), sum(r.srm_flagged for r in found),
            sum(r.guardrail_breached for r in found))  # fmt: skip


def test_an_aa_bandit_with_a_trend_keeps_the_false_positive_rate_at_alpha() -> None:
    # Every arm's rate climbs from 5 % to 43 % over 20 periods while the weights wander:
    # pooling the periods would compare early control units with late treatment units.
    scenario = BanditScenario((0.05, 0.05), 1000, 20, trend=0.02)
    rejections, srm_flags, breaches = false_positive_rate(scenario, 150, seed=11)
    # One-sided binomial tests of "rate <= alpha": the replays must not refute them. The
    # guardrail (errors, same truth in both arms) is stratified the same way.
    assert stats.binomtest(rejections, 150, 0.05, alternative="greater").pvalue > 0.001
    assert stats.binomtest(breaches, 150, 0.05, alternative="greater").pvalue > 0.001
    assert srm_flags == 0  # the multinomial split is exact: an SRM alarm would be false
    naive = BanditScenario((0.05, 0.05), 1000, 20, trend=0.02, stratified=False)
    naive_rejections, _, naive_breaches = false_positive_rate(naive, 30, seed=12)
    # The pooled estimator fails both: the checks above can fail too.
    assert naive_rejections >= 15 and naive_breaches >= 3


def test_a_bandit_with_a_true_best_arm_loses_less_than_a_fixed_50_50_design() -> None:
    rng = np.random.default_rng(13)
    adaptive = [replay_bandit(EXPERIMENT, BanditScenario((0.10, 0.13), 500, 20), rng)
                for _ in range(20)]  # fmt: skip
    fixed = [replay_bandit(EXPERIMENT, BanditScenario((0.10, 0.13), 500, 20, adaptive=False), rng)
             for _ in range(20)]  # fmt: skip
    assert np.mean([r.regret for r in adaptive]) < 0.75 * np.mean([r.regret for r in fixed])
    for replay in adaptive:
        for weights in replay.weights:
            assert weights["control"] >= 0.2 - 1e-12 and weights["t1"] >= 0.1 - 1e-12
    assert sum(r.significant and r.better for r in adaptive) >= 10  # it still finds the winner


RATIO = experiment_for(2, "bandit", metric="ratio", alpha=0.05, planned_units=6000,
                       bandit=FLOORS)  # fmt: skip


def test_an_aa_ratio_bandit_with_a_trend_keeps_the_false_positive_rate_at_alpha() -> None:
    """Revenue per session by period (delta method per period, stratified), weights adaptive."""
    rng = np.random.default_rng(21)
    scenario = BanditScenario((0.05, 0.05), 500, 12, trend=0.02)
    found = [replay_ratio_bandit(RATIO, scenario, rng) for _ in range(100)]
    rejections = sum(r.significant for r in found)
    assert stats.binomtest(rejections, 100, 0.05, alternative="greater").pvalue > 0.001
    assert not any(r.srm_flagged for r in found)
    # The weights did move (Thompson sampling on the ratio's normal approximation).
    assert sum(any(abs(w["t1"] - 0.5) > 0.1 for w in r.weights) for r in found) >= 50


def test_a_ratio_bandit_with_a_true_best_arm_loses_less_than_a_fixed_50_50_design() -> None:
    rng = np.random.default_rng(22)
    best = BanditScenario((0.10, 0.14), 500, 12, metric="ratio")
    adaptive = [replay_ratio_bandit(RATIO, best, rng) for _ in range(15)]
    fixed_design = BanditScenario((0.10, 0.14), 500, 12, adaptive=False, metric="ratio")
    fixed = [replay_ratio_bandit(RATIO, fixed_design, rng) for _ in range(15)]
    assert np.mean([r.regret for r in adaptive]) < 0.75 * np.mean([r.regret for r in fixed])
    for replay in adaptive:
        for weights in replay.weights:
            assert weights["control"] >= 0.2 - 1e-12 and weights["t1"] >= 0.1 - 1e-12
    assert sum(r.significant and r.better for r in adaptive) >= 8  # it still finds the winner


def test_a_period_ratio_is_the_delta_method_within_the_period() -> None:
    rng = np.random.default_rng(23)
    y = 1.0 + rng.poisson(1.0, 400)
    x = rng.gamma(2.0, 5.0, 400) * y
    found = period_ratio(SufficientStats(400, x.sum(), x @ x), SufficientStats(400, y.sum(), y @ y),
                         float(x @ y))  # fmt: skip
    ratio = x.sum() / y.sum()
    # Deng, Knoblich & Lu (2018): Var(R) ~ sum (x - R y)^2 / (sum y)^2, plug-in moments.
    assert found.mean == pytest.approx(ratio, rel=1e-12)
    assert found.variance_of_mean == pytest.approx(((x - ratio * y) ** 2).sum() / y.sum() ** 2,
                                                   rel=1e-9)  # fmt: skip
    # No denominator yet, or under two units: no ratio, zero units (the stratum is left out).
    assert period_ratio(SufficientStats(5, 1.0, 1.0), SufficientStats(5, 0.0, 0.0), 0.0).n == 0
    assert period_ratio(SufficientStats(1, 1.0, 1.0), SufficientStats(1, 2.0, 4.0), 2.0).n == 0


def test_reweigh_waits_for_units_is_reproducible_and_leaves_rolled_back_arms_out() -> None:
    three = experiment_for(3, "bandit", bandit=FLOORS)
    few = {(k, "primary"): SufficientStats.from_binary(10, 1) for k in three.variant_keys}
    assert "waiting for 50 units" in str(bandit.reweigh(three, ["control", "t1", "t2"], few,
                                                        np.random.default_rng(0)))  # fmt: skip
    sums = {("control", "primary"): SufficientStats.from_binary(500, 50),
            ("t1", "primary"): SufficientStats.from_binary(500, 80),
            ("t2", "primary"): SufficientStats.from_binary(500, 10)}  # fmt: skip
    first = bandit.reweigh(three, ["control", "t1"], sums, np.random.default_rng(5))
    again = bandit.reweigh(three, ["control", "t1"], sums, np.random.default_rng(5))
    assert isinstance(first, bandit.Reweighting) and first == again
    assert first.weights["t2"] == 0.0 and first.weights["t1"] > first.weights["control"] >= 0.2
    assert sum(first.weights.values()) == pytest.approx(1.0)


def test_a_bandit_guardrail_on_one_period_is_the_tests_guardrail() -> None:
    # One period, equal arms and spreads: the stratified bounds are analysis.guardrails' own.
    rng = np.random.default_rng(21)
    values = rng.lognormal(0.0, 0.5, 400)
    control, treatment = (
        SufficientStats.from_values(values),
        SufficientStats.from_values(values + 0.1),
    )
    experiment = experiment_for(2, "bandit", bandit=FLOORS)
    data = experiment.model_dump(by_alias=True)
    data["metrics"]["guardrails"] = [{"name": "latency", "type": "continuous", "margin": 0.05,
                                      "margin_type": "absolute"}]  # fmt: skip
    experiment = type(experiment).model_validate(data)
    guardrail = experiment.metrics.guardrails[0]
    design = design_for(experiment)
    period = bandit.Period({"control": 0.5, "t1": 0.5}, {"control": 400, "t1": 400},
                           {("control", "latency"): control, ("t1", "latency"): treatment},
                           {"control": 400, "t1": 400})  # fmt: skip
    found = bandit.guardrail_check(design, guardrail, "control", "t1", [period])
    expected = guardrails.check_guardrail(control, treatment, margin=0.05, relative=False,
                                          alpha=design.alpha, planned_n=design.planned_units)  # fmt: skip
    assert found.harm == pytest.approx(expected.harm)
    assert found.harm_lower_bound == pytest.approx(expected.harm_lower_bound)
    assert found.harm_upper_bound == pytest.approx(expected.harm_upper_bound)
    assert (found.breached, found.holds) == (expected.breached, expected.holds)
