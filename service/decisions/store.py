"""The audit log (``decisions``), the stored analysis runs (``analysis_runs``) and each
experiment's test design (``decision_designs``): their SQL.

Writers are the decision cycle and human actions, in one transaction each under the
experiment's advisory lock; readers are the API, the dashboards and the CLI.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg.types.json import Jsonb

from service.assignment.state import ExperimentState, save_state
from service.decisions.rules import Decision
from service.decisions.sequential import Design, design_for
from service.decisions.webhooks import queue_deliveries
from service.experiments.schema import Experiment


@dataclass(frozen=True)
class DecisionRecord:
    """One entry of the audit log."""

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


def experiment_lock_key(experiment_key: str) -> int:
    return int.from_bytes(
        hashlib.sha256(f"abx.decide.{experiment_key}".encode()).digest()[:8], "big", signed=True
    )


def lock_experiment(conn: Any, experiment_key: str) -> None:
    """Serialise decisions on one experiment until the transaction ends."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (experiment_lock_key(experiment_key),))


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
    return decision_id, queue_deliveries(conn, decision_id, webhooks, payload)


def last_registry_move(conn: Any, experiment: Experiment) -> tuple[str, dict[str, Any]] | None:
    """The newest applied decision that moved (or tried to move) a registry alias, and what."""
    row = conn.execute(
        "SELECT decision_id::text, numbers->'registry' FROM decisions WHERE experiment_key = %s"
        " AND seed = %s AND status = 'applied' AND numbers ? 'registry'"
        " ORDER BY created_at DESC, decision_id DESC LIMIT 1",
        (experiment.key, experiment.seed),
    ).fetchone()
    return (str(row[0]), dict(row[1])) if row else None


def awaits_approval(conn: Any, experiment: Experiment, decision: Decision) -> bool:
    """Whether the same decision already waits for a human's approval."""
    row = conn.execute(
        "SELECT 1 FROM decisions WHERE experiment_key = %s AND seed = %s AND kind = %s"
        " AND status = 'awaiting_approval' AND variant_key IS NOT DISTINCT FROM %s",
        (experiment.key, experiment.seed, decision.kind, decision.variant),
    ).fetchone()
    return row is not None


def latest_awaiting_approval(conn: Any, experiment: Experiment) -> tuple[str, str | None] | None:
    """The newest decision waiting for approval: its id and variant."""
    row = conn.execute(
        "SELECT decision_id, variant_key FROM decisions WHERE experiment_key = %s AND seed = %s"
        " AND status = 'awaiting_approval' ORDER BY created_at DESC LIMIT 1",
        (experiment.key, experiment.seed),
    ).fetchone()
    return (str(row[0]), row[1]) if row else None


def awaiting_kind(conn: Any, decision_id: str) -> str | None:
    """The kind of a recorded decision (``promote`` or ``graduate`` for one awaiting approval)."""
    row = conn.execute(
        "SELECT kind FROM decisions WHERE decision_id = %s", (decision_id,)
    ).fetchone()
    return str(row[0]) if row else None


def mark_applied(conn: Any, decision_id: str) -> None:
    conn.execute(
        "UPDATE decisions SET status = 'applied', applied_at = now() WHERE decision_id = %s",
        (decision_id,),
    )


def decision_log(conn: Any, experiment_key: str) -> list[DecisionRecord]:
    """Every decision on the experiment, oldest first (all seeds: re-randomizing keeps history)."""
    rows = conn.execute(
        "SELECT decision_id::text, seed, kind, variant_key, status, actor, reason, numbers,"
        " state_before, state_after, created_at, applied_at FROM decisions"
        " WHERE experiment_key = %s ORDER BY created_at, decision_id",
        (experiment_key,),
    ).fetchall()
    return [DecisionRecord(*row) for row in rows]


def record_analysis_run(conn: Any, experiment: Experiment, numbers: dict[str, Any]) -> datetime:
    """Store one analysis' numbers; return the transaction's time (the decision's clock)."""
    conn.execute(
        "INSERT INTO analysis_runs (experiment_key, seed, numbers) VALUES (%s, %s, %s)",
        (experiment.key, experiment.seed, Jsonb(numbers)),
    )
    (now,) = conn.execute("SELECT now()").fetchone()
    return now  # type: ignore[no-any-return]


def last_run_numbers(conn: Any, experiment: Experiment) -> dict[str, Any]:
    row = conn.execute(
        "SELECT numbers FROM analysis_runs WHERE experiment_key = %s AND seed = %s"
        " ORDER BY run_id DESC LIMIT 1",
        (experiment.key, experiment.seed),
    ).fetchone()
    return dict(row[0]) if row else {}


def awaiting_approval_counts(conn: Any, experiments: list[Experiment]) -> dict[str, int]:
    """Per experiment (its current seed), how many decisions wait for a human's approve."""
    rows = conn.execute(
        "SELECT experiment_key, count(*) FROM decisions"
        " JOIN unnest(%s::text[], %s::text[]) AS e(key, seed)"
        " ON experiment_key = e.key AND decisions.seed = e.seed"
        " WHERE status = 'awaiting_approval' GROUP BY experiment_key",
        ([e.key for e in experiments], [e.seed for e in experiments]),
    ).fetchall()
    counts = {e.key: 0 for e in experiments}
    counts.update({key: int(n) for key, n in rows})
    return counts


def last_analysis_at(conn: Any, experiment_key: str, seed: str) -> datetime | None:
    """When the decision workers last analysed the experiment."""
    row = conn.execute(
        "SELECT max(created_at) FROM analysis_runs WHERE experiment_key = %s AND seed = %s",
        (experiment_key, seed),
    ).fetchone()
    return row[0] if row else None


def already_alerted(conn: Any, experiment: Experiment, decision: Decision) -> bool:
    """Whether the latest decision on the experiment is this same alert (announce it once).

    The same guardrail on the same variant is one episode until another decision is
    recorded in between; the guardrail's gauge (abx_guardrail_breached) follows every run.
    """
    row = conn.execute(
        "SELECT kind, variant_key, reason FROM decisions WHERE experiment_key = %s"
        " AND seed = %s ORDER BY created_at DESC LIMIT 1",
        (experiment.key, experiment.seed),
    ).fetchone()
    if row is None:
        return False
    kind, variant, reason = row
    same_guardrail = reason.split(" ", 1)[0] == decision.reason.split(" ", 1)[0]
    return bool(kind == "alert" and variant == decision.variant and same_guardrail)


def fix_design(conn: Any, experiment: Experiment) -> Design:
    """The experiment's stored design; the first analysis under a seed stores it."""
    conn.execute(
        "INSERT INTO decision_designs (experiment_key, seed, design) VALUES (%s, %s, %s)"
        " ON CONFLICT (experiment_key, seed) DO NOTHING",
        (experiment.key, experiment.seed, Jsonb(design_for(experiment).to_json())),
    )
    found = stored_design(conn, experiment)
    return found if found is not None else design_for(experiment)


def stored_design(conn: Any, experiment: Experiment) -> Design | None:
    """The design fixed at the experiment's first analysis, None before it."""
    row = conn.execute(
        "SELECT design FROM decision_designs WHERE experiment_key = %s AND seed = %s",
        (experiment.key, experiment.seed),
    ).fetchone()
    return Design.from_json(dict(row[0])) if row else None
