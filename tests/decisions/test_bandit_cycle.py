"""A bandit in the real decision transaction: re-weighting, stickiness of history, SRM by period."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest

from service.assignment.sync import allocation_history, sync_experiments
from service.decisions.cycle import analyze_and_decide
from service.decisions.store import decision_log
from service.events.periods import BanditPeriods
from service.events.ratios import configured_pairs_from
from service.events.rollup import roll_up_once, windows_from
from service.experiments.schema import Experiment
from service.experiments.validation import load_experiments
from tests.conftest import Api, ServerFactory, wait_for
from tests.experiment_files import minimal_experiment

BANDIT = Experiment.model_validate(
    minimal_experiment(
        "bandit",
        policy={
            "method": "bandit",
            "min_units": 1_000_000,  # no promotion here: only the bandit's own moves
            "min_runtime_hours": 0,
            "bandit": {"control_floor": 0.2, "arm_floor": 0.1, "min_units": 50, "draws": 2000},
        },
    )
)


def _insert(
    conn: psycopg.Connection[Any], exposures: list[tuple[Any, ...]], outcomes: list[tuple[Any, ...]]
) -> None:
    """Write the exposures and outcome events as the writers would."""
    with conn.cursor() as cursor:
        cursor.executemany(
            "INSERT INTO exposures (experiment_key, seed, unit_id, variant_key, first_exposed_at)"
            " VALUES (%s, %s, %s, %s, %s)",
            exposures,
        )
        cursor.executemany(
            "INSERT INTO outcomes (experiment_key, seed, event_id, unit_id, metric, aggregation,"
            " value, occurred_at, received_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            outcomes,
        )


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db, autocommit=True) as connection:
        yield connection


def expose(
    conn: psycopg.Connection, prefix: str, at: datetime, counts: dict[str, int],
    rates: dict[str, float],
) -> None:  # fmt: skip
    """Expose units at ``at`` and send a conversion for the first ``rate`` share of each arm."""
    exposures, outcomes = [], []
    for variant, n in counts.items():
        for i in range(n):
            unit = f"{prefix}-{variant}-{i}"
            exposures.append((BANDIT.key, BANDIT.seed, unit, variant, at))
            if i < round(n * rates[variant]):
                outcomes.append((BANDIT.key, BANDIT.seed, f"e-{unit}", unit, "conversion", "max",
                                 1.0, at + timedelta(minutes=1), at + timedelta(minutes=1)))  # fmt: skip
    _insert(conn, exposures, outcomes)
    for _ in range(10):
        done = roll_up_once(conn, windows_from({BANDIT.key: BANDIT}), timedelta(0))
        if done == (0, 0):
            break


def test_a_bandit_reweights_through_the_allocation_history_and_audits_it(
    conn: psycopg.Connection,
) -> None:
    sync_experiments(conn, [(BANDIT, "bandit.yaml")], settle_seconds=0.0)
    (now,) = conn.execute("SELECT now()").fetchone()
    expose(conn, "p1", now - timedelta(hours=1), {"a": 300, "b": 300}, {"a": 0.1, "b": 0.3})

    outcome = analyze_and_decide(conn, BANDIT)

    assert outcome.decision.kind == "reweight"
    history = allocation_history(conn, BANDIT)
    assert len(history) == 2
    weights = history[-1][0]
    assert weights["b"] > 0.5 and weights["a"] >= 0.2 and abs(sum(weights.values()) - 1) < 1e-9
    entry = decision_log(conn, BANDIT.key)[-1]
    assert entry.kind == "reweight" and entry.decision_id == outcome.decision_id
    assert entry.numbers["bandit"]["weights"] == weights
    assert entry.numbers["bandit"]["weights_before"] == {"a": 0.5, "b": 0.5}
    assert entry.numbers["bandit"]["probability_best"]["b"] > 0.9
    # A restart re-syncs the YAML: the bandit's weights stay (the YAML did not change).
    sync_experiments(conn, [(BANDIT, "bandit.yaml")], settle_seconds=0.0)
    assert allocation_history(conn, BANDIT)[-1][0] == weights

    # Period 2: units after the switch follow the new weights; the SRM test holds, and the
    # comparison is stratified over both periods.
    settled = history[-1][1] + timedelta(minutes=5)
    n = 1000
    split = {"a": round(n * weights["a"]), "b": n - round(n * weights["a"])}
    expose(conn, "p2", settled, split, {"a": 0.1, "b": 0.3})
    second = analyze_and_decide(conn, BANDIT)
    srm = second.numbers["srm"]
    assert srm is not None and not srm["flagged"]
    primary = second.numbers["primary"][0]
    assert primary["method"] == "bandit" and primary["treatment_units"] == 300 + split["b"]
    assert primary["ci_low"] < 0.2 < primary["ci_high"]
    # Moves are at least min_hours_between_moves (1 h by default) apart: the second look kept
    # the weights although the posterior moved, and said why.
    assert second.decision.kind != "reweight"
    assert second.numbers["bandit"]["weights"] == weights
    assert "moves are at least 1 h apart" in second.numbers["bandit"]["kept"]
    assert len(allocation_history(conn, BANDIT)) == 2


def test_srm_is_checked_against_the_weights_in_force_in_each_period(
    conn: psycopg.Connection,
) -> None:
    sync_experiments(conn, [(BANDIT, "bandit.yaml")], settle_seconds=0.0)
    (now,) = conn.execute("SELECT now()").fetchone()
    expose(conn, "p1", now - timedelta(hours=1), {"a": 300, "b": 300}, {"a": 0.1, "b": 0.3})
    assert analyze_and_decide(conn, BANDIT).decision.kind == "reweight"
    switched_at = allocation_history(conn, BANDIT)[-1][1]
    # After the switch the units still arrive 50/50: right for the old weights, not the new.
    expose(conn, "p2", switched_at + timedelta(minutes=5), {"a": 1500, "b": 1500},
           {"a": 0.1, "b": 0.3})  # fmt: skip
    outcome = analyze_and_decide(conn, BANDIT)
    assert outcome.decision.kind == "halt"
    assert "sample ratio mismatch" in outcome.decision.reason


def assign_batch(api: Api, units: list[str]) -> dict[str, str]:
    """Each unit's variant of offer_banner, from /v1/assign/batch."""
    items = [{"experiment": "offer_banner", "unit": u} for u in units]
    answer = api.post("/v1/assign/batch", {"items": items})
    assert answer.status_code == 200, answer.text
    return {u: a["variant"] for u, a in zip(units, answer.json()["assignments"], strict=True)}


def test_a_bandit_end_to_end_keeps_units_sticky_and_shows_on_every_page(
    server_factory: ServerFactory, db: str, experiments_dir: Path, conn: psycopg.Connection
) -> None:
    for other in experiments_dir.glob("*.yaml"):  # the bandit alone: no models to load
        if other.name != "offer_banner.yaml":
            other.unlink()
    server = server_factory(db, experiments_dir, ABX_ALLOCATION_SETTLE_SECONDS="0.5")
    api = Api(server.base_url, key=None)
    (loaded,) = [i.experiment for i in load_experiments([experiments_dir]).experiments
                 if i.experiment.key == "offer_banner"]  # fmt: skip
    units = [f"user-{i}" for i in range(900)]
    first = assign_batch(api, units)
    clicks = {"classic": 0.05, "countdown": 0.3, "social": 0.05}
    events = [{"event_id": f"{u}-click", "experiment": "offer_banner", "unit": u,
               "metric": "banner_click", "value": 1}
              for i, u in enumerate(units) if (i % 100) / 100 < clicks[first[u]]]  # fmt: skip

    def exposed() -> bool:
        (stored,) = conn.execute(
            "SELECT count(*) FROM exposures WHERE experiment_key = 'offer_banner'"
        ).fetchone()
        return bool(stored == len(units))

    assert wait_for(exposed, timeout=30)  # else an event could be judged unexposed
    assert api.post("/v1/events", {"events": events}).status_code == 202

    def rolled_up() -> bool:
        roll_up_once(conn, windows_from({loaded.key: loaded}), timedelta(minutes=5))
        (attributed,) = conn.execute(
            "SELECT count(*) FROM outcomes WHERE experiment_key = 'offer_banner'"
            " AND status = 'attributed'"
        ).fetchone()
        return bool(attributed == len(events))

    assert wait_for(rolled_up, timeout=30)
    outcome = analyze_and_decide(conn, loaded)
    assert outcome.decision.kind == "reweight", outcome.decision
    weights = allocation_history(conn, loaded)[-1][0]
    assert weights["countdown"] > 0.5 and weights["classic"] >= 0.2

    def switched() -> bool:
        """Every worker serves the new weights: ten answers in a row, whichever worker gives
        them (each polls the state on its own; until it has, new units get the old weights)."""
        for _ in range(10):
            summary = api.get("/v1/experiments/offer_banner").json()
            served = {v["key"]: v["weight"] for v in summary["variants"]}
            if summary["allocation_pending"] or served != weights:
                return False
        return True

    assert wait_for(switched, timeout=30)
    # Units already assigned keep their banner; new ones follow the new weights.
    assert assign_batch(api, units) == first
    fresh = list(assign_batch(api, [f"fresh-{i}" for i in range(600)]).values())
    share = fresh.count("countdown") / len(fresh)
    margin = 4 * (weights["countdown"] * (1 - weights["countdown"]) / len(fresh)) ** 0.5
    assert abs(share - weights["countdown"]) < margin
    # The audit log, the analysis API and the dashboard show the bandit.
    audit = api.get("/v1/experiments/offer_banner/decisions").json()["decisions"]
    assert [d["kind"] for d in audit] == ["reweight"]
    analysis = api.get("/v1/experiments/offer_banner/analysis")
    assert analysis.status_code == 200 and analysis.json()["method"] == "bandit"
    assert analysis.json()["weights"] == weights
    page = api.get("/dashboards/offer_banner")
    assert page.status_code == 200 and "reweight" in page.text, server.log()[-3000:]


RATIO_BANDIT = Experiment.model_validate(
    minimal_experiment(
        "ratio_bandit",
        metrics={
            "primary": {
                "name": "revenue_per_session",
                "type": "ratio",
                "numerator": "revenue",
                "denominator": "sessions",
            },
            "secondary": [
                {"name": "revenue", "type": "continuous"},
                {"name": "sessions", "type": "count"},
            ],
        },
        policy=BANDIT.policy.model_dump(by_alias=True, exclude_none=True),
    )
)


def test_a_ratio_bandit_reweights_on_its_ratio_and_compares_it_by_period(
    conn: psycopg.Connection,
) -> None:
    """Through the rollup's per-period tables (kept bandit, kept ratio) and the real cycle."""
    experiment = RATIO_BANDIT
    kept = BanditPeriods(lambda: [(experiment.key, experiment.seed)], timedelta(seconds=20))
    pairs = configured_pairs_from({experiment.key: experiment})
    sync_experiments(conn, [(experiment, "ratio_bandit.yaml")], settle_seconds=0.0)
    (now,) = conn.execute("SELECT now()").fetchone()
    at = now - timedelta(hours=1)
    rng = np.random.default_rng(5)
    exposures, outcomes = [], []
    for variant, per_session in (("a", 2.0), ("b", 4.0)):
        for i in range(300):
            unit = f"{variant}-{i}"
            exposures.append((experiment.key, experiment.seed, unit, variant, at))
            for s in range(1 + int(rng.poisson(1.0))):
                when = at + timedelta(minutes=1 + s)
                outcomes += [
                    (experiment.key, experiment.seed, f"s-{unit}-{s}", unit, "sessions", "sum",
                     1.0, when, when),
                    (experiment.key, experiment.seed, f"r-{unit}-{s}", unit, "revenue", "sum",
                     float(rng.gamma(2.0, per_session / 2.0)), when, when),
                ]  # fmt: skip
    _insert(conn, exposures, outcomes)
    windows = windows_from({experiment.key: experiment})
    while roll_up_once(conn, windows, timedelta(0), ratio_pairs=pairs, bandits=kept) != (0, 0):
        pass

    outcome = analyze_and_decide(conn, experiment)

    assert outcome.decision.kind == "reweight", outcome.decision
    weights = allocation_history(conn, experiment)[-1][0]
    assert weights["b"] > 0.5 and weights["a"] >= 0.2
    assert outcome.numbers["bandit"]["posterior"] == "normal, flat prior, plug-in variance"
    [primary] = outcome.numbers["primary"]
    assert primary["method"] == "bandit" and primary["metric"] == "revenue_per_session"
    assert primary["control_units"] == 300 and primary["treatment_units"] == 300
    # One period so far: the stratified ratio is the pooled one, 2 vs 4 per session.
    assert primary["control_mean"] == pytest.approx(2.0, rel=0.2)
    assert primary["treatment_mean"] == pytest.approx(4.0, rel=0.2)
    assert primary["ci_low"] > 0
