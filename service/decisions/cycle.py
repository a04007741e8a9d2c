"""Run an analysis and apply its decision in one transaction, under a per-experiment lock.

Everything an analysis changes — the stored run, the decision (audit log), the
new state and the webhook deliveries — commits together or not at all, so a
worker killed mid-task leaves nothing half-applied, and running the task twice
or concurrently is safe (the advisory lock serialises, the second run sees the
first one's state). Human actions go through the same path.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from service.assignment.state import load_state
from service.assignment.sync import allocated_weights
from service.decisions.aliases import move_registry_alias
from service.decisions.graduation import as_allocated
from service.decisions.inputs import run_analysis
from service.decisions.results import json_safe
from service.decisions.reweight import reweight_bandit
from service.decisions.rules import Decision, active_treatments, decide
from service.decisions.shadows import apply_graduation, decide_graduation, graduation_checks
from service.decisions.store import (
    already_alerted,
    awaits_approval,
    lock_experiment,
    record_analysis_run,
    record_decision,
)
from service.experiments.model_registry import ModelRegistry
from service.experiments.schema import Experiment


@dataclasses.dataclass(frozen=True)
class AnalysisOutcome:
    decision: Decision
    decision_id: str | None
    deliveries: list[str]
    numbers: dict[str, Any]


def analyze_and_decide(
    conn: Any, experiment: Experiment, actor: str = "abx", registry: ModelRegistry | None = None
) -> AnalysisOutcome:
    """One analysis run: read, analyse, decide, apply — all in one transaction.

    A promotion (or its rollback) of a registry model moves ``policy.registry_alias`` in
    ``registry`` too (``aliases.py``)."""
    with conn.transaction():
        lock_experiment(conn, experiment.key)
        experiment = as_allocated(experiment, allocated_weights(conn, experiment))
        state, started = load_state(conn, experiment)
        weights = {
            v.key: v.weight for v in experiment.variants
            if v.key == experiment.control or v.key in active_treatments(experiment, state)
        }  # fmt: skip
        analysis, numbers = run_analysis(conn, experiment, weights)
        graduations = graduation_checks(conn, experiment)
        if graduations:
            numbers["shadow_graduation"] = json_safe([dataclasses.asdict(c) for c in graduations])
        now = record_analysis_run(conn, experiment, numbers)
        decision = decide(experiment, state, analysis, started, now)
        still_alerted = decision.kind == "alert" and already_alerted(conn, experiment, decision)
        if decision.kind == "continue":
            reweighted = reweight_bandit(conn, experiment, state, analysis, numbers, actor)
            if reweighted is not None:
                return AnalysisOutcome(*reweighted, numbers)
        if still_alerted:
            decision = dataclasses.replace(
                decision, kind="continue", reason=f"still: {decision.reason}"
            )
        if decision.kind == "continue":  # nothing else to do: may a shadow start as a treatment?
            graduate = decide_graduation(experiment, state, graduations)
            if graduate is None:
                return AnalysisOutcome(decision, None, [], numbers)
            if graduate.awaiting_approval and awaits_approval(conn, experiment, graduate):
                return AnalysisOutcome(dataclasses.replace(decision, reason=f"graduation of "
                                       f"{graduate.variant} awaits approval"), None, [], numbers)  # fmt: skip
            decision = graduate
        if decision.awaiting_approval and awaits_approval(conn, experiment, decision):
            return AnalysisOutcome(dataclasses.replace(decision, kind="continue",
                                   reason="a promotion awaits approval"), None, [], numbers)  # fmt: skip
        moved = move_registry_alias(conn, experiment, state, decision, registry)
        if moved is not None:
            numbers = {**numbers, "registry": moved}
        decision_id, deliveries = record_decision(
            conn, experiment, decision, state, numbers, actor, experiment.policy.webhooks
        )
        if decision.kind == "graduate" and not decision.awaiting_approval:
            assert decision.variant is not None
            apply_graduation(conn, experiment, decision.variant, decision_id)
        return AnalysisOutcome(decision, decision_id, deliveries, numbers)
