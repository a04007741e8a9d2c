"""Approve, pause, resume, promote or roll back by hand: audited like automatic decisions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from service.assignment.state import load_state
from service.decisions.aliases import move_registry_alias
from service.decisions.rules import Decision
from service.decisions.shadows import GraduationRefused, apply_graduation
from service.decisions.store import (
    awaiting_kind,
    last_run_numbers,
    latest_awaiting_approval,
    lock_experiment,
    mark_applied,
    record_decision,
)
from service.experiments.model_registry import ModelRegistry
from service.experiments.schema import Experiment
from service.observability import metrics

ACTIONS = ("approve", "pause", "resume", "promote", "rollback")


class ActionRefused(ValueError):
    """The action does not apply to the experiment as it stands (HTTP 409)."""


def _decision(
    conn: Any, experiment: Experiment, action: str, variant: str | None, reason: str
) -> tuple[Decision, str | None]:
    """The state change an action asks for; also the id of an approved decision."""
    state, _ = load_state(conn, experiment)
    now = datetime.now(UTC)
    if variant is not None and variant not in experiment.variant_keys:
        raise ValueError(f"unknown variant {variant!r}; variants: {list(experiment.variant_keys)}")
    if action == "approve":
        awaiting = latest_awaiting_approval(conn, experiment)
        if awaiting is None:
            raise ActionRefused("no decision awaits approval")
        decision_id, winner = awaiting
        if awaiting_kind(conn, decision_id) == "graduate":  # a shadow proposed as a treatment
            if state.state not in ("running", "ramping"):
                raise ActionRefused(
                    f"a shadow can start as a treatment only while the experiment runs "
                    f"(it is {state.state})"
                )
            return Decision("approve", reason, state, winner), decision_id
        return Decision(
            "approve", reason, replace(state, state="promoted", winner=winner), winner
        ), decision_id
    if action == "pause":
        if state.state not in ("running", "ramping"):
            raise ActionRefused(
                f"only a running or ramping experiment can be paused (it is {state.state})"
            )
        return Decision("pause", reason, replace(state, state="paused")), None
    if action == "resume":
        ramp = experiment.policy.ramp
        ramping = ramp is not None and state.ramp_step + 1 < len(ramp.steps)
        resumed = replace(
            state, state="ramping" if ramping else "running", winner=None, ramp_started_at=now
        )
        if state.state in ("running", "ramping"):
            raise ActionRefused(f"the experiment is already {state.state}")
        return Decision("resume", reason, resumed), None
    if action == "promote":
        if variant is None:
            raise ValueError("promote needs a variant")
        return Decision(
            "promote", reason, replace(state, state="promoted", winner=variant), variant
        ), None
    if action == "rollback":
        return _rollback(experiment, state, variant, reason), None
    raise ValueError(f"unknown action {action!r}; actions: {', '.join(ACTIONS)}")


def _rollback(experiment: Experiment, state: Any, variant: str | None, reason: str) -> Decision:
    """Roll back the whole experiment (no variant, or the control) or one treatment.

    Rolling back the promoted winner ends the promotion: the experiment runs again without
    it (a ``promoted`` state would keep serving the winner to everyone, whatever the list of
    rolled-back variants says). A rollback that would change nothing is refused.
    """
    if variant is None or variant == experiment.control:
        if state.state == "rolled_back":
            raise ActionRefused("the experiment is already rolled back")
        return Decision("rollback", reason, replace(state, state="rolled_back", winner=None))
    if state.state == "rolled_back" or variant in state.rolled_back:
        raise ActionRefused(f"variant {variant!r} is already rolled back")
    rolled_back = (*state.rolled_back, variant)
    if state.state == "promoted" and state.winner == variant:
        after = replace(state, state="running", winner=None, rolled_back=rolled_back)
        return Decision("rollback", reason, after, variant)
    return Decision("rollback", reason, replace(state, rolled_back=rolled_back), variant)


def act(
    conn: Any,
    experiment: Experiment,
    action: str,
    variant: str | None,
    actor: str,
    reason: str,
    registry: ModelRegistry | None = None,
) -> tuple[str, Decision, list[str]]:
    """Apply a human action in one transaction; return the decision id and webhook deliveries.

    ``actor`` goes into the audit log as given, so it must be one the caller verified: the
    API passes its key's ``key:<name>``, ``abx action`` the operating-system user
    (``cli:<user>``). A promotion of a registry model, or its rollback, moves the
    experiment's ``policy.registry_alias`` in ``registry`` (``aliases.py``)."""
    with conn.transaction():
        lock_experiment(conn, experiment.key)
        before, _ = load_state(conn, experiment)
        decision, approved = _decision(conn, experiment, action, variant, reason)
        numbers: dict[str, Any] = {"last_analysis": last_run_numbers(conn, experiment)}
        if approved is not None:
            numbers["approves"] = approved
            mark_applied(conn, approved)
            if awaiting_kind(conn, approved) == "graduate":
                assert decision.variant is not None
                try:
                    numbers["weights_after"] = apply_graduation(
                        conn, experiment, decision.variant, approved
                    )
                except GraduationRefused as error:
                    raise ActionRefused(str(error)) from error
        moved = move_registry_alias(conn, experiment, before, decision, registry)
        if moved is not None:
            numbers["registry"] = moved
        decision_id, deliveries = record_decision(
            conn,
            experiment,
            decision,
            before,
            numbers,
            actor,
            experiment.policy.webhooks,
        )
    metrics.DECISIONS.labels(experiment.key, decision.kind).inc()
    return decision_id, decision, deliveries
