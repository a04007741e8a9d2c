"""Synthetic experiments replayed look by look through the workers' own decision code. Pure.

Each look draws the new units of every arm (a multinomial split of the traffic by the
weights in force, so the SRM test sees real noise), their outcomes and, with guardrails,
their refunds and predictions (``synthetic.py``), and runs ``evaluation.analyze`` and
``rules.decide`` exactly as the decision cycle does (``inputs.run_analysis``: ratios
linearised by ``ratios.ratio_stats``, model health as the rollup's per-variant sums): the
design fixed at the first look, the carried state passed from look to look, rolled-back
variants taken out of the weights, the experiment stopped at promote, halt, inconclusive
or when no treatment is left. What it reports per experiment is what a user would see: the
decision, when, why each rollback happened, and whether any look left a comparison
uncomputed. Used by ``benchmarks/decisions_e2e.py`` (figures in docs/statistics.md) and,
small, by the tests.

A look that no unit reached repeats the previous one exactly (``skip_unchanged``): the
analysis is a function of the sums, the carried state, the weights and the day, and the
rules of the analysis, the state and the time; so when no unit arrived, the previous look
decided "continue", the day is the same and no time gate of the rules (``min_runtime_hours``,
the horizon) lies between the two looks, the look would decide "continue" again with the
same state to carry (but the mixture tests' informational look counter). Such looks are
counted, not recomputed; ``tests/decisions/test_simulation.py`` checks the replay is the
same with and without.

A bandit (``policy.method: bandit``) is replayed the same way, with what the cycle adds for
it: each look's analysis reads the sums split by allocation period (``bandit.Period``: a
unit belongs to the period in force when it arrived and keeps its arm, as the sticky store
keeps it), and after a look that decided "continue", Thompson sampling re-weights the
active arms with ``bandit.reweigh`` exactly as ``reweight.reweight_bandit`` does (the same
wait between moves, seed, floors and 0.01 threshold); new weights start a period and apply
to the units of the next look. The switch is taken as exact at the look (the cycle's 3 s
settle notice and the SRM's guard after a switch are not modelled), and the idle-look
shortcut is off (a re-weighting may move the weights at a look no unit reached).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

from analysis import fixed
from analysis.sufficient_stats import SufficientStats
from service.assignment.state import ExperimentState
from service.decisions import bandit, synthetic
from service.decisions.evaluation import ExperimentAnalysis, analyze
from service.decisions.ratios import ratio_stats
from service.decisions.rules import active_treatments, decide
from service.decisions.sequential import Carried, design_for
from service.events.sums import ModelHealth
from service.experiments.schema import MODEL_FALLBACK_RATE, MODEL_LATENCY_P99, Experiment

START = datetime(2026, 1, 5, tzinfo=UTC)


@dataclass(frozen=True)
class Scenario:
    """Traffic and truth: ``lifts`` is each treatment's relative lift on the primary metric."""

    units_per_day: int
    days: float
    look_every_hours: float
    lifts: tuple[float, ...]
    metric: str = "binary"  # binary | continuous (log-normal revenue) | ratio: synthetic.py
    guardrails: bool = False
    """Draw refunds and predictions for the guardrails of ``experiment_for(guardrails=True)``."""
    latency_slowdown: tuple[float, ...] = ()
    """Each treatment's true relative latency increase (default: none)."""


@dataclass
class Replay:
    """One experiment's fate."""

    decision: str = "none"  # promote | halt | inconclusive | rolled_back | none (still running)
    variant: str | None = None
    hours: float | None = None
    rollbacks: list[str] = field(default_factory=list)
    rollback_metrics: list[str] = field(default_factory=list)
    """For each rollback, the metric it rests on: a guardrail's name, or the primary's."""
    looks: int = 0
    looks_with_errors: int = 0
    looks_without_primary: int = 0
    """Looks past ``min_units`` at which an active treatment had no primary comparison."""
    looks_repeated: int = 0
    """Looks no unit reached, counted without recomputing (``skip_unchanged``)."""
    fixed_horizon: list[str] = field(default_factory=list)
    """Treatments a fixed-horizon test (z or Welch, Bonferroni across treatments) finds
    better at ``planned_units``, on the same data (with ``fixed_horizon=True``)."""
    weight_moves: int = 0
    """A bandit's re-weightings: allocation changes, each starting a period."""
    weights: dict[str, float] = field(default_factory=dict)
    """A bandit's weights in force at the end (the YAML's for a test)."""


@dataclass
class _Period:
    """One allocation period's weights, units and per-(variant, metric) running sums."""

    weights: dict[str, float]
    units: dict[str, int] = field(default_factory=dict)
    sums: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, key: str, before: dict[str, SufficientStats], after: dict[str, SufficientStats],
            count: int) -> None:  # fmt: skip
        """The look's new units of arm ``key``: the arm's sums after minus before."""
        self.units[key] = self.units.get(key, 0) + count
        for name, now in after.items():
            was = before.get(name)
            sums = self.sums.setdefault((key, name), [0.0, 0.0, 0.0])
            sums[0] += now.n - (was.n if was else 0)
            sums[1] += now.total - (was.total if was else 0.0)
            sums[2] += now.total_squares - (was.total_squares if was else 0.0)

    def frozen(self) -> bandit.Period:
        stats = {k: SufficientStats(int(n), t, q) for k, (n, t, q) in self.sums.items()}
        return bandit.Period(dict(self.weights), dict(self.units), stats, dict(self.units))


def _inputs(
    experiment: Experiment, scenario: Scenario, arms: dict[str, synthetic.Arm]
) -> tuple[dict[tuple[str, str], SufficientStats], dict[str, ModelHealth], list[str]]:
    """What ``inputs.run_analysis`` reads from the rollup: statistics, model health, errors."""
    stats: dict[tuple[str, str], SufficientStats] = {}
    errors: list[str] = []
    for key, arm in arms.items():
        if arm.units:
            for name, found in arm.stats(scenario.metric, scenario.guardrails).items():
                stats[(key, name)] = found
    if scenario.metric == "ratio":
        sums = {(k, synthetic.PRIMARY): arm.ratio_sums() for k, arm in arms.items() if arm.units}
        linearised, _, errors = ratio_stats(experiment, sums)
        stats.update(linearised)
    health = {k: arm.health() for k, arm in arms.items() if arm.units and scenario.guardrails}
    return stats, health, errors


def _gates(experiment: Experiment, runtime: timedelta) -> tuple[bool, ...]:
    """Which of the rules' time gates the runtime has passed (as ``rules.decide`` reckons)."""
    policy = experiment.policy
    maturity = timedelta(hours=experiment.metrics.primary.maturity_hours or 0.0)
    days = policy.horizon_days
    horizon = days is not None and runtime >= timedelta(days=days) + maturity
    return runtime >= timedelta(hours=policy.min_runtime_hours), horizon


def replay(
    experiment: Experiment, scenario: Scenario, rng: np.random.Generator,
    fixed_horizon: bool = False, skip_unchanged: bool = True, fixed_units: int | None = None,
) -> Replay:  # fmt: skip
    """Run one synthetic experiment through analyze and decide, look by look.

    With ``fixed_horizon`` the traffic goes on after the decision (all arms, the weights of
    the start) until every arm has ``fixed_units`` (default ``planned_units``), where the
    fixed-horizon test is run on the same data.
    """
    keys = experiment.variant_keys
    treatments = [k for k in keys if k != experiment.control]
    slowdown = scenario.latency_slowdown or (0.0,) * len(treatments)
    arms = {experiment.control: synthetic.Arm()} | {
        key: synthetic.Arm(lift, slow)
        for key, lift, slow in zip(treatments, scenario.lifts, slowdown, strict=True)
    }
    metric = experiment.metrics.primary.name
    design = design_for(experiment)
    state = ExperimentState()
    carried: Carried = {}
    daily: dict[Any, dict[str, int]] = {}
    result = Replay()
    looks = int(scenario.days * 24 / scenario.look_every_hours)
    per_look = scenario.units_per_day * scenario.look_every_hours / 24.0
    decided = fixed_done = False
    fixed_n = fixed_units or experiment.policy.planned_units
    is_bandit = design.method == "bandit"
    if is_bandit and scenario.metric == "ratio":
        raise ValueError("the bandit replay reads per-unit sums: binary or continuous primaries")
    allocation = {v.key: v.weight for v in experiment.variants}  # the weights in force
    periods = [_Period(dict(allocation))] if is_bandit else []
    last_move: datetime | None = None
    last: tuple[date, tuple[bool, ...]] | None = None  # the last look that decided "continue"
    repeated = (False, False)  # what that look counted: an error, a primary missing
    for look in range(1, looks + 1):
        now = START + timedelta(hours=look * scenario.look_every_hours)
        active = [experiment.control, *active_treatments(experiment, state)]
        if decided:
            active = list(keys)
        weights = {v.key: allocation[v.key] for v in experiment.variants if v.key in active}
        total_weight = sum(weights.values())
        arrivals = rng.multinomial(
            rng.poisson(per_look * len(keys)), [weights[k] / total_weight for k in active]
        )
        day = (now - timedelta(hours=scenario.look_every_hours / 2)).date()
        for key, count in zip(active, arrivals, strict=True):
            daily.setdefault(day, {}).setdefault(key, 0)
            daily[day][key] += int(count)
            before = arms[key].stats(scenario.metric, scenario.guardrails) if periods else {}
            arms[key].add(rng, scenario.metric, int(count), scenario.guardrails)
            if periods and not decided:
                after = arms[key].stats(scenario.metric, scenario.guardrails)
                periods[-1].add(key, before, after, int(count))
        if fixed_horizon and not fixed_done and min(a.units for a in arms.values()) >= fixed_n:
            stats, _, _ = _inputs(experiment, scenario, arms)
            result.fixed_horizon = _fixed_horizon(experiment, stats, metric)
            fixed_done = True
        if decided:
            if fixed_done:
                break
            continue
        hours = look * scenario.look_every_hours
        here = (now.date(), _gates(experiment, now - START))
        if skip_unchanged and not is_bandit and not arrivals.any() and last == here:
            result.looks += 1
            result.looks_repeated += 1
            result.looks_with_errors += repeated[0]
            result.looks_without_primary += repeated[1]
            continue
        stats, health, ratio_errors = _inputs(experiment, scenario, arms)
        analysis, carried = analyze(
            experiment, {k: a.units for k, a in arms.items() if a.units}, stats, weights,
            design=design, carried=carried, daily_units=daily, health=health, today=now.date(),
            periods=[p.frozen() for p in periods] or None,
        )  # fmt: skip
        repeated = (bool(analysis.errors or ratio_errors),
                    _without_primary(experiment, state, analysis))  # fmt: skip
        result.looks += 1
        result.looks_with_errors += repeated[0]
        result.looks_without_primary += repeated[1]
        decision = decide(experiment, state, analysis, START, now)
        last = here if decision.kind == "continue" and decision.state_after == state else None
        if decision.kind == "rollback" and decision.variant:
            result.rollbacks.append(decision.variant)
            result.rollback_metrics.append(_rollback_metric(analysis, decision.variant, metric))
        state = decision.state_after
        moved = None
        if is_bandit and decision.kind == "continue":
            moved = _reweight(experiment, state, stats, allocation, result.weight_moves,
                              last_move, now)  # fmt: skip
        if moved is not None:
            allocation, last_move = moved, now
            result.weight_moves += 1
            periods.append(_Period(dict(allocation)))
            last = None
        if decision.kind in ("promote", "halt", "inconclusive") or state.state == "rolled_back":
            result.decision = "rolled_back" if decision.kind == "rollback" else decision.kind
            result.variant = decision.variant
            result.hours = hours
            decided = True
            if not fixed_horizon or fixed_done:
                break
    result.weights = allocation
    return result


def _reweight(
    experiment: Experiment, state: ExperimentState, stats: dict[tuple[str, str], SufficientStats],
    allocation: dict[str, float], moves: int, last_move: datetime | None, now: datetime,
) -> dict[str, float] | None:  # fmt: skip
    """New weights, or None where ``reweight.reweight_bandit`` keeps them (its pure steps).

    The cycle calls it after a look that decided "continue" on a running or ramping
    experiment, waits ``min_hours_between_moves`` after its last move, seeds the generator
    with ``bandit.rng_seed`` of the allocations so far (the YAML's first and every move),
    and moves only when some arm changes by ``bandit.MIN_WEIGHT_CHANGE``.
    """
    if state.state not in ("running", "ramping"):
        return None
    wait = timedelta(hours=experiment.policy.bandit_settings.min_hours_between_moves)
    if last_move is not None and now - last_move < wait:
        return None
    active = [experiment.control, *active_treatments(experiment, state)]
    seed = bandit.rng_seed(experiment, 1 + moves)
    found = bandit.reweigh(experiment, active, stats, np.random.default_rng(seed))
    if isinstance(found, str) or not bandit.changed(allocation, found.weights):
        return None
    return found.weights


def _without_primary(
    experiment: Experiment, state: ExperimentState, analysis: ExperimentAnalysis
) -> bool:
    """Whether an active treatment past ``min_units`` lacks its primary comparison."""
    needed = experiment.policy.min_units
    if analysis.units.get(experiment.control, 0) < needed:
        return False
    compared = {c.variant for c in analysis.primary}
    return any(
        analysis.units.get(t, 0) >= needed and t not in compared
        for t in active_treatments(experiment, state)
    )


def _rollback_metric(analysis: ExperimentAnalysis, variant: str, primary: str) -> str:
    """The guardrail a rollback rests on (the rules check guardrails first), else the primary."""
    for check in analysis.guardrails:
        if check.variant == variant and check.breached:
            return check.metric
    return primary


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


def experiment_for(
    arms: int, method: str, metric: str = "binary", guardrails: bool = False, **policy: Any
) -> Experiment:
    """An experiment of ``arms`` equal arms with one primary metric, for replays.

    ``metric="ratio"`` declares the ratio's numerator and denominator as secondary metrics
    (as a YAML file must). ``guardrails`` adds a refund-rate guardrail (absolute margin 0.5
    points on 2 %) and the model-health guardrails of ``experiments/checkout_ranker.yaml`` and
    ``search_embeddings.yaml``: p99 latency within 10 %, fallback rate within 1 point.
    """
    keys = ["control", *(f"t{i}" for i in range(1, arms))]
    primary: dict[str, Any] = {"name": synthetic.PRIMARY, "type": metric}
    secondary: list[dict[str, Any]] = []
    if metric == "ratio":
        primary |= {"numerator": synthetic.NUMERATOR, "denominator": synthetic.DENOMINATOR}
        secondary = [{"name": synthetic.NUMERATOR, "type": "continuous"},
                     {"name": synthetic.DENOMINATOR, "type": "count"}]  # fmt: skip
    checks: list[dict[str, Any]] = []
    if guardrails:
        checks = [
            {"name": synthetic.REFUNDS, "type": "binary", "margin": 0.005, "margin_type": "absolute"},
            {"name": MODEL_LATENCY_P99, "type": "continuous", "margin": 0.10},
            {"name": MODEL_FALLBACK_RATE, "type": "binary", "margin": 0.01, "margin_type": "absolute"},
        ]  # fmt: skip
    return Experiment.model_validate({
        "key": "sim", "description": "replay", "owner": "sim", "status": "running",
        "control": "control", "variants": [{"key": k, "weight": 1 / arms} for k in keys],
        "metrics": {"primary": primary, "secondary": secondary, "guardrails": checks},
        "policy": {"method": method, **policy},
    })  # fmt: skip
