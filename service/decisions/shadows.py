"""Shadow graduation against PostgreSQL: read the shadows' hours, apply a graduation.

The rule is ``graduation.py`` (pure); this module gives it the shadow report's hours and
writes the allocation a ``graduate`` decision sets, in the caller's transaction (the decision
cycle's, or a human approval's), so the audit log entry and the new weights commit together.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from service.assignment.state import ExperimentState
from service.assignment.sync import allocated_weights, append_allocation
from service.decisions.graduation import (
    GraduationCheck,
    check_graduation,
    graduated_weights,
    graduation_decision,
    graduation_weight,
)
from service.decisions.rules import Decision
from service.experiments.schema import Experiment
from service.inference.records import shadow_hours
from service.settings import current_settings


class GraduationRefused(ValueError):
    """The shadow cannot take traffic now (already served, or the control is too small)."""


def graduation_checks(conn: Any, experiment: Experiment) -> list[GraduationCheck]:
    """Each shadow's hours against ``policy.shadow_graduation``, as of the database's now."""
    rule = experiment.policy.shadow_graduation
    if rule is None:
        return []
    (now,) = conn.execute("SELECT now()").fetchone()
    since = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=rule.hours)
    weight = graduation_weight(experiment)
    return [
        check_graduation(
            rule,
            variant.key,
            weight,
            shadow_hours(conn, experiment.key, variant.key, experiment.control, since),
            now,
        )
        for variant in experiment.variants
        if variant.shadow is not None
    ]


def decide_graduation(
    experiment: Experiment, state: ExperimentState, checks: list[GraduationCheck]
) -> Decision | None:
    """The ``graduate`` decision the checks call for, given the weights the experiment has."""
    weights = {v.key: v.weight for v in experiment.variants}
    return graduation_decision(experiment, state, checks, weights)


def apply_graduation(
    conn: Any, experiment: Experiment, variant: str, decision_id: str
) -> dict[str, float]:
    """Write the allocation that starts ``variant`` as a treatment; return its weights."""
    after = graduated_weights(
        allocated_weights(conn, experiment),
        experiment.control,
        variant,
        graduation_weight(experiment),
    )
    if after is None:
        raise GraduationRefused(
            f"{variant} already takes traffic, or the control's weight is too small to give it"
        )
    settle = current_settings().allocation_settle_seconds
    append_allocation(conn, experiment, after, settle, "graduation", decision_id)
    return after
