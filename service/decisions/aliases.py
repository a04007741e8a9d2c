"""Promotion that reaches the model registry: move an alias to the winner's version, and back.

Opt-in per experiment (``policy.registry_alias``, e.g. ``champion``). When a decision
starts a promotion (an automatic promote, an approval, a human promote) and the winner's
model comes from an MLflow registry, the alias is pointed at the winner's version; when a
decision ends that promotion (a rollback), it is pointed back at the version it named
before (or removed, if it named none). What moved, from which version to which, goes into
the decision's audit entry (``numbers.registry``), and so does a move that failed: the
promotion itself stands either way (abx serves the winner; the registry is told as well
as it can be, and ``abx_model_registry_alias_moves{result="failed"}`` says when it could not).

The move is made inside the decision's transaction, under the experiment's lock, so two
decisions never move the alias out of order.
"""

from __future__ import annotations

import logging
from typing import Any

from service.assignment.state import ExperimentState
from service.decisions.rules import Decision
from service.decisions.store import last_registry_move
from service.experiments.model_registry import ModelRegistry, RegistryError, parse_reference
from service.experiments.schema import Experiment
from service.observability import metrics

log = logging.getLogger(__name__)


def _promoted(state: ExperimentState) -> str | None:
    return state.winner if state.state == "promoted" else None


def move_registry_alias(
    conn: Any,
    experiment: Experiment,
    before: ExperimentState,
    decision: Decision,
    registry: ModelRegistry | None,
) -> dict[str, Any] | None:
    """Move the experiment's alias if the decision starts or ends a promotion; what moved."""
    alias = experiment.policy.registry_alias
    if alias is None or decision.awaiting_approval:
        return None
    was, now = _promoted(before), _promoted(decision.state_after)
    if was == now:
        return None
    if now is not None:
        moved = _promote(experiment, now, alias, registry)
    else:
        moved = _revert(conn, experiment, alias, registry)
    if moved is not None:
        result = "failed" if "error" in moved else "moved"
        metrics.REGISTRY_ALIAS_MOVES.labels(result).inc()
        log.log(
            logging.ERROR if result == "failed" else logging.INFO,
            "%s: registry alias %s: %s",
            experiment.key,
            alias,
            moved,
        )
    return moved


def _promote(
    experiment: Experiment, winner: str, alias: str, registry: ModelRegistry | None
) -> dict[str, Any] | None:
    variant = next(v for v in experiment.variants if v.key == winner)
    ref = variant.model
    if ref is None or ref.registry is None:
        return None  # the winner's model is a file or an endpoint: nothing to tell a registry
    reference = parse_reference(ref.registry)
    moved: dict[str, Any] = {"model": reference.name, "alias": alias, "variant": winner,
                             "source": ref.registry}  # fmt: skip
    try:
        if registry is None:
            raise RegistryError("no registry configured (ABX_MLFLOW_TRACKING_URI)")
        # The version this process served; a process that loaded no models asks the registry.
        version = ref.resolved.version if ref.resolved is not None else registry.lookup(reference)
        moved["version"] = version
        if ref.resolved is not None:
            moved["sha256"] = ref.sha256  # the file this process served for that version
        moved["previous_version"] = registry.alias_version(reference.name, alias)
        registry.move_alias(reference.name, alias, version)
    except RegistryError as error:
        moved["error"] = str(error)
    return moved


def _revert(
    conn: Any, experiment: Experiment, alias: str, registry: ModelRegistry | None
) -> dict[str, Any] | None:
    """Point the alias back where the promotion being ended found it."""
    last = last_registry_move(conn, experiment)
    if last is None:
        return None
    decision_id, promoted = last
    if "error" in promoted or "version" not in promoted or promoted.get("reverts"):
        return None  # the promotion never moved the alias, or it was already moved back
    name, previous = promoted["model"], promoted.get("previous_version")
    moved: dict[str, Any] = {"model": name, "alias": alias, "version": previous,
                             "previous_version": promoted["version"], "reverts": decision_id}  # fmt: skip
    try:
        if registry is None:
            raise RegistryError("no registry configured (ABX_MLFLOW_TRACKING_URI)")
        current = registry.alias_version(name, alias)
        if current != promoted["version"]:
            raise RegistryError(
                f"{name}@{alias} names version {current} now, not the {promoted['version']} "
                "the promotion set: someone moved it since; left as it is"
            )
        registry.move_alias(name, alias, previous)
    except RegistryError as error:
        moved["error"] = str(error)
    return moved
