"""Drift guardrails in the decision rules: halt and rollback protect users first, an alert
waits for nothing else to be decided. Pure."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from analysis.sufficient_stats import SufficientStats
from service.assignment.state import ExperimentState
from service.decisions.drift import DriftCheck
from service.decisions.evaluation import analyze
from service.decisions.rules import decide
from service.experiments.schema import Experiment

NOW = datetime(2026, 6, 1, tzinfo=UTC)
EXPERIMENT = Experiment.model_validate({
    "key": "exp", "description": "d", "owner": "o", "status": "running", "control": "a",
    "variants": [{"key": "a", "weight": 0.5}, {"key": "b", "weight": 0.5}],
    "metrics": {"primary": {"name": "conv", "type": "binary"}},
    "policy": {"min_units": 1000, "min_runtime_hours": 0},
})  # fmt: skip


def decision(action: str, winner: bool = False, variant: str = "b", tripped: bool = True):  # type: ignore[no-untyped-def]
    stats = {("a", "conv"): SufficientStats.from_binary(5000, 500),
             ("b", "conv"): SufficientStats.from_binary(5000, 800 if winner else 500)}  # fmt: skip
    analysis, _ = analyze(EXPERIMENT, {"a": 5000, "b": 5000}, stats, {"a": 0.5, "b": 0.5})
    check = DriftCheck("input_drift", variant, "psi", 0.25, action, 3, 3 if tripped else 1,
                       tripped, 0.9, "input:x[0]", "a")  # fmt: skip
    analysis = replace(analysis, drift=[check])
    return decide(EXPERIMENT, ExperimentState(), analysis, NOW - timedelta(days=2), NOW)


def test_rollback_and_halt_come_before_a_promotion() -> None:
    rolled = decision("rollback", winner=True)
    assert (
        rolled.kind == "rollback"
        and rolled.variant == "b"
        and "b" in rolled.state_after.rolled_back
    )
    assert rolled.reason.startswith("input_drift of b: psi 0.9 on input:x[0] against a")
    halted = decision("halt", winner=True)
    assert halted.kind == "halt" and halted.state_after.state == "halted"


def test_an_alert_is_announced_only_when_nothing_else_is_decided() -> None:
    assert decision("alert", winner=True).kind == "promote"
    alert = decision("alert")
    assert alert.kind == "alert" and alert.state_after == ExperimentState()


def test_a_check_that_has_not_held_long_enough_does_nothing() -> None:
    assert decision("rollback", tripped=False).kind == "continue"
    assert decision("rollback", variant="a").kind == "continue"  # the control is never rolled back
    assert decision("halt", variant="a").kind == "halt"  # but drifting from its profile halts
