"""Synthetic experiments replayed look by look through the workers' own decision code. Pure.

Each look draws the new units of every arm (a multinomial split of the traffic by the
weights in force, so the SRM test sees real noise), their outcomes, and runs
``evaluation.analyze`` and ``rules.decide`` exactly as the decision cycle does: the design
fixed at the first look, the carried state passed from look to look, rolled-back variants
taken out of the weights, the experiment stopped at promote, halt, inconclusive or when no
treatment is left. What it reports per experiment is what a user would see: the decision,
when, and whether any look left a comparison uncomputed. Used by
``benchmarks/decisions_e2e.py`` (figures in docs/statistics.md) and, small, by the tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from analysis import fixed
from analysis.sufficient_stats import SufficientStats
from service.assignment.state import ExperimentState
from service.decisions.evaluation import analyze
from service.decisions.rules import active_treatments, decide
from service.decisions.sequential import Carried, design_for
from service.experiments.schema import Experiment

START = datetime(2026, 1, 5, tzinfo=UTC)


@dataclass(frozen=True)
class Scenario:
    """Traffic and truth: ``lifts`` is each treatment's relative lift on the primary metric."""

    units_per_day: int
    days: float
    look_every_hours: float
    lifts: tuple[float, ...]
    metric: str = "binary"  # binary (10 % base rate) | continuous (log-normal, heavy-tailed)


@dataclass
class Replay:
    """One experiment's fate."""

    decision: str = "none"  # promote | halt | inconclusive | rolled_back | none (still running)
    variant: str | None = None
    hours: float | None = None
    rollbacks: list[str] = field(default_factory=list)
    looks: int = 0
    looks_with_errors: int = 0
    fixed_horizon: list[str] = field(default_factory=list)
    """Treatments a fixed-horizon test (z or Welch, Bonferroni across treatments) finds
    better at ``planned_units``, on the same data (with ``fixed_horizon=True``)."""


def _outcomes(rng: np.random.Generator, metric: str, n: int, lift: float) -> tuple[float, float]:
    """Sum and sum of squares of ``n`` units' outcomes."""
    if n == 0:
        return 0.0, 0.0
    if metric == "binary":
        successes = float(rng.binomial(n, 0.10 * (1.0 + lift)))
        return successes, successes
    values = rng.lognormal(math.log(20.0), 1.0, n) * (1.0 + lift)
    return float(values.sum()), float((values**2).sum())


def replay(
    experiment: Experiment, scenario: Scenario, rng: np.random.Generator,
    fixed_horizon: bool = False,
) -> Replay:  # fmt: skip
    """Run one synthetic experiment through analyze and decide, look by look.

    With ``fixed_horizon`` the traffic goes on after the decision (all arms, the weights of
    the start) until every arm has ``planned_units``, for the fixed-horizon comparison.
    """
    keys = experiment.variant_keys
    treatments = [k for k in keys if k != experiment.control]
    lift = {experiment.control: 0.0, **dict(zip(treatments, scenario.lifts, strict=True))}
    metric = experiment.metrics.primary.name
    design = design_for(experiment)
    state = ExperimentState()
    carried: Carried = {}
    units = dict.fromkeys(keys, 0)
    sums = {k: [0.0, 0.0] for k in keys}
    daily: dict[Any, dict[str, int]] = {}
    result = Replay()
    looks = int(scenario.days * 24 / scenario.look_every_hours)
    per_look = scenario.units_per_day * scenario.look_every_hours / 24.0
    decided = False
    for look in range(1, looks + 1):
        now = START + timedelta(hours=look * scenario.look_every_hours)
        active = [experiment.control, *active_treatments(experiment, state)]
        if decided:
            active = list(keys)
        weights = {v.key: v.weight for v in experiment.variants if v.key in active}
        total_weight = sum(weights.values())
        arrivals = rng.multinomial(
            rng.poisson(per_look * len(keys)), [weights[k] / total_weight for k in active]
        )
        day = (now - timedelta(hours=scenario.look_every_hours / 2)).date()
        for key, count in zip(active, arrivals, strict=True):
            units[key] += int(count)
            daily.setdefault(day, {}).setdefault(key, 0)
            daily[day][key] += int(count)
            total, squares = _outcomes(rng, scenario.metric, int(count), lift[key])
            sums[key][0] += total
            sums[key][1] += squares
        stats = {(k, metric): SufficientStats(units[k], sums[k][0], sums[k][1])
                 for k in keys if units[k]}  # fmt: skip
        if decided:
            if min(units.values()) >= experiment.policy.planned_units:
                result.fixed_horizon = _fixed_horizon(experiment, stats, metric)
                break
            continue
        analysis, carried = analyze(
            experiment, dict(units), stats, weights, design=design, carried=carried,
            daily_units=daily, today=now.date(),
        )  # fmt: skip
        result.looks += 1
        result.looks_with_errors += bool(analysis.errors)
        decision = decide(experiment, state, analysis, START, now)
        if decision.kind == "rollback" and decision.variant:
            result.rollbacks.append(decision.variant)
        state = decision.state_after
        if decision.kind in ("promote", "halt", "inconclusive") or state.state == "rolled_back":
            result.decision = "rolled_back" if decision.kind == "rollback" else decision.kind
            result.variant = decision.variant
            result.hours = look * scenario.look_every_hours
            decided = True
            if not fixed_horizon:
                break
    return result


def _fixed_horizon(
    experiment: Experiment, stats: dict[tuple[str, str], SufficientStats], metric: str
) -> list[str]:
    """Treatments a single test at the planned size finds better (alpha / treatments each)."""
    treatments = [k for k in experiment.variant_keys if k != experiment.control]
    level = experiment.policy.alpha / len(treatments)
    control = stats[(experiment.control, metric)]
    better = []
    for key in treatments:
        arm = stats[(key, metric)]
        if experiment.metrics.primary.type == "binary":
            test = fixed.two_proportion_z(round(control.total), control.n, round(arm.total), arm.n)
            z, p_value = test.z, test.p_value
        else:
            welch = fixed.welch_t(control.mean, control.sample_variance, control.n,
                                  arm.mean, arm.sample_variance, arm.n)  # fmt: skip
            z, p_value = welch.t, welch.p_value
        if p_value <= level and z > 0:
            better.append(key)
    return better


def experiment_for(arms: int, method: str, metric: str = "binary", **policy: Any) -> Experiment:
    """An experiment of ``arms`` equal arms with one primary metric, for replays."""
    keys = ["control", *(f"t{i}" for i in range(1, arms))]
    return Experiment.model_validate({
        "key": "sim", "description": "replay", "owner": "sim", "status": "running",
        "control": "control", "variants": [{"key": k, "weight": 1 / arms} for k in keys],
        "metrics": {"primary": {"name": "primary", "type": metric}},
        "policy": {"method": method, **policy},
    })  # fmt: skip
