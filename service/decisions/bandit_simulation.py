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

:func:`replay_ratio_bandit` replays a ratio primary (revenue per session,
``simulation.experiment_for(..., metric="ratio")``): each unit has ``1 + Poisson(1)`` sessions, each
converting at the arm's rate, each conversion worth Gamma(2, 5) (mean 10); the periods carry
each arm's linearised ratio (``ratios.period_ratio``), the pooled sums the whole ratio's
(``linearized_stats``), as the decision workers read them, and regret is expected revenue lost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from analysis.ratio_metric import RatioCrossSums, linearized_stats
from analysis.sufficient_stats import SufficientStats
from service.decisions import bandit
from service.decisions.evaluation import ExperimentAnalysis, analyze
from service.decisions.ratios import period_ratio
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
    metric: str = "binary"
    """``binary`` (conversions) or ``ratio`` (revenue per session)."""


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
        result.guardrail_breached |= any(check.breached for check in analysis.guardrails)
        weights = _after_look(result, analysis, index, scenario.adaptive, experiment, keys,
                              pooled, rng, weights)  # fmt: skip
    result.units = {k: int(totals[k][0]) for k in keys}
    return result


SESSIONS_MEAN = 2.0
REVENUE_PER_CONVERSION = 10.0


def _after_look(
    result: BanditReplay,
    analysis: ExperimentAnalysis,
    index: int,
    adaptive: bool,
    experiment: Experiment,
    keys: list[str],
    pooled: dict[tuple[str, str], SufficientStats],
    rng: np.random.Generator,
    weights: dict[str, float],
) -> dict[str, float]:
    """Note look ``index``'s SRM flag and first significant primary; the weights in force
    next (Thompson sampling's, where the scenario adapts and they changed)."""
    result.srm_flagged |= bool(analysis.srm is not None and analysis.srm.flagged)
    for comparison in analysis.primary:
        if comparison.significant and not result.significant:
            result.significant, result.better = True, comparison.better
            result.variant = comparison.variant
            result.significant_look = index + 1
    if adaptive:
        found = bandit.reweigh(experiment, keys, pooled, rng)
        if not isinstance(found, str) and bandit.changed(weights, found.weights):
            return found.weights
    return weights


def _ratio_arm(count: int, rate: float, rng: np.random.Generator) -> tuple[float, ...]:
    """One arm's period: n, Σx, Σx², Σy, Σy², Σxy (x revenue, y sessions per unit)."""
    sessions = 1 + rng.poisson(SESSIONS_MEAN - 1, size=count)
    conversions = rng.binomial(sessions, rate)
    revenue = np.where(conversions > 0, rng.gamma(np.maximum(2.0 * conversions, 1e-9), 5.0), 0.0)
    x, y = revenue.astype(np.float64), sessions.astype(np.float64)
    return (count, float(x.sum()), float(x @ x), float(y.sum()), float(y @ y), float(x @ y))


def _parts(
    names: tuple[str, str], key: str, sums: tuple[float, ...]
) -> tuple[SufficientStats, SufficientStats]:
    n, sx, sxx, sy, syy, _ = sums
    return SufficientStats(int(n), sx, sxx), SufficientStats(int(n), sy, syy)


def replay_ratio_bandit(
    experiment: Experiment, scenario: BanditScenario, rng: np.random.Generator
) -> BanditReplay:
    """As :func:`replay_bandit`, on a ratio primary (revenue per session), stratified."""
    keys = list(experiment.variant_keys)
    primary = experiment.metrics.primary
    metric = primary.name
    if primary.numerator is None or primary.denominator is None:
        raise ValueError("the experiment's primary metric must be a ratio")
    names = (primary.numerator, primary.denominator)
    design = design_for(experiment)
    weights = {v.key: v.weight for v in experiment.variants}
    carried: Carried = {}
    periods: list[bandit.Period] = []
    totals = {k: np.zeros(6) for k in keys}
    result = BanditReplay()
    for index in range(scenario.periods):
        rates = [min(max(r + scenario.trend * index, 0.0), 1.0) for r in scenario.rates]
        best = max(rates)
        arrivals = rng.multinomial(scenario.units_per_period, [weights[k] for k in keys])
        period_stats: dict[tuple[str, str], SufficientStats] = {}
        for key, count, rate in zip(keys, arrivals, rates, strict=True):
            sums = _ratio_arm(int(count), rate, rng)
            totals[key] += sums
            x, y = _parts(names, key, sums)
            period_stats |= {(key, names[0]): x, (key, names[1]): y}
            period_stats[(key, metric)] = period_ratio(x, y, sums[5])
            result.regret += int(count) * SESSIONS_MEAN * (best - rate) * REVENUE_PER_CONVERSION
        counts = {k: int(c) for k, c in zip(keys, arrivals, strict=True)}
        periods.append(bandit.Period(dict(weights), counts, period_stats, counts))
        result.weights.append(dict(weights))
        units = {k: int(totals[k][0]) for k in keys}
        pooled: dict[tuple[str, str], SufficientStats] = {}
        for key in keys:
            x, y = _parts(names, key, tuple(float(v) for v in totals[key]))
            pooled |= {(key, names[0]): x, (key, names[1]): y}
            if y.total > 0:
                pooled[(key, metric)] = linearized_stats(
                    x, y, RatioCrossSums(float(totals[key][5]))
                )
        analysis, carried = analyze(
            experiment, units, pooled, weights, design=design, carried=carried, periods=periods
        )
        weights = _after_look(result, analysis, index, scenario.adaptive, experiment, keys,
                              pooled, rng, weights)  # fmt: skip
    result.units = {k: int(totals[k][0]) for k in keys}
    return result
