"""Apply a bandit's new weights: an ordinary audited allocation change, in the analysis's transaction.

The weights go through the same path as a YAML edit (``sync.append_allocation``: announced
``allocation_settle_seconds`` ahead, so every serving process switches together and units
already assigned keep their variant), marked ``origin = 'bandit'``; the change is a
``reweight`` decision in the audit log with the posterior probabilities, floors and the
generator's seed behind it, and goes to the webhooks like any decision.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from analysis.sufficient_stats import SufficientStats
from service.assignment.state import ExperimentState
from service.assignment.sync import (
    allocation_history,
    append_allocation,
    last_allocation_age_hours,
)
from service.decisions import bandit
from service.decisions.evaluation import ExperimentAnalysis
from service.decisions.ratios import ratio_stats
from service.decisions.rules import Decision, active_treatments
from service.decisions.store import record_decision
from service.events.sums import exposed_units, metric_stats, ratio_since, ratio_sums
from service.experiments.schema import Experiment
from service.settings import current_settings


def reweight_bandit(
    conn: Any, experiment: Experiment, state: ExperimentState, analysis: ExperimentAnalysis,
    numbers: dict[str, Any], actor: str,
) -> tuple[Decision, str, list[str]] | None:  # fmt: skip
    """Re-weight a running bandit after a look that changed nothing else; None: weights stay.

    ``numbers`` (what the task publishes) gains a ``bandit`` entry either way: the weights
    in force after this look and, when they stay, why.
    """
    # The method fixed at the first analysis (a YAML edit to or from `bandit` changes nothing
    # until the experiment is re-randomized), so weights never move under a pooled analysis.
    if analysis.method != "bandit" or state.state not in ("running", "ramping"):
        return None
    history = allocation_history(conn, experiment)
    current = history[-1][0] if history else {v.key: v.weight for v in experiment.variants}
    wait = experiment.policy.bandit_settings.min_hours_between_moves
    since = last_allocation_age_hours(conn, experiment, "bandit")
    if since is not None and since < wait:
        numbers["bandit"] = {"weights": current, "kept": f"the last move was {since:.2f} h "
                             f"ago; moves are at least {wait:g} h apart"}  # fmt: skip
        return None
    active = [experiment.control, *active_treatments(experiment, state)]
    seed = bandit.rng_seed(experiment, len(history))
    pooled = _pooled_primary(conn, experiment)
    found = bandit.reweigh(experiment, active, pooled, np.random.default_rng(seed))
    if isinstance(found, str):
        numbers["bandit"] = {"weights": current, "kept": found}
        return None
    if not bandit.changed(current, found.weights):
        numbers["bandit"] = {"weights": current, "kept": "no arm would move by 0.01 or more",
                             "probability_best": found.probability_best}  # fmt: skip
        return None
    settle = current_settings().allocation_settle_seconds
    append_allocation(conn, experiment, found.weights, settle, origin="bandit")
    detail = {**dataclasses.asdict(found), "weights_before": current, "rng_seed": seed,
              "allocation": len(history) + 1}  # fmt: skip
    numbers["bandit"] = detail
    moved = ", ".join(f"{k} {current.get(k, 0.0):.3f}->{w:.3f}" for k, w in found.weights.items())
    decision = Decision(
        "reweight", f"Thompson sampling on {experiment.metrics.primary.name}: {moved}", state
    )
    decision_id, deliveries = record_decision(
        conn, experiment, decision, state, {"bandit": detail, "units": analysis.units}, actor,
        experiment.policy.webhooks,
    )  # fmt: skip
    return decision, decision_id, deliveries


def _pooled_primary(conn: Any, experiment: Experiment) -> dict[tuple[str, str], SufficientStats]:
    """Every variant's sums on the primary metric (units without outcomes count as 0).

    A ratio primary's are its linearised sums (``ratios.ratio_stats``: mean the ratio,
    variance of the mean the delta method's), the normal approximation Thompson sampling
    draws from; a variant whose ratio is undefined yet (no denominator) is left out, so the
    weights wait. Until the rollup keeps the ratio's cross products, all are left out.
    """
    name = experiment.metrics.primary.name
    units = exposed_units(conn, experiment.key, experiment.seed)
    primary = experiment.metrics.primary
    if primary.numerator is not None and primary.denominator is not None:
        if ratio_since(conn, experiment.key, experiment.seed, primary.numerator,
                       primary.denominator) is None:  # fmt: skip
            return {}
        sums = ratio_sums(conn, experiment.key, experiment.seed, primary.numerator,
                          primary.denominator, units)  # fmt: skip
        linearized, _, _ = ratio_stats(experiment, {(v, name): s for v, s in sums.items()})
        return {k: v for k, v in linearized.items() if k[1] == name}
    found = {
        (s.variant_key, s.metric): s.stats
        for s in metric_stats(conn, experiment.key, experiment.seed)
        if s.metric == name
    }
    for variant, n in units.items():
        found.setdefault((variant, name), SufficientStats(n, 0.0, 0.0))
    return found
