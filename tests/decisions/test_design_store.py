"""The design is stored at the first analysis and never moves; each look carries the last one's state."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import psycopg
import pytest
import yaml

from service.decisions.inputs import run_analysis
from service.decisions.sequential import design_for
from service.decisions.store import fix_design, record_analysis_run, stored_design
from service.demo.seed import FIVE_VARIANTS_YAML, seed_rollups
from service.experiments.schema import Experiment

EXPERIMENT = Experiment.model_validate(yaml.safe_load(FIVE_VARIANTS_YAML))
WEIGHTS = {v.key: v.weight for v in EXPERIMENT.variants}


@pytest.fixture
def conn(db: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(db, autocommit=True) as connection:
        yield connection


def edited(**policy: object) -> Experiment:
    data = EXPERIMENT.model_dump(by_alias=True)
    data["policy"] = {**data["policy"], **policy}
    return Experiment.model_validate(data)


def test_the_first_analysis_fixes_the_design_and_a_policy_edit_does_not_move_it(
    conn: psycopg.Connection,
) -> None:
    assert stored_design(conn, EXPERIMENT) is None
    first = fix_design(conn, EXPERIMENT)
    assert first == design_for(EXPERIMENT) and first.treatments == 4
    later = edited(planned_units=5_000, alpha=0.1, method="confidence_sequence")
    assert fix_design(conn, later) == first
    assert stored_design(conn, later) == first
    resalted = Experiment.model_validate({**later.model_dump(by_alias=True), "version": 2})
    assert fix_design(conn, resalted) == design_for(resalted)  # a new seed is a new experiment


def test_each_look_carries_the_previous_one_and_every_comparison_is_computed(
    conn: psycopg.Connection,
) -> None:
    seed_rollups(conn, EXPERIMENT, 10, 3_000, date(2024, 3, 30))
    for look in (1, 2, 3):
        analysis, numbers = run_analysis(conn, EXPERIMENT, WEIGHTS, through=date(2024, 3, 30))
        record_analysis_run(conn, EXPERIMENT, numbers)
        assert analysis.errors == [] and numbers["errors"] == []
        carried = numbers["carried"]["comparisons"]
        assert {state["looks"] for state in carried.values()} == {look}
        assert numbers["design"] == design_for(EXPERIMENT).to_json()
    # What-if reads (dashboards, API) write nothing and start from the last run's state.
    what_if, _ = run_analysis(conn, EXPERIMENT, WEIGHTS, use_history=False)
    assert [c.p_value for c in what_if.primary] == [c.p_value for c in analysis.primary]
