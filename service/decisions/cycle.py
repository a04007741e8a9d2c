"""Run an analysis and apply its decision in one transaction, under a per-experiment lock.

Everything an analysis changes — the stored run, the decision (audit log), the
new state and the webhook deliveries — commits together or not at all, so a
worker killed mid-task leaves nothing half-applied, and running the task twice
or concurrently is safe (the advisory lock serialises, the second run sees the
first one's state). Human actions go through the same path.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
import uuid
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from service.assignment.state import ExperimentState, initial_state
from service.decisions.inputs import run_analysis
from service.decisions.rules import Decision, active_treatments, decide
from service.experiments.schema import Experiment


def experiment_lock_key(experiment_key: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"abx.decide.{experiment_key}".encode()).digest()[:8], "big", signed=True
    )


def load_state(conn: Any, experiment: Experiment) -> tuple[ExperimentState, datetime]:
    """The experiment's decision state under its seed, created on first use."""
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


def record_decision(
    conn: Any, experiment: Experiment, decision: Decision, before: ExperimentState,
    numbers: dict[str, Any], actor: str, webhooks: list[str],
) -> tuple[str, list[str]]:  # fmt: skip
    """Write the decision (and its state change unless it awaits approval); return ids."""
    decision_id = str(uuid.uuid4())
    status = "awaiting_approval" if decision.awaiting_approval else "applied"
    after = before if decision.awaiting_approval else decision.state_after
    conn.execute(
        "INSERT INTO decisions (decision_id, experiment_key, seed, kind, variant_key, status, actor,"
        " reason, numbers, state_before, state_after, applied_at) VALUES"
        " (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, CASE WHEN %s THEN now() END)",
        (decision_id, experiment.key, experiment.seed, decision.kind, decision.variant, status, actor,
         decision.reason, Jsonb(numbers), before.state, after.state, status == "applied"),
    )  # fmt: skip
    if not decision.awaiting_approval:
        save_state(conn, experiment, decision.state_after)
    payload = {
        "decision_id": decision_id, "experiment": experiment.key, "seed": experiment.seed,
        "kind": decision.kind, "variant": decision.variant, "status": status, "actor": actor,
        "reason": decision.reason, "state_before": before.state, "state_after": after.state,
        "numbers": numbers,
    }  # fmt: skip
    deliveries = []
    for url in webhooks:
        delivery_id = str(uuid.uuid4())
        conn.execute(
            "INSERT INTO webhook_deliveries (delivery_id, decision_id, url, payload)"
            " VALUES (%s, %s, %s, %s)",
            (delivery_id, decision_id, url, Jsonb(payload)),
        )
        deliveries.append(delivery_id)
    return decision_id, deliveries


@dataclasses.dataclass(frozen=True)
class AnalysisOutcome:
    decision: Decision
    decision_id: str | None
    deliveries: list[str]
    numbers: dict[str, Any]


def analyze_and_decide(conn: Any, experiment: Experiment, actor: str = "abx") -> AnalysisOutcome:
    """One analysis run: read, analyse, decide, apply — all in one transaction."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (experiment_lock_key(experiment.key),))
        state, started = load_state(conn, experiment)
        weights = {
            v.key: v.weight for v in experiment.variants
            if v.key == experiment.control or v.key in active_treatments(experiment, state)
        }  # fmt: skip
        analysis, numbers = run_analysis(conn, experiment, weights)
        conn.execute(
            "INSERT INTO analysis_runs (experiment_key, seed, numbers) VALUES (%s, %s, %s)",
            (experiment.key, experiment.seed, Jsonb(numbers)),
        )
        (now,) = conn.execute("SELECT now()").fetchone()
        decision = decide(experiment, state, analysis, started, now)
        _fault_injection_point()
        if decision.kind == "continue":
            return AnalysisOutcome(decision, None, [], numbers)
        pending = conn.execute(
            "SELECT 1 FROM decisions WHERE experiment_key = %s AND seed = %s AND kind = %s"
            " AND status = 'awaiting_approval' AND variant_key IS NOT DISTINCT FROM %s",
            (experiment.key, experiment.seed, decision.kind, decision.variant),
        ).fetchone()
        if pending and decision.awaiting_approval:
            return AnalysisOutcome(dataclasses.replace(decision, kind="continue",
                                   reason="a promotion awaits approval"), None, [], numbers)  # fmt: skip
        decision_id, deliveries = record_decision(
            conn, experiment, decision, state, numbers, actor, experiment.policy.webhooks
        )
        return AnalysisOutcome(decision, decision_id, deliveries, numbers)


def _fault_injection_point() -> None:
    """Tests set ABX_FAULT_SLEEP_IN_DECISION to kill a worker while the transaction is open."""
    delay = os.environ.get("ABX_FAULT_SLEEP_IN_DECISION")
    if delay:
        time.sleep(float(delay))
