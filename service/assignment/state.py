"""An experiment's decision state: what it means for serving, and its table.

``experiment_state`` rows are written by decisions and human actions; absent
a row, an experiment runs as configured (at its first ramp step if it has a
ramp). Terminal states never change again by themselves. The functions that
read and write the table take a connection and import no driver, so the
serving side (``sync``) and the decisions read one definition of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.assignment.core import NO_OVERRIDE, Reason, ServingOverride
from service.experiments.schema import Experiment

TERMINAL_STATES = frozenset({"promoted", "rolled_back", "inconclusive"})
STOPPED = {"halted": Reason.HALTED, "paused": Reason.PAUSED, "inconclusive": Reason.CONCLUDED}


@dataclass(frozen=True)
class ExperimentState:
    state: str = "running"
    winner: str | None = None
    rolled_back: tuple[str, ...] = ()
    ramp_step: int = 0
    ramp_started_at: datetime | None = None
    version: int = 0


@dataclass(frozen=True)
class ServingState:
    """A stored state as analysts see it, with when it last changed."""

    state: str
    winner: str | None
    rolled_back: list[str]
    ramp_step: int
    updated_at: datetime


def initial_state(experiment: Experiment) -> ExperimentState:
    return ExperimentState(state="ramping" if experiment.policy.ramp else "running")


def override_for(experiment: Experiment, state: ExperimentState | None) -> ServingOverride:
    """Translate a decision state into how units are served."""
    state = state or initial_state(experiment)
    if state.state == "promoted" and state.winner:
        return ServingOverride(winner=state.winner)
    if state.state in STOPPED:
        return ServingOverride(stopped=STOPPED[state.state])
    if state.state == "rolled_back":
        treatments = frozenset(v.key for v in experiment.variants if v.key != experiment.control)
        return ServingOverride(rolled_back=treatments)
    ramp = experiment.policy.ramp
    cap = None
    if state.state == "ramping" and ramp is not None:
        cap = ramp.steps[min(state.ramp_step, len(ramp.steps) - 1)]
    if cap is None and not state.rolled_back:
        return NO_OVERRIDE
    return ServingOverride(rolled_back=frozenset(state.rolled_back), coverage_cap=cap)


def load_state(conn: Any, experiment: Experiment) -> tuple[ExperimentState, datetime]:
    """The experiment's decision state under its seed (created on first use), and its start."""
    initial = initial_state(experiment)
    conn.execute(
        "INSERT INTO experiment_state (experiment_key, seed, state) VALUES (%s, %s, %s)"
        " ON CONFLICT (experiment_key) DO NOTHING",
        (experiment.key, experiment.seed, initial.state),
    )
    row = conn.execute(
        "SELECT seed, state, winner, rolled_back, ramp_step, ramp_started_at, version, started_at"
        " FROM experiment_state WHERE experiment_key = %s",
        (experiment.key,),
    ).fetchone()
    seed, state, winner, rolled_back, step, ramp_started, version, started = row
    if seed != experiment.seed:  # re-randomized: a fresh start under the new seed
        conn.execute(
            "UPDATE experiment_state SET seed = %s, state = %s, winner = NULL, rolled_back = '{}',"
            " ramp_step = 0, ramp_started_at = now(), started_at = now(), version = version + 1,"
            " updated_at = now() WHERE experiment_key = %s",
            (experiment.seed, initial.state, experiment.key),
        )
        return load_state(conn, experiment)
    return ExperimentState(state, winner, tuple(rolled_back), step, ramp_started, version), started


def save_state(conn: Any, experiment: Experiment, state: ExperimentState) -> None:
    conn.execute(
        "UPDATE experiment_state SET state = %s, winner = %s, rolled_back = %s, ramp_step = %s,"
        " ramp_started_at = COALESCE(%s, ramp_started_at), version = version + 1, updated_at = now()"
        " WHERE experiment_key = %s",
        (state.state, state.winner, list(state.rolled_back), state.ramp_step, state.ramp_started_at,
         experiment.key),
    )  # fmt: skip


def read_states(conn: Any, experiments: Mapping[str, Experiment]) -> dict[str, ExperimentState]:
    """Decision states of these experiments under their current seeds."""
    states = {}
    for key, seed, state, winner, rolled_back, step, started, version in conn.execute(
        "SELECT experiment_key, seed, state, winner, rolled_back, ramp_step, ramp_started_at,"
        " version FROM experiment_state WHERE experiment_key = ANY(%s)",
        (list(experiments),),
    ):
        if experiments[key].seed == seed:
            states[key] = ExperimentState(state, winner, tuple(rolled_back), step, started, version)
    return states


def serving_state(conn: Any, experiment_key: str, seed: str) -> ServingState | None:
    row = conn.execute(
        "SELECT state, winner, rolled_back, ramp_step, updated_at FROM experiment_state"
        " WHERE experiment_key = %s AND seed = %s",
        (experiment_key, seed),
    ).fetchone()
    return ServingState(row[0], row[1], list(row[2]), int(row[3]), row[4]) if row else None
