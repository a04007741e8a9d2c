"""Every human action against every decision state: it takes effect, or is refused with 409.

Before, rolling back the promoted winner was recorded in the audit log and changed nothing:
the state stayed ``promoted`` and everyone kept getting that model.
"""

from __future__ import annotations

from dataclasses import replace

import psycopg

from service.assignment.state import ExperimentState, load_state, override_for, save_state
from service.decisions.actions import ActionRefused, act
from service.decisions.rules import Decision
from service.decisions.store import record_decision
from service.experiments.schema import Experiment
from tests.experiment_files import minimal_experiment

EXPERIMENT = Experiment.model_validate(
    minimal_experiment(
        "acts",
        variants=[
            {"key": "a", "weight": 0.4},
            {"key": "b", "weight": 0.3},
            {"key": "c", "weight": 0.3},
        ],
    )
)
STATES = {
    "running": ExperimentState("running"),
    "ramping": ExperimentState("ramping"),
    "paused": ExperimentState("paused"),
    "halted": ExperimentState("halted"),
    "promoted b": ExperimentState("promoted", winner="b"),
    "promoted c": ExperimentState("promoted", winner="c"),
    "b rolled back": ExperimentState("running", rolled_back=("b",)),
    "rolled_back": ExperimentState("rolled_back"),
    "inconclusive": ExperimentState("inconclusive"),
}
ACTIONS = {
    "approve": ("approve", None),
    "pause": ("pause", None),
    "resume": ("resume", None),
    "promote b": ("promote", "b"),
    "rollback b": ("rollback", "b"),
    "rollback": ("rollback", None),
}
R = "409"
# Resulting (state, winner) per starting state, in ACTIONS' order; R: refused with 409.
EXPECTED: dict[str, list[tuple[str, str | None] | str]] = {
    "running":       [R, ("paused", None), R, ("promoted", "b"), ("running", None), ("rolled_back", None)],
    "ramping":       [R, ("paused", None), R, ("promoted", "b"), ("ramping", None), ("rolled_back", None)],
    "paused":        [R, R, ("running", None), ("promoted", "b"), ("paused", None), ("rolled_back", None)],
    "halted":        [R, R, ("running", None), ("promoted", "b"), ("halted", None), ("rolled_back", None)],
    "promoted b":    [R, R, ("running", None), ("promoted", "b"), ("running", None), ("rolled_back", None)],
    "promoted c":    [R, R, ("running", None), ("promoted", "b"), ("promoted", "c"), ("rolled_back", None)],
    "b rolled back": [R, ("paused", None), R, ("promoted", "b"), R, ("rolled_back", None)],
    "rolled_back":   [R, R, ("running", None), ("promoted", "b"), R, R],
    "inconclusive":  [R, R, ("running", None), ("promoted", "b"), ("inconclusive", None), ("rolled_back", None)],
}  # fmt: skip


def serves(state: ExperimentState, variant: str) -> bool:
    """Whether anybody can be given ``variant`` under this state."""
    override = override_for(EXPERIMENT, state)
    if override.winner is not None:
        return override.winner == variant
    return override.stopped is None and variant not in override.rolled_back


CASES = [
    (start, action, EXPECTED[start][index])
    for start in STATES
    for index, action in enumerate(ACTIONS)
]


def test_the_table_covers_every_pair() -> None:
    assert set(EXPECTED) == set(STATES)
    assert all(len(row) == len(ACTIONS) for row in EXPECTED.values())


def test_every_action_in_every_state(db: str) -> None:
    """One database for the whole table (a fresh one per pair costs more than the pairs)."""
    seen = []
    with psycopg.connect(db, autocommit=True) as conn:
        load_state(conn, EXPERIMENT)
        for start, action, _expected in CASES:
            kind, variant = ACTIONS[action]
            save_state(conn, EXPERIMENT, STATES[start])
            try:
                act(conn, EXPERIMENT, kind, variant, "cli:test", "a reason")
            except ActionRefused:
                after = load_state(conn, EXPERIMENT)[0]
                assert (after.state, after.rolled_back) == (
                    STATES[start].state,
                    STATES[start].rolled_back,
                ), (start, action)  # unchanged
                seen.append((start, action, R))
                continue
            after = load_state(conn, EXPERIMENT)[0]
            seen.append((start, action, (after.state, after.winner)))
            if kind == "rollback":
                assert not serves(after, variant or "b") and not serves(after, variant or "c")
            if kind == "promote":
                assert serves(after, "b") and not serves(after, "a")
    assert seen == CASES


def test_approving_a_decision_that_awaits_approval_promotes(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        before, _ = load_state(conn, EXPERIMENT)
        promoted = replace(before, state="promoted", winner="c")
        awaiting = Decision("promote", "policy", promoted, "c", awaiting_approval=True)
        with conn.transaction():
            record_decision(conn, EXPERIMENT, awaiting, before, {}, "abx", [])
        act(conn, EXPERIMENT, "approve", None, "cli:test", "go")
        after, _ = load_state(conn, EXPERIMENT)
    assert (after.state, after.winner) == ("promoted", "c")
