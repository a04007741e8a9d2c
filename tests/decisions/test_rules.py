"""Decision rules on synthetic evidence: protect users first, then promote, else wait or conclude."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from analysis.sufficient_stats import SufficientStats
from service.assignment.core import Reason
from service.assignment.state import ExperimentState, override_for
from service.decisions.evaluation import analyze
from service.decisions.rules import decide
from service.experiments.schema import Experiment

NOW = datetime(2026, 6, 1, tzinfo=UTC)
STARTED = NOW - timedelta(days=3)


def experiment(**policy: Any) -> Experiment:
    return Experiment.model_validate({
        "key": "exp", "description": "d", "owner": "o", "status": "running", "control": "a",
        "variants": [{"key": "a", "weight": 0.5}, {"key": "b", "weight": 0.5}],
        "metrics": {"primary": {"name": "conv", "type": "binary"},
                    "guardrails": [{"name": "errors", "type": "binary", "margin": 0.01, "margin_type": "absolute"}]},
        "policy": {"min_units": 1000, "min_runtime_hours": 24, **policy},
    })  # fmt: skip


def run(exp: Experiment, state: ExperimentState, units: tuple[int, int], conv: tuple[int, int],
        errors: tuple[int, int] = (10, 10), started: datetime = STARTED):  # type: ignore[no-untyped-def]  # fmt: skip
    stats = {
        ("a", "conv"): SufficientStats.from_binary(units[0], conv[0]),
        ("b", "conv"): SufficientStats.from_binary(units[1], conv[1]),
        ("a", "errors"): SufficientStats.from_binary(units[0], errors[0]),
        ("b", "errors"): SufficientStats.from_binary(units[1], errors[1]),
    }
    analysis, _ = analyze(exp, {"a": units[0], "b": units[1]}, stats, {"a": 0.5, "b": 0.5})
    return decide(exp, state, analysis, started, NOW)


def test_a_clear_winner_is_promoted() -> None:
    decision = run(experiment(), ExperimentState(), (5000, 5000), (500, 700))
    assert decision.kind == "promote" and decision.variant == "b"
    assert decision.state_after.state == "promoted" and not decision.awaiting_approval
    assert override_for(experiment(), decision.state_after).winner == "b"


def test_promotion_can_require_approval() -> None:
    decision = run(experiment(auto_promote=False), ExperimentState(), (5000, 5000), (500, 700))
    assert decision.kind == "promote" and decision.awaiting_approval


def test_no_decision_before_minimum_sample_or_runtime() -> None:
    assert run(experiment(), ExperimentState(), (500, 500), (50, 120)).kind == "continue"
    young = run(
        experiment(), ExperimentState(), (5000, 5000), (500, 700), started=NOW - timedelta(hours=2)
    )
    assert young.kind == "continue" and "runtime" in young.reason


def test_a_breached_guardrail_rolls_back_at_once() -> None:
    decision = run(
        experiment(), ExperimentState(), (300, 300), (30, 60), errors=(3, 60), started=NOW
    )
    assert decision.kind == "rollback" and decision.variant == "b"
    assert decision.state_after.state == "rolled_back"  # no treatment left
    assert override_for(experiment(), decision.state_after).rolled_back == frozenset({"b"})


def test_a_significantly_worse_primary_rolls_back() -> None:
    decision = run(experiment(), ExperimentState(), (5000, 5000), (700, 500))
    assert decision.kind == "rollback" and "worse" in decision.reason


def test_sample_ratio_mismatch_halts_and_never_promotes() -> None:
    decision = run(experiment(), ExperimentState(), (5000, 5600), (500, 900))
    assert decision.kind == "halt" and decision.state_after.state == "halted"
    assert override_for(experiment(), decision.state_after).stopped is Reason.HALTED


def test_horizon_without_winner_is_inconclusive() -> None:
    decision = run(experiment(planned_units=5000), ExperimentState(), (5000, 5000), (500, 505))
    assert decision.kind == "inconclusive"
    assert override_for(experiment(), decision.state_after).stopped is Reason.CONCLUDED
    waiting = run(experiment(planned_units=50_000), ExperimentState(), (5000, 5000), (500, 505))
    assert waiting.kind == "continue"


def test_ramp_steps_wait_for_the_hold_then_advance() -> None:
    exp = experiment(ramp={"steps": [0.05, 0.25, 0.5], "hold_hours": 12})
    fresh = ExperimentState(state="ramping", ramp_step=0, ramp_started_at=NOW - timedelta(hours=1))
    assert run(exp, fresh, (300, 300), (30, 31)).kind == "continue"
    assert override_for(exp, fresh).coverage_cap == 0.05
    held = ExperimentState(state="ramping", ramp_step=0, ramp_started_at=NOW - timedelta(hours=13))
    step = run(exp, held, (300, 300), (30, 31))
    assert step.kind == "ramp" and step.state_after.ramp_step == 1
    last = ExperimentState(state="ramping", ramp_step=2, ramp_started_at=NOW - timedelta(hours=13))
    done = run(exp, last, (300, 300), (30, 31))
    assert done.kind == "ramp" and done.state_after.state == "running"
    # A winner during the ramp waits for the ramp to finish.
    assert run(exp, fresh, (5000, 5000), (500, 700)).kind == "continue"


def test_terminal_and_stopped_states_do_not_move_by_themselves() -> None:
    for state in ("promoted", "rolled_back", "inconclusive", "halted", "paused"):
        assert (
            run(experiment(), ExperimentState(state=state), (5000, 5000), (500, 700)).kind
            == "continue"
        )


def test_a_late_daily_imbalance_halts_even_when_the_total_looks_fine() -> None:
    from datetime import date

    exp = experiment()
    units = {"a": 10_000, "b": 10_000}
    stats = {
        (v, m): SufficientStats.from_binary(10_000, 1000) for v in "ab" for m in ("conv", "errors")
    }
    daily = {date(2026, 5, d): {"a": 1000, "b": 1000} for d in range(1, 10)}
    daily[date(2026, 5, 10)] = {"a": 1000 - 150, "b": 1000 + 150}
    analysis, _ = analyze(exp, units, stats, {"a": 0.5, "b": 0.5}, daily_units=daily)
    assert analysis.srm is not None and analysis.srm.flagged_days == ["2026-05-10"]
    assert decide(exp, ExperimentState(), analysis, STARTED, NOW).kind == "halt"


def test_holm_keeps_the_family_wise_error() -> None:
    exp = Experiment.model_validate({
        **experiment().model_dump(by_alias=True),
        "variants": [{"key": "a", "weight": 0.34}, {"key": "b", "weight": 0.33}, {"key": "c", "weight": 0.33}],
    })  # fmt: skip
    stats = {("a", "conv"): SufficientStats.from_binary(5000, 500), ("b", "conv"): SufficientStats.from_binary(5000, 700),
             ("c", "conv"): SufficientStats.from_binary(5000, 520)}  # fmt: skip
    analysis, _ = analyze(
        exp, {"a": 5000, "b": 5000, "c": 5000}, stats, {"a": 0.34, "b": 0.33, "c": 0.33}
    )
    by_variant = {c.variant: c for c in analysis.primary}
    assert by_variant["b"].significant and by_variant["b"].better
    assert by_variant["c"].p_value_adjusted is not None and by_variant["c"].p_value is not None
    assert by_variant["c"].p_value_adjusted >= by_variant["c"].p_value
    assert not by_variant["c"].significant


def test_arms_without_any_variance_are_skipped_not_crashed() -> None:
    for method in ("msprt", "confidence_sequence", "group_sequential"):
        exp = experiment(method=method)
        stats = {
            (v, m): SufficientStats.from_binary(400, 0) for v in "ab" for m in ("conv", "errors")
        }
        analysis, _ = analyze(exp, {"a": 400, "b": 400}, stats, {"a": 0.5, "b": 0.5})
        assert analysis.primary == [] and any("no variance" in s for s in analysis.skipped), method
