"""The decision timeline: the audit log (``decisions``) and the state it left the experiment in."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Decision:
    decision_id: str
    seed: str
    kind: str
    variant: str | None
    status: str
    actor: str
    reason: str
    numbers: dict[str, Any]
    state_before: str | None
    state_after: str | None
    created_at: datetime
    applied_at: datetime | None


@dataclass(frozen=True)
class ServingState:
    state: str
    winner: str | None
    rolled_back: list[str]
    ramp_step: int
    updated_at: datetime


def decisions(conn: Any, experiment_key: str) -> list[Decision]:
    """Every decision on the experiment, oldest first (all seeds: re-randomizing keeps history)."""
    rows = conn.execute(
        "SELECT decision_id::text, seed, kind, variant_key, status, actor, reason, numbers,"
        " state_before, state_after, created_at, applied_at FROM decisions"
        " WHERE experiment_key = %s ORDER BY created_at, decision_id",
        (experiment_key,),
    ).fetchall()
    return [Decision(*row) for row in rows]


def serving_state(conn: Any, experiment_key: str, seed: str) -> ServingState | None:
    row = conn.execute(
        "SELECT state, winner, rolled_back, ramp_step, updated_at FROM experiment_state"
        " WHERE experiment_key = %s AND seed = %s",
        (experiment_key, seed),
    ).fetchone()
    return ServingState(row[0], row[1], list(row[2]), int(row[3]), row[4]) if row else None


def last_analysis_at(conn: Any, experiment_key: str, seed: str) -> datetime | None:
    """When the decision workers last analysed the experiment."""
    row = conn.execute(
        "SELECT max(created_at) FROM analysis_runs WHERE experiment_key = %s AND seed = %s",
        (experiment_key, seed),
    ).fetchone()
    return row[0] if row else None


def scalar_numbers(numbers: dict[str, Any]) -> list[tuple[str, Any]]:
    """The top-level numbers of a decision that fit in a table cell (the rest stay in the JSON)."""
    return [
        (name, value)
        for name, value in numbers.items()
        if isinstance(value, str | int | float | bool) or value is None
    ]
