"""The HTTP API on a real gunicorn server with a real PostgreSQL."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from service.assignment.core import assign, compile_experiment
from service.experiments.validation import load_experiments
from tests.conftest import EXAMPLES, Api, Server, ServerFactory, wait_for

US_APP = {"country": "US", "app_version": "2.1.0", "platform": "ios"}


def expected_assignment(
    experiments: Path, key: str, unit: str, attributes: dict[str, Any]
) -> tuple[str, str]:
    loaded = {i.experiment.key: i.experiment for i in load_experiments([experiments]).experiments}
    result = assign(compile_experiment(loaded[key]), unit, attributes, lambda: None)
    return result.variant, result.reason.value


def assert_problem(
    response: requests.Response, status: int, detail_fragment: str
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["type"].startswith("https://") and body["title"]
    assert detail_fragment in body["detail"], body
    assert "Traceback" not in response.text
    return body


def test_assign_agrees_with_the_core_and_is_deterministic(api: Api, experiments_dir: Path) -> None:
    for i in range(40):
        unit = f"user-{i}"
        body = api.assign("checkout_ranker", unit, **US_APP)
        assert (body["variant"], body["reason"]) == expected_assignment(
            experiments_dir, "checkout_ranker", unit, US_APP
        )
        assert body["in_experiment"] == (body["reason"] in {"hashed", "sticky"})
        assert api.assign("checkout_ranker", unit, **US_APP)["variant"] == body["variant"]


def test_reasons(api: Api) -> None:
    assert api.assign("checkout_ranker", "qa-alice") == {
        "experiment": "checkout_ranker",
        "variant": "ranker_v2",
        "reason": "forced",
        "in_experiment": False,
    }
    assert (
        api.assign("checkout_ranker", "u1", country="FR", app_version="2.1.0")["reason"]
        == "targeted-out"
    )
    assert api.assign("checkout_ranker", "u1", country="US")["reason"] == "targeted-out"
    assert api.assign("churn_model", "u1")["reason"] == "experiment-not-running"
    assert api.assign("churn_model", "qa-carol")["variant"] == "challenger"
    layer = {api.assign("search_embeddings", f"u{i}")["reason"] for i in range(30)}
    assert layer == {"hashed", "not-in-layer"}


def test_integer_units_hash_as_their_text(api: Api) -> None:
    assert api.assign("search_embeddings", 12345) == api.assign("search_embeddings", "12345")


def test_layer_members_are_exclusive(api: Api) -> None:
    for i in range(60):
        unit = f"user-{i}"
        a = api.assign("search_embeddings", unit, platform="ios")
        b = api.assign("search_reranker", unit, platform="ios")
        assert a["in_experiment"] != b["in_experiment"]


def test_batch_many_units_and_experiments(api: Api) -> None:
    items = [
        {"experiment": key, "unit": f"user-{i}", "attributes": US_APP}
        for i in range(20)
        for key in ("checkout_ranker", "search_embeddings", "churn_model")
    ]
    response = api.post("/v1/assign/batch", {"items": items})
    assert response.status_code == 200
    assignments = response.json()["assignments"]
    assert [a["experiment"] for a in assignments] == [i["experiment"] for i in items]
    for item, result in zip(items, assignments, strict=True):
        assert (
            api.assign(item["experiment"], item["unit"], **US_APP)["variant"] == result["variant"]
        )


def test_batch_with_an_unknown_experiment_assigns_nothing(api: Api, db: str) -> None:
    items = [{"experiment": "search_embeddings", "unit": f"batch-{i}"} for i in range(5)]
    items.insert(3, {"experiment": "nope", "unit": "x"})
    body = assert_problem(api.post("/v1/assign/batch", {"items": items}), 422, "unknown experiment")
    assert body["errors"] == [
        {"field": "items[3].experiment", "message": "unknown experiment 'nope'"}
    ]
    api.assign("search_embeddings", "marker")  # flushed after anything written before it
    assert wait_for(lambda: exposure_units(db) >= {"marker"} or exposure_units(db) == set(), 5)
    assert not any(unit.startswith("batch-") for unit in exposure_units(db))


def exposure_units(db: str) -> set[str]:
    with psycopg.connect(db) as conn:
        return {row[0] for row in conn.execute("SELECT unit_id FROM exposures")}


def test_exposures_and_first_assignments_reach_postgres_once(api: Api, db: str) -> None:
    exposed = {}
    for i in range(50):
        for _ in range(3):
            body = api.assign("search_embeddings", f"user-{i}")
        if body["in_experiment"]:
            exposed[f"user-{i}"] = body["variant"]
    api.assign("checkout_ranker", "qa-alice")  # forced: never an exposure

    def stored() -> dict[str, str]:
        with psycopg.connect(db) as conn:
            return dict(conn.execute("SELECT unit_id, variant_key FROM exposures").fetchall())

    assert wait_for(lambda: stored() == exposed)
    with psycopg.connect(db) as conn:
        assignments = dict(conn.execute("SELECT unit_id, variant_key FROM assignments").fetchall())
        count = conn.execute("SELECT count(*) FROM exposures").fetchone()
    assert assignments == exposed and count == (len(exposed),)


def test_experiments_resource(api: Api) -> None:
    listing = api.get("/v1/experiments").json()["experiments"]
    assert [e["key"] for e in listing] == sorted(e["key"] for e in listing)
    ranker = next(e for e in listing if e["key"] == "checkout_ranker")
    assert [v["key"] for v in ranker["variants"]] == ["production", "ranker_v2", "ranker_v3"]
    assert ranker["variants"][0]["weight"] == 0.34 and ranker["control"] == "production"
    one = api.get("/v1/experiments/search_reranker").json()
    assert one["layer"] == {"name": "search", "range": [0.5, 1.0]}
    assert one["definition"]["targeting"]["any"][0]["value"] == "ios"
    assert_problem(api.get("/v1/experiments/nope"), 404, "There is no experiment 'nope'")


def test_health_and_readiness(server: Server, api: Api) -> None:
    assert requests.get(server.base_url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.get(server.base_url + "/readyz", timeout=5).json() == {"status": "ready"}
    ready = api.get("/readyz").json()  # details need experiments:read
    assert ready["status"] == "ready" and ready["checks"]["experiments_loaded"] == len(
        list(EXAMPLES.glob("*.yaml"))
    )


def test_openapi_is_served(server: Server) -> None:
    document = requests.get(server.base_url + "/openapi.json", timeout=5).json()
    assert set(document["paths"]) >= {
        "/v1/assign",
        "/v1/assign/batch",
        "/v1/experiments",
        "/readyz",
    }


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        (b'{"experiment": "checkout_ranker", "unit": ', 400, "not valid JSON"),
        (b"[1, 2]", 422, "(body): Input should be an object"),
        (b'{"unit": "u1"}', 422, "experiment: Field required"),
        (
            b'{"experiment": "checkout_ranker", "unit": true}',
            422,
            "unit: Value error, must be a non-empty string",
        ),
        (b'{"experiment": "checkout_ranker", "unit": ""}', 422, "unit: Value error"),
        (b'{"experiment": 7, "unit": "u"}', 422, "experiment: Input should be a valid string"),
        (
            b'{"experiment": "checkout_ranker", "unit": "u", "attributes": [1]}',
            422,
            "attributes: Input should be an object",
        ),
        (
            b'{"experiment": "checkout_ranker", "unit": "u", "extra": 1}',
            422,
            "extra: Extra inputs are not permitted",
        ),
        (b'{"experiment": "nope", "unit": "u"}', 404, "There is no experiment 'nope'"),
    ],
)
def test_bad_assign_requests(api: Api, body: bytes, status: int, detail: str) -> None:
    response = api.session.post(
        api.base_url + "/v1/assign",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=5,
    )
    assert_problem(response, status, detail)


def test_invalid_request_lists_every_field(api: Api) -> None:
    response = api.post(
        "/v1/assign/batch", {"items": [{"experiment": "x", "unit": "u"}, {"unit": 1.5}]}
    )
    body = assert_problem(response, 422, "is not valid")
    fields = {e["field"] for e in body["errors"]}
    assert fields == {"items[1].experiment", "items[1].unit"}


def test_transport_errors(api: Api, server: Server) -> None:
    base = server.base_url
    assert_problem(
        api.session.post(
            base + "/v1/assign",
            data="experiment=x",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            timeout=5,
        ),
        415,
        "application/json",
    )
    assert_declared_oversize_is_refused(server)
    too_many = {"items": [{"experiment": "checkout_ranker", "unit": f"u{i}"} for i in range(1001)]}
    assert_problem(api.post("/v1/assign/batch", too_many), 413, "at most 1000 items")
    assert_problem(
        api.post("/v1/assign/batch", {"items": []}), 422, "items: List should have at least 1 item"
    )
    assert_problem(api.get("/v1/nowhere"), 404, "")
    response = api.get("/v1/assign")
    assert_problem(response, 405, "")
    assert "POST" in response.headers["Allow"]


def assert_declared_oversize_is_refused(server: Server) -> None:
    """A body declared larger than the limit is refused before it is read."""
    host, port = server.base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.putrequest("POST", "/v1/assign")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Authorization", f"Bearer {server.key}")
    conn.putheader("Content-Length", str(2_000_000))
    conn.endheaders()
    conn.send(b'{"experiment": "checkout_ranker", ')
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 413 and response.getheader("Content-Type", "").startswith(
        "application/problem+json"
    )
    assert body["status"] == 413 and "Traceback" not in json.dumps(body)


def test_keeps_answering_while_postgres_is_unreachable(
    server_factory: ServerFactory, experiments_dir: Path
) -> None:
    server = server_factory(
        "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1", experiments_dir
    )
    api = Api(server.base_url, key=None)
    assert_problem(api.get("/readyz"), 503, "unreachable")
    body = api.assign("search_embeddings", "user-1")
    assert body["reason"] in {"hashed", "not-in-layer"}
    action = {"action": "pause", "actor": "ana", "reason": "db down"}
    assert_problem(
        api.post("/v1/experiments/retention_offer/actions", action), 503, "not reachable"
    )
    assert_problem(api.get("/v1/experiments/retention_offer/decisions"), 503, "not reachable")
    assert_problem(api.get("/v1/experiments/retention_offer/metrics"), 503, "not reachable")


def test_service_refuses_to_start_on_invalid_experiments(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    (experiments_dir / "broken.yaml").write_text("key: broken\n")
    with pytest.raises(RuntimeError, match=r"broken\.yaml:1: description: Field required"):
        server_factory(db, experiments_dir)
