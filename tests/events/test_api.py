"""POST /v1/events on a real server: validation, idempotency, attribution, sufficient statistics."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from click.testing import CliRunner

from service.cli.main import main
from tests.api.test_api import assert_problem
from tests.conftest import Api, ServerFactory, wait_for

FAST = {"ABX_ROLLUP_INTERVAL_SECONDS": "0.1"}


@pytest.fixture
def events_api(server_factory: ServerFactory, db: str, experiments_dir: Path) -> Api:
    return Api(server_factory(db, experiments_dir, **FAST).base_url, key=None)


def click_event(event_id: str, unit: str, value: Any = 1, **extra: Any) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "experiment": "search_embeddings",
        "unit": unit,
        "metric": "search_click",
        "value": value,
        **extra,
    }


def stored_event_ids(db: str) -> list[str]:
    with psycopg.connect(db) as conn:
        return [row[0] for row in conn.execute("SELECT event_id FROM outcomes ORDER BY event_id")]


def metrics(api: Api) -> dict[str, Any]:
    """The metrics read, retried on 503 (every pooled connection busy on a loaded machine)."""
    for _ in range(10):
        response = api.get("/v1/experiments/search_embeddings/metrics")
        if response.status_code != 503:
            break
        time.sleep(0.5)
    assert response.status_code == 200, response.text  # a failure names its cause
    body: dict[str, Any] = response.json()
    return body


def exposed_units(api: Api, count: int) -> dict[str, str]:
    units = {}
    for i in range(count * 3):
        body = api.assign("search_embeddings", f"user-{i}")
        if body["in_experiment"]:
            units[f"user-{i}"] = body["variant"]
        if len(units) == count:
            break
    return units


def test_accepts_then_counts_retries_as_duplicates(events_api: Api, db: str) -> None:
    batch = {
        "events": [
            click_event("e1", "u1"),
            click_event("e2", "u2", True),
            click_event("e2", "u2", True),
        ]
    }
    first = events_api.post("/v1/events", batch)
    assert first.status_code == 202
    assert first.json() == {"accepted": 2, "duplicates": 1, "durable": "committed"}
    again = events_api.post("/v1/events", batch)
    assert again.json() == {"accepted": 0, "duplicates": 3, "durable": "committed"}
    assert stored_event_ids(db) == ["e1", "e2"]


def test_ndjson_bodies(events_api: Api, db: str) -> None:
    lines = "\n".join(json.dumps(click_event(f"n{i}", f"u{i}")) for i in range(50)) + "\n"
    response = events_api.session.post(
        events_api.base_url + "/v1/events",
        data=lines,
        headers={"Content-Type": "application/x-ndjson"},
        timeout=10,
    )
    assert response.status_code == 202 and response.json()["accepted"] == 50
    assert len(stored_event_ids(db)) == 50


@pytest.mark.parametrize(
    ("event", "field", "message"),
    [
        (
            click_event("x", "u", metric="nope"),
            "events[1].metric",
            "has no metric 'nope' (it has: search_click, model_fallback_rate)",
        ),
        (
            {**click_event("x", "u"), "experiment": "ghost"},
            "events[1].experiment",
            "unknown experiment 'ghost'",
        ),
        (click_event("x", "u", 2), "events[1].value", "a binary metric takes 0, 1, true or false"),
        (click_event("x", "u", "1"), "events[1].value", "must be a number"),
        (
            {k: v for k, v in click_event("x", "u").items() if k != "event_id"},
            "events[1].event_id",
            "Field required",
        ),
        (
            click_event("x", "u", timestamp=(datetime.now(UTC) + timedelta(hours=1)).isoformat()),
            "events[1].timestamp",
            "in the future",
        ),
        (click_event("x", "u", timestamp="2026-01-01T00:00:00"), "events[1].timestamp", "timezone"),
        (click_event("x", "u", colour="red"), "events[1].colour", "Extra inputs are not permitted"),
        (
            click_event("x", "u", properties={"blob": "x" * 5000}),
            "events[1].properties",
            "larger than",
        ),
    ],
)
def test_a_bad_event_rejects_the_whole_request(
    events_api: Api, db: str, event: dict[str, Any], field: str, message: str
) -> None:
    body = assert_problem(
        events_api.post("/v1/events", {"events": [click_event("ok", "u0"), event]}),
        422,
        "nothing was stored",
    )
    assert any(
        e["index"] == 1 and e["field"] == field and message in e["message"] for e in body["errors"]
    ), body["errors"]
    assert stored_event_ids(db) == []


def test_count_metrics_take_non_negative_integers(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    api = Api(server_factory(db, experiments_dir).base_url, key=None)
    base = {"experiment": "search_reranker", "unit": "u", "metric": "clicks_per_search"}
    body = assert_problem(
        api.post(
            "/v1/events",
            {
                "events": [
                    {**base, "event_id": "a", "value": 1.5},
                    {**base, "event_id": "b", "value": -1},
                    {**base, "event_id": "c", "value": 3},
                ]
            },
        ),
        422,
        "2 problem(s) in 2 event(s)",
    )
    assert [e["index"] for e in body["errors"]] == [0, 1]


def test_transport_problems(
    events_api: Api, server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    url = events_api.base_url + "/v1/events"
    session = events_api.session
    assert_problem(
        session.post(url, data="{}", headers={"Content-Type": "text/plain"}, timeout=5),
        415,
        "application/x-ndjson",
    )
    assert_problem(
        session.post(
            url, data='{"events": [', headers={"Content-Type": "application/json"}, timeout=5
        ),
        400,
        "not valid JSON",
    )
    nan = '{"events": [{"event_id": "a", "experiment": "search_embeddings", "unit": "u", "metric": "search_click", "value": NaN}]}'
    assert_problem(
        session.post(url, data=nan, headers={"Content-Type": "application/json"}, timeout=5),
        400,
        "NaN",
    )
    assert_problem(events_api.post("/v1/events", {"events": []}), 422, "no events")
    assert_problem(events_api.post("/v1/events", {"event": []}), 422, '{"events": [...]}')
    assert_problem(events_api.post("/v1/events", [1]), 422, '{"events": [...]}')
    small = Api(
        server_factory(db, experiments_dir, ABX_MAX_EVENTS_PER_REQUEST="3").base_url, key=None
    )
    assert_problem(
        small.post("/v1/events", {"events": [click_event(f"e{i}", "u") for i in range(4)]}),
        413,
        "at most 3 events",
    )


def test_outcomes_are_attributed_to_exposures_and_rolled_up(events_api: Api, db: str) -> None:
    units = exposed_units(events_api, 40)
    first_unit, second_unit = list(units)[:2]
    rng = np.random.default_rng(7)
    clicks = {unit: int(rng.integers(0, 2)) for unit in units}
    now = datetime.now(UTC)
    events = [click_event(f"c-{unit}", unit, value) for unit, value in clicks.items()]
    events += [
        click_event(f"dup-{unit}", unit, 1) for unit in list(units)[:5] if clicks[unit]
    ]  # binary: max
    events += [click_event("pre-1", first_unit, 1, timestamp=(now - timedelta(days=1)).isoformat())]
    events += [
        click_event("late-1", second_unit, 1, timestamp=(now + timedelta(minutes=1)).isoformat())
    ]
    events += [click_event("stranger", "never-exposed", 1)]
    assert events_api.post("/v1/events", {"events": events}).status_code == 202

    def rolled_up() -> bool:
        counts = metrics(events_api)["outcome_counts"]
        return counts.get("attributed", 0) == len(events) - 2 and counts.get("pre_period") == 1

    assert wait_for(rolled_up, timeout=10), metrics(events_api)
    body = metrics(events_api)
    assert body["outcome_counts"]["pending"] == 1  # the stranger may still be exposed later
    by_variant = {m["variant"]: m for m in body["metrics"] if m["metric"] == "search_click"}
    for variant in ("baseline", "embeddings_v2"):
        mine = [u for u, v in units.items() if v == variant]
        y = np.array([max(clicks[u], 1 if u == second_unit else 0) for u in mine], dtype=float)
        x = np.array([1.0 if u == first_unit else 0.0 for u in mine])
        assert by_variant[variant]["units"] >= len(mine)
        assert by_variant[variant]["sum"] == pytest.approx(y.sum())
        assert by_variant[variant]["sum_of_squares"] == pytest.approx((y**2).sum())
        assert by_variant[variant]["covariate_sum"] == pytest.approx(x.sum())
        assert by_variant[variant]["cross_sum"] == pytest.approx((x * y).sum())


def test_an_outcome_that_arrives_before_its_exposure_is_attributed_later(events_api: Api) -> None:
    unit = next(
        f"early-{i}"
        for i in range(100)
        if events_api.session.post(
            events_api.base_url + "/v1/assign",
            json={"experiment": "search_embeddings", "unit": f"early-{i}"},
            timeout=5,
        ).json()["in_experiment"]
    )
    # A second outcome for a unit exposed only now: stored, pending, then attributed.
    later = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    assert (
        events_api.post(
            "/v1/events",
            {
                "events": [
                    click_event("later", unit, timestamp=later),
                    click_event("ghost", "not-yet", timestamp=later),
                ]
            },
        ).status_code
        == 202
    )
    assert wait_for(lambda: metrics(events_api)["outcome_counts"].get("pending") == 1, timeout=10)
    events_api.assign("search_embeddings", "not-yet")
    exposed = events_api.assign("search_embeddings", "not-yet")["in_experiment"]
    expected = {"attributed": 2} if exposed else {"attributed": 1, "pending": 1}
    assert wait_for(
        lambda: (
            {
                k: v
                for k, v in metrics(events_api)["outcome_counts"].items()
                if k in ("attributed", "pending")
            }
            == expected
        ),
        timeout=10,
    )


def test_units_never_exposed_are_flagged_after_the_grace(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    api = Api(
        server_factory(db, experiments_dir, ABX_ATTRIBUTION_GRACE_SECONDS="0", **FAST).base_url,
        key=None,
    )
    assert api.post("/v1/events", {"events": [click_event("s1", "stranger")]}).status_code == 202
    assert wait_for(lambda: metrics(api)["outcome_counts"] == {"unexposed": 1}, timeout=10)


def test_metrics_of_an_unknown_experiment(events_api: Api) -> None:
    assert_problem(events_api.get("/v1/experiments/ghost/metrics"), 404, "ghost")


def test_import_csv_and_ndjson(
    runner: CliRunner, db: str, experiments_dir: Path, tmp_path: Path
) -> None:
    env = {"ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(experiments_dir)}
    csv_file = tmp_path / "history.csv"
    csv_file.write_text(
        "event_id,experiment,unit,metric,value,timestamp\n"
        + "".join(
            f"h{i},search_embeddings,u{i},search_click,{i % 2},2026-01-0{1 + i % 5}T10:00:00+00:00\n"
            for i in range(30)
        )
    )
    first = runner.invoke(main, ["events", "import", str(csv_file)], env=env)
    assert first.exit_code == 0, first.output
    assert "imported 30 new event(s), 0 duplicate(s)" in first.output
    again = runner.invoke(main, ["events", "import", str(csv_file)], env=env)
    assert "imported 0 new event(s), 30 duplicate(s)" in again.output
    ndjson = tmp_path / "more.ndjson"
    ndjson.write_text("".join(json.dumps(click_event(f"j{i}", f"u{i}")) + "\n" for i in range(5)))
    assert (
        "imported 5 new event(s)"
        in runner.invoke(main, ["events", "import", str(ndjson)], env=env).output
    )
    assert len(stored_event_ids(db)) == 35


def test_import_of_a_bad_file_writes_nothing(
    runner: CliRunner, db: str, experiments_dir: Path, tmp_path: Path
) -> None:
    env = {"ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(experiments_dir)}
    bad = tmp_path / "bad.ndjson"
    bad.write_text(
        json.dumps(click_event("ok", "u")) + "\n" + json.dumps(click_event("bad", "u", 7)) + "\n"
    )
    result = runner.invoke(main, ["events", "import", str(bad)], env=env)
    assert result.exit_code == 1
    assert "event 2: events[1].value: a binary metric takes 0, 1, true or false" in result.output
    assert "nothing was imported" in result.output
    broken = tmp_path / "broken.ndjson"
    broken.write_text("{not json\n")
    assert runner.invoke(main, ["events", "import", str(broken)], env=env).exit_code == 1
    headless = tmp_path / "headless.csv"
    headless.write_text("a,b\n1,2\n")
    result = runner.invoke(main, ["events", "import", str(headless)], env=env)
    assert result.exit_code == 1 and "lacks event_id" in result.output
    assert stored_event_ids(db) == []
