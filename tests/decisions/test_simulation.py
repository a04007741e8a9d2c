"""End to end, small: A/A experiments replayed through analyze and decide keep the family-wise error.

The long version, with 2 and 3 arms, power and time to decision, is
``benchmarks/decisions_e2e.py`` (figures in docs/statistics.md). Here 3 arms, 120
experiments per method, 14 days of 2,000 units a day per arm, a look every 12 hours.
A false decision is any promotion, or a rollback for a worse primary, when no arm differs.
The test fails when the observed rate exceeds alpha by more than 2.6 Monte-Carlo standard
errors (a one-sided 0.5 % chance for a method exactly at alpha).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from service.decisions.simulation import Scenario, experiment_for, replay

ALPHA = 0.05
EXPERIMENTS = 120


@pytest.mark.parametrize("method", ["msprt", "confidence_sequence", "group_sequential"])
def test_no_true_difference_means_at_most_alpha_false_decisions(method: str) -> None:
    looks = {"looks": 5} if method == "group_sequential" else {}
    experiment = experiment_for(3, method, min_units=500, min_runtime_hours=24, **looks)
    scenario = Scenario(units_per_day=2_000, days=14, look_every_hours=12, lifts=(0.0, 0.0))
    rng = np.random.default_rng(2212)
    results = [replay(experiment, scenario, rng) for _ in range(EXPERIMENTS)]
    false = sum(r.decision == "promote" or bool(r.rollbacks) for r in results)
    limit = ALPHA + 2.6 * math.sqrt(ALPHA * (1 - ALPHA) / EXPERIMENTS)
    assert false / EXPERIMENTS <= limit, [(r.decision, r.rollbacks) for r in results]
    assert sum(r.decision == "halt" for r in results) <= 2  # SRM: at most 0.1 % + 0.1 % each
    assert all(r.looks_with_errors == 0 for r in results)  # every look analysed
