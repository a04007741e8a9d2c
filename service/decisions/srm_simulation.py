"""The SRM gate replayed look by look through the workers' own SRM code and rules. Pure.

A full replay (``simulation.py``) costs 0.6-2.6 ms a look, mostly the metric comparisons;
at the default 60 s cadence a 60-day experiment has 86,400 looks, so the hundreds of
replays the SRM target needs are out of reach that way. The SRM decision reads none of the
comparisons: ``evaluation.analyze`` computes its SRM check from the units, the weights in
force, the units per day and the carried state alone (``evaluation.srm_look``), and
``rules.decide`` halts when that check is flagged. This replay runs exactly that at every
look: ``evaluation.srm_period`` (the anytime-valid test of the current allocation period),
``evaluation.srm_day_flagged`` for each completed day, ``evaluation.srm_check_of`` and
``rules.decide`` on an analysis that holds only the SRM check (see below when).

Two shortcuts, both exact. ``rules.decide`` runs at every look whose SRM check is
flagged, and at the look of each day that tests the day just completed; at the other looks
the analysis holds an unflagged SRM check and nothing else, and the experiment cannot end
another way (no planned units or horizon in reach, no guardrail), so the rules, whose first
gate after the terminal states is that check, can only continue. And ``srm_look``
re-tests every completed day at every look, and a completed day's answer never changes
while the period lasts (its counts are final: the units of a look go to the day of the
middle of its interval, never before the previous look's day; the weights never change
here, so the period never does). Each day is tested once, at the first look that finds it
complete. ``exhaustive=True`` runs
``evaluation.analyze`` itself (no metric statistics, so no comparison) and ``rules.decide``
at every look instead; ``tests/decisions/test_srm_simulation.py`` requires the same
decisions, at the same looks, both ways.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np

from service.assignment.state import ExperimentState
from service.decisions.evaluation import (
    ExperimentAnalysis,
    analyze,
    srm_check_of,
    srm_day_flagged,
    srm_period,
)
from service.decisions.rules import decide
from service.decisions.sequential import Carried, design_for
from service.decisions.simulation import START, experiment_for
from service.experiments.schema import Experiment

BLOCK_LOOKS = 1440
"""Looks whose arrivals are drawn in one numpy call (a day's at the 60 s cadence)."""


@dataclass(frozen=True)
class SrmScenario:
    """Traffic: ``units_per_day`` per arm at the configured split, for ``days``."""

    units_per_day: int
    days: float
    look_every_hours: float
    true_shares: tuple[float, ...] | None = None
    """The split the traffic really follows (default: the configured weights, healthy)."""
    stop_at_units: int | None = None
    """End the replay at the first look with at least this many units in all."""


@dataclass(frozen=True)
class SrmReplay:
    """One experiment's SRM fate."""

    halted: bool
    hours: float | None
    """When the rules halted it (None: never)."""
    units: int
    """Units in all at the halt, or at the end."""
    looks: int
    by_day: bool
    """Whether a completed day's own test was flagged at the halt (else the period's test)."""


def replay_srm(
    experiment: Experiment, scenario: SrmScenario, rng: np.random.Generator,
    exhaustive: bool = False,
) -> SrmReplay:  # fmt: skip
    """Replay one experiment's SRM gate, look by look, until the rules halt it or the end.

    The experiment must not be able to end otherwise while the replay lasts (no planned
    units or horizon reached, no guardrail: ``srm_experiment``).
    """
    design = design_for(experiment)
    keys = experiment.variant_keys
    weights = {v.key: v.weight for v in experiment.variants}
    total_weight = sum(weights.values())
    shares = scenario.true_shares or tuple(weights[k] / total_weight for k in keys)
    hours_per_look = scenario.look_every_hours
    per_look = scenario.units_per_day * hours_per_look / 24.0 * len(keys)
    units = dict.fromkeys(keys, 0)
    daily: dict[date, dict[str, int]] = {}
    days: list[date] = []  # in order: each look's day is never before the previous look's
    tested = 0
    flagged_days: list[str] = []
    carried: Carried | None = None
    analysis_carried: Carried = {}
    state = ExperimentState()
    looks = int(scenario.days * 24 / hours_per_look)
    half_look = timedelta(hours=hours_per_look / 2)
    drawn: list[list[int]] = []
    for look in range(1, looks + 1):
        if look % BLOCK_LOOKS == 1 or BLOCK_LOOKS == 1:  # the arrivals of the next looks at once
            size = min(BLOCK_LOOKS, looks - look + 1)
            drawn = rng.multinomial(rng.poisson(per_look, size), shares).tolist()
        arrivals = drawn[(look - 1) % BLOCK_LOOKS]
        now = START + timedelta(hours=look * hours_per_look)
        day = (now - half_look).date()
        if day not in daily:
            daily[day] = dict.fromkeys(keys, 0)
            days.append(day)
        counted = daily[day]
        for key, count in zip(keys, arrivals, strict=True):
            counted[key] += count
            units[key] += count
        today = now.date()
        if exhaustive:
            analysis, analysis_carried = analyze(
                experiment, {k: n for k, n in units.items() if n}, {}, weights, design=design,
                carried=analysis_carried, daily_units=daily, today=today,
            )  # fmt: skip
        else:
            period = srm_period(design, units, weights, carried, today)
            if period is None:
                continue
            if carried is not None and period.started_on is not None:
                raise AssertionError("the weights never change here: one period")
            carried = period.state
            day_tested = False
            while tested < len(days) and days[tested] < today:
                if srm_day_flagged(design, period, days[tested], tested + 1, daily[days[tested]]):
                    flagged_days.append(days[tested].isoformat())
                tested += 1
                day_tested = True
            if not (period.result.flagged or flagged_days or day_tested):
                if (
                    scenario.stop_at_units is not None
                    and sum(units.values()) >= scenario.stop_at_units
                ):
                    return SrmReplay(False, None, sum(units.values()), look, False)
                continue  # an unflagged check, nothing else: the rules can only continue
            analysis = ExperimentAnalysis(
                experiment.key, experiment.seed, design.method, design.alpha, dict(units),
                srm_check_of(period, units, flagged_days),
            )  # fmt: skip
        decision = decide(experiment, state, analysis, START, now)
        total = sum(units.values())
        if decision.kind != "continue":
            if decision.kind != "halt":
                raise AssertionError(f"only the SRM gate may end this replay: {decision}")
            srm = analysis.srm
            return SrmReplay(True, look * hours_per_look, total, look,
                             bool(srm and srm.flagged_days))  # fmt: skip
        if scenario.stop_at_units is not None and total >= scenario.stop_at_units:
            return SrmReplay(False, None, total, look, False)
    return SrmReplay(False, None, sum(units.values()), looks, False)


def srm_experiment(arms: int, **policy: Any) -> Experiment:
    """``arms`` equal arms, one binary primary, nothing that could end it but the SRM gate."""
    return experiment_for(arms, "msprt", planned_units=10**12, horizon_days=None, **policy)
