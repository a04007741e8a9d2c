"""What to do after one analysis: ramp, promote, roll back, halt, call it, or keep running. Pure.

Rules that protect users come first: a sample-ratio mismatch halts the
experiment (never promote on broken randomization); a breached guardrail rolls
that variant back at once, without waiting for the horizon. A significantly
harmful primary metric rolls it back too, but, like a promotion, only once
``min_units`` and ``min_runtime_hours`` are reached (the primary's test assumes
the normal approximation those minimums protect). Promotion also waits for the
ramp to finish. An experiment that reaches
its horizon without a winner is inconclusive and serves the control.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from service.assignment.state import TERMINAL_STATES, ExperimentState
from service.decisions.drift import DriftCheck
from service.decisions.evaluation import Comparison, ExperimentAnalysis, SrmCheck
from service.experiments.schema import Experiment


@dataclass(frozen=True)
class Decision:
    kind: str  # continue | ramp | promote | rollback | inconclusive | halt | alert
    reason: str
    state_after: ExperimentState
    variant: str | None = None
    awaiting_approval: bool = False


def active_treatments(experiment: Experiment, state: ExperimentState) -> list[str]:
    return [
        v.key for v in experiment.variants
        if v.key != experiment.control and v.weight > 0 and v.key not in state.rolled_back
    ]  # fmt: skip


def decide(
    experiment: Experiment,
    state: ExperimentState,
    analysis: ExperimentAnalysis,
    started_at: datetime,
    now: datetime,
) -> Decision:
    """The decision of one analysis; a tripped drift alert is announced when nothing else is."""
    decision = _decide(experiment, state, analysis, started_at, now)
    if decision.kind != "continue" or state.state in (*TERMINAL_STATES, "halted", "paused"):
        return decision
    treatments = active_treatments(experiment, state)
    for check in analysis.drift:
        if (
            check.tripped
            and check.action == "alert"
            and check.variant in (*treatments, experiment.control)
        ):
            return Decision("alert", _drift_reason(check), state, check.variant)
    return decision


def _srm_segments(check: SrmCheck) -> str:
    """Where the imbalance is, from the per-segment drill-down (empty without segments)."""
    if not check.segments:
        return ""
    flagged = [s for s in check.segments if s.flagged]
    if not flagged:
        return "; no single segment explains it"
    named = ", ".join(f"{s.attribute}={s.segment} ({format_p(s.p_value_adjusted)}, Holm)"
                      for s in sorted(flagged, key=lambda s: s.p_value_adjusted))  # fmt: skip
    return f"; imbalance in {named}"


def _drift_reason(check: DriftCheck) -> str:
    return (
        f"{check.guardrail} of {check.variant}: {check.measure} {check.distance:.4g} on "
        f"{check.feature} against {check.reference}, over {check.threshold:g} for "
        f"{check.windows_over} windows in a row (action: {check.action})"
    )


def _decide(
    experiment: Experiment,
    state: ExperimentState,
    analysis: ExperimentAnalysis,
    started_at: datetime,
    now: datetime,
) -> Decision:
    policy = experiment.policy
    keep = Decision("continue", "nothing to change", state)
    if state.state in TERMINAL_STATES or state.state in ("halted", "paused"):
        return replace(keep, reason=f"the experiment is {state.state}")
    if analysis.srm is not None and analysis.srm.flagged:
        srm = analysis.srm
        where = f" (days {', '.join(srm.flagged_days)})" if srm.flagged_days else ""
        return Decision("halt", f"sample ratio mismatch{where}: anytime-valid "
                        f"{format_p(srm.p_value)} against threshold {srm.threshold:g}"
                        f"{_srm_segments(srm)}",
                        replace(state, state="halted"))  # fmt: skip
    treatments = active_treatments(experiment, state)
    for check in analysis.drift:  # before any outcome: the models' own distributions
        watched = (*treatments, experiment.control)  # the control drifts from its profile too
        if check.tripped and check.variant in watched and check.action == "halt":
            return Decision("halt", _drift_reason(check), replace(state, state="halted"),
                            check.variant)  # fmt: skip
        if check.tripped and check.variant in treatments and check.action == "rollback":
            left = [t for t in treatments if t != check.variant]
            after = replace(state, rolled_back=(*state.rolled_back, check.variant),
                            state=state.state if left else "rolled_back")  # fmt: skip
            return Decision("rollback", _drift_reason(check), after, check.variant)
    units = analysis.units
    runtime = now - started_at
    enough = all(
        units.get(v, 0) >= policy.min_units for v in [experiment.control, *treatments]
    ) and runtime >= timedelta(hours=policy.min_runtime_hours)
    harmful = _harmful(analysis, treatments, primary=enough)
    if harmful is not None:
        variant, why = harmful
        rolled_back = (*state.rolled_back, variant)
        left = [t for t in treatments if t != variant]
        after = replace(
            state, rolled_back=rolled_back, state=state.state if left else "rolled_back"
        )
        return Decision("rollback", why, after, variant)
    ramp = policy.ramp
    if state.state == "ramping" and ramp is not None:
        held = now - (state.ramp_started_at or started_at)
        if held < timedelta(hours=ramp.hold_hours):
            return replace(
                keep, reason=f"ramp step {state.ramp_step + 1}/{len(ramp.steps)} holding"
            )
        if state.ramp_step + 1 < len(ramp.steps):
            step = state.ramp_step + 1
            return Decision("ramp", f"guardrails held for {held}; coverage to {ramp.steps[step]:.0%}",
                            replace(state, ramp_step=step, ramp_started_at=now))  # fmt: skip
        return Decision("ramp", f"guardrails held for {held}; ramp complete",
                        replace(state, state="running", ramp_started_at=now))  # fmt: skip
    if any(units.get(v, 0) < policy.min_units for v in [experiment.control, *treatments]):
        return replace(keep, reason=f"waiting for {policy.min_units} units per variant")
    units, waiting = _mature_units(experiment, analysis, [experiment.control, *treatments])
    if waiting is not None:
        return replace(keep, reason=waiting)
    if runtime < timedelta(hours=policy.min_runtime_hours):
        return replace(keep, reason=f"waiting for {policy.min_runtime_hours} h of runtime")
    winners = [
        c for c in analysis.primary if c.variant in treatments and c.significant and c.better
    ]
    if winners:
        best = max(winners, key=lambda c: abs(c.difference))
        why = (f"{best.variant} beats {experiment.control} on {best.metric}: difference "
               f"{best.difference:.4g} [{best.ci_low:.4g}, {best.ci_high:.4g}], {evidence(best)}")  # fmt: skip
        after = replace(state, state="promoted", winner=best.variant)
        return Decision(
            "promote", why, after, best.variant, awaiting_approval=not policy.auto_promote
        )
    horizon_days = policy.horizon_days
    at_horizon = all(
        units.get(v, 0) >= policy.planned_units for v in [experiment.control, *treatments]
    )
    matures_after = timedelta(hours=experiment.metrics.primary.maturity_hours or 0.0)
    if at_horizon or (
        horizon_days is not None and runtime >= timedelta(days=horizon_days) + matures_after
    ):
        return Decision("inconclusive", "the horizon was reached without a winner; serving the control",
                        replace(state, state="inconclusive"))  # fmt: skip
    return replace(keep, reason="no conclusive evidence yet")


def _mature_units(
    experiment: Experiment, analysis: ExperimentAnalysis, variants: list[str]
) -> tuple[dict[str, int], str | None]:
    """Units that may decide the primary metric: only mature ones when it has a window.

    Returns them, and why to wait when a variant has fewer than the maturity rule's
    ``min_units`` (default ``policy.min_units``) mature units.
    """
    primary = experiment.metrics.primary
    found = analysis.maturity.get(primary.name)
    if found is None:
        return analysis.units, None
    rule = primary.maturity
    needed = (
        rule.min_units
        if rule is not None and rule.min_units is not None
        else experiment.policy.min_units
    )
    if any(found.mature_units.get(v, 0) < max(needed, 1) for v in variants):
        pending = ", ".join(f"{v} {found.pending_units.get(v, 0)}" for v in variants)
        return found.mature_units, (
            f"waiting for {max(needed, 1)} mature units per variant on {primary.name} "
            f"(window {primary.window}; pending: {pending})"
        )
    return found.mature_units, None


def format_p(p_value: float) -> str:
    """A p-value for people: three significant digits, ``p < 0.0001`` below that."""
    return "p < 0.0001" if p_value < 1e-4 else f"p = {p_value:.3g}"


def evidence(comparison: Comparison) -> str:
    """What a comparison's significance rests on, in words, for the audit log and webhooks."""
    if comparison.method == "group_sequential":
        looks = len(comparison.information_looks)
        boundary = f" {comparison.z_critical:.3g}" if comparison.z_critical is not None else ""
        return f"group-sequential boundary{boundary} crossed at formal look {looks}"
    p_value = comparison.p_value_adjusted
    if p_value is None:
        p_value = comparison.p_value
    if p_value is None:
        return "interval excludes 0"
    adjusted = "adjusted " if comparison.p_value_adjusted != comparison.p_value else ""
    return f"always-valid {adjusted}{format_p(p_value)}"


def _harmful(
    analysis: ExperimentAnalysis, treatments: list[str], primary: bool
) -> tuple[str, str] | None:
    for check in analysis.guardrails:
        if check.variant in treatments and check.breached:
            return check.variant, (
                f"guardrail {check.metric} breached by {check.variant}: harm lower bound "
                f"{check.harm_lower_bound:.4g} > margin {check.margin:.4g}"
            )
    for comparison in analysis.primary if primary else []:
        if comparison.variant in treatments and comparison.better is False:
            return comparison.variant, (
                f"{comparison.variant} is worse on {comparison.metric}: difference "
                f"{comparison.difference:.4g} [{comparison.ci_low:.4g}, {comparison.ci_high:.4g}],"
                f" {evidence(comparison)}"
            )
    return None
