"""A holdout's analysis replayed look by look over months, on synthetic traffic. Pure.

Each day new units reach the holdout's check; the holdout hash puts each in ``holdout`` with
probability ``share`` (a binomial split here); their binary outcomes are drawn with the true
rates given. Every look runs ``evaluation.analyze`` on the holdout's two-group experiment
(``Holdout.as_experiment``) exactly as ``GET /v1/holdouts/<key>`` does, carrying the state
from look to look. What it reports is what an analyst reading the page every day would see:
whether any look's always-valid interval of ``rest - holdout`` excluded zero, and whether the
intervals always covered the true difference. Used by ``benchmarks/holdout_aa.py`` and, small,
by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from analysis.sufficient_stats import SufficientStats
from service.decisions.evaluation import analyze
from service.decisions.sequential import Carried, design_for
from service.experiments.holdouts import HOLDOUT_GROUP, REST_GROUP, Holdout

START = date(2026, 1, 1)


@dataclass(frozen=True)
class HoldoutReplay:
    excluded_zero: bool
    """Some look's interval lay entirely above or below zero."""
    always_covered: bool
    """Every look's interval held the true difference of the rates."""
    looks: int
    final_units: dict[str, int]


def replay_holdout(
    holdout: Holdout,
    units_per_day: int,
    days: int,
    rates: dict[str, float],
    rng: np.random.Generator,
) -> HoldoutReplay:
    """One holdout read daily for ``days`` days; ``rates``: true conversion per group."""
    experiment = holdout.as_experiment()
    metric = experiment.metrics.primary.name
    design = design_for(experiment)
    truth = rates[REST_GROUP] - rates[HOLDOUT_GROUP]
    units = {HOLDOUT_GROUP: 0, REST_GROUP: 0}
    successes = {HOLDOUT_GROUP: 0.0, REST_GROUP: 0.0}
    daily: dict[date, dict[str, int]] = {}
    carried: Carried = {}
    excluded, covered, looks = False, True, 0
    for day in range(days):
        today = START + timedelta(days=day)
        arrivals = int(rng.poisson(units_per_day))
        held = int(rng.binomial(arrivals, holdout.share))
        for group, count in ((HOLDOUT_GROUP, held), (REST_GROUP, arrivals - held)):
            units[group] += count
            successes[group] += float(rng.binomial(count, rates[group]))
        daily[today] = {HOLDOUT_GROUP: held, REST_GROUP: arrivals - held}
        if min(units.values()) < 2:
            continue
        stats = {(g, metric): SufficientStats(units[g], successes[g], successes[g]) for g in units}
        analysis, carried = analyze(
            experiment, dict(units), stats, holdout.weights, design=design, carried=carried,
            daily_units=daily, today=today,
        )  # fmt: skip
        if not analysis.primary:
            continue
        (comparison,) = analysis.primary
        looks += 1
        excluded = excluded or comparison.ci_low > 0 or comparison.ci_high < 0
        covered = covered and comparison.ci_low <= truth <= comparison.ci_high
    return HoldoutReplay(excluded, covered, looks, dict(units))
