"""Planned versus actual sample size: where the experiment stands against its horizon."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from dashboards.evidence import ExposureSeries
from service.decisions.plan import Plan, PlanInputs, make_plan, observed_inputs
from service.experiments.schema import Experiment

RECENT_DAYS = 7
"""Traffic forecasts use the mean daily exposures of the last week (a ramp changes them)."""


@dataclass(frozen=True)
class SampleSize:
    planned_units_per_variant: int
    """``policy.planned_units``: what the sequential tests are tuned for and the horizon."""
    horizon_days: float | None
    actual_units: dict[str, int]
    information_fraction: float
    """Smallest arm's units over the planned units (capped at 1)."""
    daily_units_recent: dict[str, float]
    projected_date: date | None
    """When the smallest arm reaches the planned units at recent traffic (None: no traffic)."""
    power_plan: Plan | None
    """Fixed-horizon units for 80 % power at ``policy.expected_effect``, when one is set."""
    power_plan_note: str


def sample_size(conn: Any, experiment: Experiment, exposures: ExposureSeries | None) -> SampleSize:
    policy = experiment.policy
    serving = [v.key for v in experiment.variants if v.weight > 0]
    actual = {v: exposures.cumulative[v][-1] if exposures else 0 for v in serving}
    recent: dict[str, float] = {}
    projected = None
    if exposures is not None:
        window = min(RECENT_DAYS, len(exposures.days))
        recent = {v: sum(exposures.daily[v][-window:]) / window for v in serving}
        remaining = [
            (policy.planned_units - actual[v]) / recent[v]
            for v in serving
            if actual[v] < policy.planned_units and recent[v] > 0
        ]
        if remaining:
            projected = exposures.days[-1] + timedelta(days=math.ceil(max(remaining)))
        elif all(actual[v] >= policy.planned_units for v in serving):
            projected = exposures.days[-1]
    fraction = min(1.0, min(actual.values(), default=0) / policy.planned_units)
    plan, note = None, "set policy.expected_effect to see the units needed for 80 % power"
    if policy.expected_effect is not None:
        try:
            plan = make_plan(
                experiment,
                PlanInputs(policy.expected_effect, alpha=policy.alpha),
                observed_inputs(conn, experiment),
            )
            note = (
                f"fixed-horizon test at alpha {policy.alpha:g}, 80 % power, absolute effect"
                f" {policy.expected_effect:g} on {experiment.metrics.primary.name}"
            )
        except ValueError as error:
            note = f"no power plan yet: {error}"
    return SampleSize(
        policy.planned_units, policy.horizon_days, actual, fraction, recent, projected, plan, note
    )
