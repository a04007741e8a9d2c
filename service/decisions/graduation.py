"""When a shadow may start as a treatment: its hours within bounds, judged by intervals. Pure.

A shadow graduates when each of the last ``hours`` complete hours of its runs is within
every bound of ``policy.shadow_graduation``, each judged by the unfavourable end of its 95%
interval (the agreement's Wilson lower bound, the mean absolute difference's upper bound), so
an hour of few or noisy runs does not count however good its point estimate. Latency has no
interval here: the hour's p99 is compared as it is. A missing hour, or one with fewer than
``min_rows`` rated rows, breaks the run. Graduating gives the shadow ``weight`` of the
traffic, taken from the control, through a new allocation (the weights change like a YAML
edit: announced ahead, sticky units keep their variant).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from service.assignment.state import TERMINAL_STATES, ExperimentState
from service.decisions.rules import Decision
from service.experiments.schema import Experiment, ShadowGraduation
from service.inference.shadow_report import ShadowHour, ShadowWindow, summarize


@dataclass(frozen=True)
class GraduationHour:
    hour: str
    rows: int
    missed: str | None
    """The first bound the hour missed; None: within every bound."""


@dataclass(frozen=True)
class GraduationCheck:
    variant: str
    action: str
    weight: float
    hours_needed: int
    hours_held: int
    """Complete hours in a row, up to the latest, within every bound."""
    ready: bool
    missed: str | None
    """Why the latest complete hour does not count (None when it does)."""
    history: list[GraduationHour] = field(default_factory=list)


def graduation_weight(experiment: Experiment) -> float:
    """The graduated shadow's weight: the rule's, else the first ramp step (the rules ensure one)."""
    rule = experiment.policy.shadow_graduation
    assert rule is not None
    if rule.weight is not None:
        return rule.weight
    ramp = experiment.policy.ramp
    assert ramp is not None
    return ramp.steps[0]


def hour_missed(rule: ShadowGraduation, window: ShadowWindow) -> str | None:
    """The first bound an hour misses, judged by the unfavourable end of each interval."""
    if window.rows < rule.min_rows:
        return f"{window.rows} rated rows, fewer than {rule.min_rows}"
    if rule.min_agreement is not None:
        low = window.agreement_ci_low
        if low is None or low < rule.min_agreement:
            return f"agreement lower bound {_fmt(low)} < {rule.min_agreement:g}"
    if rule.max_mean_abs_difference is not None:
        high = window.mean_abs_diff_ci_high
        if high is None or high > rule.max_mean_abs_difference:
            return (
                f"mean absolute difference upper bound {_fmt(high)} > "
                f"{rule.max_mean_abs_difference:g}"
            )
    p99 = window.latency_p99_ms
    if rule.max_latency_p99_ms is not None and (p99 is None or p99 > rule.max_latency_p99_ms):
        return f"p99 latency {_fmt(p99)} ms > {rule.max_latency_p99_ms:g} ms"
    if rule.max_latency_ratio is not None:
        served = window.served_latency_p99_ms
        if p99 is None or not served or p99 / served > rule.max_latency_ratio:
            ratio = p99 / served if p99 is not None and served else None
            return f"p99 latency ratio {_fmt(ratio)} > {rule.max_latency_ratio:g}"
    return None


def _fmt(value: float | None) -> str:
    return "none" if value is None else f"{value:.4g}"


def check_graduation(
    rule: ShadowGraduation,
    variant: str,
    weight: float,
    hours: Sequence[ShadowHour],
    now: datetime,
) -> GraduationCheck:
    """Whether ``variant``'s last ``rule.hours`` complete hours before ``now`` all held."""
    by_hour = {h.hour: h for h in hours}
    end = now.replace(minute=0, second=0, microsecond=0)
    history = []
    for back in range(rule.hours, 0, -1):
        start = end - timedelta(hours=back)
        found = by_hour.get(start)
        if found is None:
            history.append(GraduationHour(start.isoformat(), 0, "no shadow runs"))
            continue
        window = summarize(found, start.isoformat())
        history.append(GraduationHour(window.hour, window.rows, hour_missed(rule, window)))
    held = 0
    for item in reversed(history):
        if item.missed is not None:
            break
        held += 1
    return GraduationCheck(
        variant, rule.action, weight, rule.hours, held, held >= rule.hours,
        history[-1].missed, history,
    )  # fmt: skip


def graduated_weights(
    weights: Mapping[str, float], control: str, variant: str, weight: float
) -> dict[str, float] | None:
    """The weights once ``variant`` takes ``weight`` from the control; None if it cannot."""
    if weights.get(control, 0.0) <= weight or weights.get(variant, 0.0) > 0:
        return None
    after = dict(weights)
    after[control] = weights[control] - weight
    after[variant] = weight
    return after


def graduation_decision(
    experiment: Experiment,
    state: ExperimentState,
    checks: Sequence[GraduationCheck],
    weights: Mapping[str, float],
) -> Decision | None:
    """A ``graduate`` decision for the first ready shadow that can still take traffic."""
    if state.state in TERMINAL_STATES or state.state in ("halted", "paused"):
        return None
    for check in checks:
        if not check.ready or check.variant in state.rolled_back:
            continue
        after = graduated_weights(weights, experiment.control, check.variant, check.weight)
        if after is None:
            continue
        verb = "started" if check.action == "start" else "proposed"
        reason = (
            f"shadow {check.variant} within bounds for {check.hours_held} h in a row "
            f"(interval bounds); {verb} as a treatment at weight {check.weight:g}, "
            f"taken from {experiment.control}"
        )
        return Decision(
            "graduate", reason, state, check.variant, awaiting_approval=check.action == "propose"
        )
    return None


def as_allocated(experiment: Experiment, weights: Mapping[str, float]) -> Experiment:
    """The experiment with the weights in force (a graduated shadow's among them)."""
    if all(weights.get(v.key, v.weight) == v.weight for v in experiment.variants):
        return experiment
    variants = [
        v.model_copy(update={"weight": float(weights.get(v.key, v.weight))})
        for v in experiment.variants
    ]
    return experiment.model_copy(update={"variants": variants})
