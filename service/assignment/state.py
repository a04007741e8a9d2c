"""What an experiment's decision state means for serving. Pure.

``experiment_state`` rows are written by decisions and human actions; absent
a row, an experiment runs as configured (at its first ramp step if it has a
ramp). Terminal states never change again by themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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
