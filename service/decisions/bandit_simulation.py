"""Synthetic bandits replayed period by period through the workers' own analysis and re-weighting. Pure.

Each period draws its new units (a multinomial split of the traffic by the weights in
force, so the SRM test sees real noise) and their binary outcomes, then runs
``evaluation.analyze`` with the periods so far (or, ``stratified=False``, with every period
pooled: the naive estimator, for contrast) and ``bandit.reweigh`` exactly as the decision
cycle does. A ``trend`` moves every arm's rate together from period to period (the drift
under which pooling adaptive periods is biased). What one replay reports: whether any
look's primary comparison was significant (and in which direction), the SRM test's flag,
and the regret: expected conversions lost against always serving the best arm. Used by
``benchmarks/bandit.py`` (figures in docs/statistics.md) and, small, by the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from analysis.sufficient_stats import SufficientStats
from service.decisions import bandit
from service.decisions.evaluation import analyze
from service.decisions.sequential import Carried, design_for
from service.experiments.schema import Experiment


@dataclass(frozen=True)
class BanditScenario:
    """Traffic and truth: each arm's conversion rate (control first) in the first period."""

    rates: tuple[float, ...]
    units_per_period: int
    periods: int
    trend: float = 0.0
    """Added to every arm's rate at each period (a common drift over time)."""
    adaptive: bool = True
    """False: the YAML's weights throughout (a fixed design, for the regret baseline)."""
    stratified: bool = True


@dataclass
class BanditReplay:
    significant: bool = False
    significant_look: int | None = None
    better: bool | None = None
    variant: str | None = None
    """The treatment of the first significant comparison."""
    guardrail_breached: bool = False
    """Any look found a guardrail breached (the guardrails see the primary's truth too)."""
    srm_flagged: bool = False
    regret: float = 0.0
    """Expected conversions lost against serving the best arm to every unit."""
    units: dict[str, int] = field(default_factory=dict)
    weights: list[dict[str, float]] = field(default_factory=list)
    """The weights in force in each period."""


def replay_bandit(
    experiment: Experiment, scenario: BanditScenario, rng: np.random.Generator
) -> BanditReplay:
    """Run one synthetic bandit through analyze and reweigh, one look per period."""
    keys = list(experiment.variant_keys)
    metric = experiment.metrics.primary.name
    design = design_for(experiment)
    weights = {v.key: v.weight for v in experiment.variants}
    carried: Carried = {}
    periods: list[bandit.Period] = []
    totals = {k: [0, 0.0] for k in keys}
    guardrails = [g.name for g in experiment.metrics.guardrails]
    guardrail_totals = dict.fromkeys(((k, g) for k in keys for g in guardrails), 0)
    result = BanditReplay()
    for index in range(scenario.periods):
        rates = [min(max(r + scenario.trend * index, 0.0), 1.0) for r in scenario.rates]
        best = max(rates)
        arrivals = rng.multinomial(scenario.units_per_period, [weights[k] for k in keys])
        period_stats = {}
        for key, count, rate in zip(keys, arrivals, rates, strict=True):
            successes = int(rng.binomial(int(count), rate))
            period_stats[(key, metric)] = SufficientStats(int(count), successes, successes)
            for name in guardrails:
                hits = int(rng.binomial(int(count), rate))
                period_stats[(key, name)] = SufficientStats(int(count), hits, hits)
                guardrail_totals[(key, name)] += hits
            totals[key][0] += int(count)
            totals[key][1] += successes
            result.regret += int(count) * (best - rate)
        counts = {k: int(c) for k, c in zip(keys, arrivals, strict=True)}
        periods.append(bandit.Period(dict(weights), counts, period_stats, counts))
        result.weights.append(dict(weights))
        units = {k: int(totals[k][0]) for k in keys}
        pooled = {(k, metric): SufficientStats(units[k], totals[k][1], totals[k][1]) for k in keys}
        pooled |= {
            (k, g): SufficientStats(units[k], n, n) for (k, g), n in guardrail_totals.items()
        }
        analysis, carried = analyze(
            experiment, units, pooled, weights, design=design, carried=carried,
            periods=periods if scenario.stratified else None,
        )  # fmt: skip
        result.srm_flagged |= bool(analysis.srm is not None and analysis.srm.flagged)
        result.guardrail_breached |= any(check.breached for check in analysis.guardrails)
        for comparison in analysis.primary:
            if comparison.significant and not result.significant:
                result.significant, result.better = True, comparison.better
                result.variant = comparison.variant
                result.significant_look = index + 1
        if scenario.adaptive:
            found = bandit.reweigh(experiment, keys, pooled, rng)
            if not isinstance(found, str) and bandit.changed(weights, found.weights):
                weights = found.weights
    result.units = {k: int(totals[k][0]) for k in keys}
    return result
