"""A holdout end to end on a real server: assignment, exposures, events, GET /v1/holdouts/<key>."""

from __future__ import annotations

import random
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from service.assignment.hashing import hash_prefix, unit_fraction
from tests.conftest import Api, ServerFactory, wait_for
from tests.dashboards.test_pages import _as_text, _parse
from tests.experiment_files import minimal_experiment, write_experiment

SHARE = 0.1
HOLDOUT = textwrap.dedent(
    f"""\
    key: launches
    description: Everything launched, against units that got none of it.
    owner: team@example.com
    share: {SHARE}
    scope: all
    start: 2026-01-01
    metrics:
      - {{name: conversion, type: binary}}
    """
)
UNITS = 5000
TRUE_RATE = {"holdout": 0.20, "rest": 0.30}
"""The simulated cumulative effect of the launches: +0.10 on conversion."""


def held_out(unit: str) -> bool:
    return unit_fraction(hash_prefix("holdout", "launches", "launches.v1"), unit) < SHARE


def holdout_report(api: Api) -> dict[str, Any]:
    response = api.get("/v1/holdouts/launches")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_holdout_from_assignment_to_its_always_valid_effect_and_sdk_exposures(
    server_factory: ServerFactory, db: str, tmp_path: Path
) -> None:
    folder = tmp_path / "config"
    write_experiment(folder, minimal_experiment("exp", coverage=0.8))
    (folder / "holdouts").mkdir()
    (folder / "holdouts" / "launches.yaml").write_text(HOLDOUT, encoding="utf-8")
    server = server_factory(db, folder, ABX_ROLLUP_INTERVAL_SECONDS="0.2")
    api = Api(server.base_url)

    units = [f"user-{i}" for i in range(UNITS)]
    answers: list[dict[str, Any]] = []
    for start in range(0, UNITS, 1000):
        items = [{"experiment": "exp", "unit": u} for u in units[start : start + 1000]]
        response = api.post("/v1/assign/batch", {"items": items})
        assert response.status_code == 200, response.text
        answers += response.json()["assignments"]
    for unit, answer in zip(units, answers, strict=True):
        assert answer["holdout"] == "launches"
        if held_out(unit):
            assert (answer["variant"], answer["reason"], answer["in_experiment"]) == (
                "a",
                "holdout",
                False,
            )
        else:
            assert answer["reason"] in ("hashed", "not-in-coverage")
    members = sum(held_out(u) for u in units)
    exposed = sum(a["in_experiment"] for a in answers)

    # Both groups are exposures of the holdout; held-out units are no exposures of "exp".
    expected = {"holdout": members, "rest": UNITS - members}
    assert wait_for(lambda: holdout_report(api)["analysis"]["units"] == expected, timeout=60)
    analysis = api.get("/v1/experiments/exp/analysis").json()
    assert sum(analysis["units"].values()) == exposed

    draw = random.Random(7)
    events = [
        {
            "event_id": f"{u}-c",
            "experiment": "launches",
            "unit": u,
            "metric": "conversion",
            "value": 1,
        }
        for u in units
        if draw.random() < TRUE_RATE["holdout" if held_out(u) else "rest"]
    ]
    response = api.post("/v1/events", {"events": events})
    assert response.status_code == 202, response.text
    unknown_metric = api.post("/v1/events", {"events": [
        {"event_id": "x", "experiment": "launches", "unit": "user-1", "metric": "revenue",
         "value": 1}]})  # fmt: skip
    assert unknown_metric.status_code == 422, unknown_metric.text

    def converted() -> bool:
        primary = holdout_report(api)["analysis"]["primary"]
        if not primary:  # no outcome rolled up yet: no variance to compare
            return False
        (comparison,) = primary
        total = comparison["control_mean"] * comparison["control_units"]
        total += comparison["treatment_mean"] * comparison["treatment_units"]
        return round(total) == len(events)

    assert wait_for(converted, timeout=60)
    report = holdout_report(api)
    assert report["experiments"] == ["exp"] and report["scope"] == "all"
    assert report["analysis"]["method"] == "confidence_sequence"
    assert report["analysis"]["srm"] is None or not report["analysis"]["srm"]["flagged"]
    (comparison,) = report["analysis"]["primary"]
    assert (comparison["variant"], comparison["metric"]) == ("rest", "conversion")
    # The always-valid interval covers the simulated effect and, at this size, excludes zero.
    assert comparison["ci_low"] <= 0.10 <= comparison["ci_high"]
    assert comparison["ci_low"] > 0

    check_dashboard(api, report)

    missing = api.get("/v1/holdouts/nope")
    assert missing.status_code == 404
    assert missing.headers["Content-Type"] == "application/problem+json"
    assert missing.json()["type"].endswith("unknown-holdout")
    check_sdk_holdout_exposures(api)


def check_dashboard(api: Api, report: dict[str, Any]) -> None:
    """The holdout's page shows the API's numbers, and the index lists it."""
    page = api.get("/dashboards/launches")
    assert page.status_code == 200, page.text[:500]
    numbers = _parse(page.text)
    (comparison,) = report["analysis"]["primary"]
    shown = numbers.rows[("conversion", "rest")]
    for field in ("difference", "ci_low", "ci_high", "treatment_units"):
        assert shown[field] == _as_text(comparison[field]), field
    index = api.get("/dashboards/")
    assert index.status_code == 200
    assert 'href="/dashboards/launches"' in index.text


def check_sdk_holdout_exposures(api: Api) -> None:
    """What an SDK reports is checked against the hash: seed and group must be the unit's."""
    member = next(f"u{i}" for i in range(1000) if held_out(f"u{i}"))
    other = next(f"u{i}" for i in range(1000) if not held_out(f"u{i}"))
    now = time.time()

    def item(unit: str, group: str, seed: str = "launches.v1") -> dict[str, Any]:
        return {"experiment": "launches", "unit": unit, "seed": seed, "variant": group,
                "exposed_at": now}  # fmt: skip

    batch = [item(member, "holdout"), item(other, "rest"), item(other, "holdout"),
             item(member, "rest", "launches.v2")]  # fmt: skip
    answer = api.post("/v1/sdk/exposures", {"batch_id": uuid.uuid4().hex, "exposures": batch})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["recorded"], answer.json()["stale"]) == (2, 2)
    config = api.get("/v1/sdk/config").json()
    assert config["experiments"]["exp"]["holdout"] == {
        "key": "launches",
        "seed": "launches.v1",
        "share": SHARE,
    }
    assert config["holdouts"]["launches"]["metrics"] == ["conversion"]
