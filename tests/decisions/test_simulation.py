"""End to end, small: A/A experiments replayed through analyze and decide keep the family-wise error.

The long version, with 2, 3 and 5 arms, three metric kinds, power and time to decision, is
``benchmarks/decisions_e2e.py`` (figures in docs/statistics.md). Here 120 experiments per
method and case, 2,000 units a day per arm, a look every 12 hours up to 14 days (the A/A
experiments end at ``planned_units``, day 5): 3 arms on a binary primary; 5 arms on a
ratio primary (revenue per session) and 2 arms on log-normal revenue, both with the refund
and model-health guardrails replayed in the same looks. A false decision is any promotion,
or a rollback for a worse primary, when no arm differs. The test fails when the observed
rate exceeds alpha by more than 2.6 Monte-Carlo standard errors (a one-sided 0.5 % chance
for a method exactly at alpha); each guardrail's rollbacks (of any treatment) are held to
the same bound, and so are SRM halts, to their 0.2 % (sequential test and per-day tests
at 0.1 % each).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from service.decisions.simulation import Replay, Scenario, experiment_for, replay
from service.decisions.synthetic import REFUNDS
from service.experiments.schema import MODEL_FALLBACK_RATE, MODEL_LATENCY_P99

ALPHA = 0.05
EXPERIMENTS = 120
CASES = {  # arms, primary metric kind, guardrails replayed
    "3 arms binary": (3, "binary", False),
    "5 arms ratio, guardrails": (5, "ratio", True),
    "2 arms revenue, guardrails": (2, "continuous", True),
}


def limit(rate: float, trials: int) -> float:
    """``rate`` plus 2.6 Monte-Carlo standard errors of a method exactly at it."""
    return rate + 2.6 * math.sqrt(rate * (1 - rate) / trials)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("method", ["msprt", "confidence_sequence", "group_sequential"])
def test_no_true_difference_means_at_most_alpha_false_decisions(method: str, case: str) -> None:
    arms, metric, guardrails = CASES[case]
    looks = {"looks": 5} if method == "group_sequential" else {}
    experiment = experiment_for(arms, method, metric, guardrails, min_units=500,
                                min_runtime_hours=24, **looks)  # fmt: skip
    scenario = Scenario(units_per_day=2_000, days=14, look_every_hours=12,
                        lifts=(0.0,) * (arms - 1), metric=metric, guardrails=guardrails)  # fmt: skip
    rng = np.random.default_rng(2212 + arms)
    results = [replay(experiment, scenario, rng) for _ in range(EXPERIMENTS)]
    false = sum(r.decision == "promote" or "primary" in r.rollback_metrics for r in results)
    assert false / EXPERIMENTS <= limit(ALPHA, EXPERIMENTS), [
        (r.decision, r.rollback_metrics) for r in results
    ]
    undecided = [r for r in results if r.decision not in ("promote", "halt") and not r.rollbacks]
    assert all(r.decision == "inconclusive" for r in undecided)  # ran to planned_units
    for guardrail in (REFUNDS, MODEL_LATENCY_P99, MODEL_FALLBACK_RATE) if guardrails else ():
        rolled_back = sum(guardrail in r.rollback_metrics for r in results)
        assert rolled_back / EXPERIMENTS <= limit(ALPHA, EXPERIMENTS), guardrail
    halts = sum(r.decision == "halt" for r in results)
    assert halts / EXPERIMENTS <= limit(0.002, EXPERIMENTS)  # at most 1 here
    assert all(r.looks_with_errors == 0 for r in results)  # every look analysed
    assert all(r.looks_without_primary == 0 for r in results)  # no primary silently missing


@pytest.mark.parametrize(("lift", "ending"), [(5.0, "promote"), (0.0, "inconclusive")])
@pytest.mark.parametrize("method", ["msprt", "group_sequential"])
def test_looks_no_unit_reached_are_repeated_exactly(method: str, lift: float, ending: str) -> None:
    """The shortcut for idle looks changes nothing: same decisions, times and numbers.

    Low traffic (one unit per arm an hour, a look every 10 minutes) leaves most looks
    without a new unit. The time gates bind, off day boundaries: with a large lift the
    mSPRT is significant before ``min_runtime_hours`` (44 h), so the promotion comes at the
    first look past it; with none, it ends at ``horizon_days`` (4.8) before
    ``planned_units``. A shortcut blind to either gate moves those hours (checked by hand:
    without the gates, 7 of 10 promotions came later). Group-sequential: two formal looks.
    """
    design = {"looks": 2, "planned_units": 100} if method == "group_sequential" else {}
    experiment = experiment_for(2, method, "binary", True, min_units=5, min_runtime_hours=44,
                                horizon_days=4.8, **{"planned_units": 400, **design})  # fmt: skip
    scenario = Scenario(units_per_day=24, days=6, look_every_hours=1 / 6, lifts=(lift,),
                        guardrails=True)  # fmt: skip
    seeds = range(10)
    fast = [replay(experiment, scenario, np.random.default_rng(s)) for s in seeds]
    full = [replay(experiment, scenario, np.random.default_rng(s), skip_unchanged=False)
            for s in seeds]  # fmt: skip
    assert all(r.looks_repeated == 0 for r in full)
    assert sum(r.looks_repeated for r in fast) > sum(r.looks for r in fast) / 2  # mostly idle
    assert [replace(r, looks_repeated=0) for r in fast] == full
    assert [r.decision for r in full].count(ending) >= 5, [r.decision for r in full]


def test_replay_reports_what_a_harmful_variant_is_rolled_back_for() -> None:
    """A treatment with twice the latency is rolled back by the p99 guardrail, and says so."""
    experiment = experiment_for(3, "msprt", "binary", True, min_units=500, min_runtime_hours=24)
    scenario = Scenario(units_per_day=2_000, days=3, look_every_hours=1, lifts=(0.0, 0.0),
                        guardrails=True, latency_slowdown=(0.0, 1.0))  # fmt: skip
    found: Replay = replay(experiment, scenario, np.random.default_rng(7))
    assert found.rollbacks[:1] == ["t2"]
    assert found.rollback_metrics[:1] == [MODEL_LATENCY_P99]


def offer_banner(arms: int):  # type: ignore[no-untyped-def]
    """``experiments/offer_banner.yaml``'s bandit policy on ``arms`` equal arms."""
    import yaml

    from tests.conftest import EXAMPLES

    policy = yaml.safe_load((EXAMPLES / "offer_banner.yaml").read_text())["policy"]
    return experiment_for(arms, **policy)


@pytest.mark.parametrize("arms", [2, 3])
def test_a_bandit_replayed_with_moving_weights_keeps_alpha(arms: int) -> None:
    """offer_banner's bandit, A/A, its weights moved by Thompson sampling after each look.

    20,000 units a day per arm at the YAML's weights, a look every 2 hours for its 1-day
    horizon (the YAML moves at every look): 120 replays; false promotions, SRM halts and
    uncomputed looks held to the bounds of the tests above. ``benchmarks/decisions_e2e.py
    --bandit`` is the long version (60 s looks).
    """
    experiment = offer_banner(arms)
    scenario = Scenario(units_per_day=20_000, days=1, look_every_hours=2,
                        lifts=(0.0,) * (arms - 1))  # fmt: skip
    rng = np.random.default_rng(31 + arms)
    results = [replay(experiment, scenario, rng) for _ in range(EXPERIMENTS)]
    false = sum(r.decision == "promote" or "primary" in r.rollback_metrics for r in results)
    assert false / EXPERIMENTS <= limit(ALPHA, EXPERIMENTS)
    assert sum(r.decision == "halt" for r in results) / EXPERIMENTS <= limit(0.002, EXPERIMENTS)
    assert all(r.looks_with_errors == 0 and r.looks_without_primary == 0 for r in results)
    assert all(r.weight_moves >= 1 for r in results)  # the weights did move
    floors = experiment.policy.bandit_settings
    for found in results:
        assert sum(found.weights.values()) == pytest.approx(1.0)
        assert found.weights["control"] >= floors.control_floor - 1e-9
        assert min(found.weights.values()) >= floors.arm_floor - 1e-9


def test_a_bandit_moves_traffic_to_and_promotes_a_clearly_better_arm() -> None:
    experiment = offer_banner(3)
    scenario = Scenario(units_per_day=20_000, days=1, look_every_hours=2, lifts=(0.0, 0.3))
    rng = np.random.default_rng(5)
    results = [replay(experiment, scenario, rng) for _ in range(20)]
    assert sum(r.decision == "promote" and r.variant == "t2" for r in results) >= 18
    assert all(max(r.weights, key=r.weights.__getitem__) == "t2" for r in results)
