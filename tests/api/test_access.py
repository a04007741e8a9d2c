"""Scoped keys on a real gunicorn server with 2 workers: every route of the OpenAPI description
against every kind of key, revocation on every worker and replica, readiness, auth off."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from click.testing import CliRunner
from flask import Flask

from service.access.keys import parse_token, revoke_key
from service.access.requirements import Requirement, Route, requirements
from service.access.scopes import SCOPES
from service.api import auth
from service.api.openapi import openapi_document
from service.app import BLUEPRINTS
from service.cli.main import main
from tests.conftest import EXAMPLES as EXAMPLE_FOLDER
from tests.conftest import Api, Server, ServerFactory, make_key, wait_for

EXAMPLES = {"key": "checkout_ranker", "key_id": "000000000000", "version": "0", "name": "x.js",
            "job_id": "00000000-0000-0000-0000-000000000000"}  # fmt: skip


def operations() -> list[tuple[str, str, Requirement]]:
    """(method, path, requirement) of every operation that needs a key, from the description."""
    document = openapi_document()
    routes = [
        Route(f"{path} {method}", method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]
    table, problems = requirements(document, routes)
    assert problems == []
    return [(r.method, r.path, table[(r.endpoint, r.method)]) for r in routes]


PROTECTED = [(m, p, r) for m, p, r in operations() if not r.open and r.headers]


def test_every_route_the_app_serves_declares_its_security() -> None:
    """A route added without a security declaration fails here, saying what to add."""
    app = Flask("routes", static_folder=None)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    table = auth.route_table(app)  # raises, naming each undeclared route
    served = {(rule.endpoint, method) for rule in app.url_map.iter_rules()
              for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}}  # fmt: skip
    assert set(table) == served
    assert {r.scope for r in table.values()} - {None} == set(SCOPES)  # every scope is used


def test_an_undeclared_route_is_refused_with_what_to_add() -> None:
    app = Flask("routes", static_folder=None)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    app.add_url_rule("/v1/brand-new/<thing>", "brand_new", lambda thing: thing, methods=["PUT"])
    with pytest.raises(auth.RouteDeclarationError) as refused:
        auth.route_table(app)
    message = str(refused.value)
    assert "PUT /v1/brand-new/{thing} (endpoint brand_new) has no security declaration" in message
    assert "/v1/brand-new/{thing}:\n      put:\n        security: [{bearer: [SCOPE]}" in message
    assert "service/access/scopes.py" in message


def test_a_declaration_naming_an_unknown_scope_or_scheme_is_refused() -> None:
    route = Route("x", "GET", "/x")
    for security, complaint in [
        ([{"bearer": ["metrics:read"]}], "unknown scope(s) metrics:read"),
        ([{"oauth": ["assign"]}], "unknown security scheme 'oauth'"),
        ([{"bearer": ["assign"]}, {"apiKey": ["predict"]}], "the same one scope"),
        ([], "has no security declaration"),
    ]:
        document = {"paths": {"/x": {"get": {"security": security}}}}
        _, problems = requirements(document, [route])
        assert len(problems) == 1 and complaint in problems[0], problems


@pytest.fixture
def keyed(server_factory: ServerFactory, db: str, experiments_dir: Path) -> dict[str, Any]:
    """A server (2 workers) and keys of every kind: one per scope, revoked, expired, unknown."""
    server = server_factory(
        db,
        experiments_dir,
        ABX_RATE_LIMIT_UNAUTHENTICATED="1000/second",
        ABX_SDK_STREAM_SECONDS="0.5",  # GET /v1/sdk/stream with the right key ends soon
    )
    tokens = {scope: make_key(db, f"only-{scope.replace(':', '-')}", [scope]) for scope in SCOPES}
    revoked = make_key(db, "revoked", list(SCOPES))
    with psycopg.connect(db, autocommit=True) as conn:
        revoke_key(conn, parse_token(revoked) or "")
    expired = make_key(db, "expired", list(SCOPES), expires_in=timedelta(seconds=1))
    unknown = "abx_live_0123456789ab_" + "x" * 43
    time.sleep(1.1)
    return {"server": server, "tokens": tokens, "revoked": revoked, "expired": expired,
            "unknown": unknown}  # fmt: skip


def _call(base: str, method: str, path: str, token: str | None) -> requests.Response:
    url = base + path.format(**EXAMPLES)
    headers = {"Accept": "application/json", "Connection": "close"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = {"json": {}} if method in ("POST", "PUT", "PATCH") else {}
    return requests.request(method, url, headers=headers, timeout=10, allow_redirects=False,
                            **body)  # fmt: skip


def _problem(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and "Traceback" not in response.text
    return body


def test_every_route_with_every_kind_of_key(keyed: dict[str, Any]) -> None:
    """Generated from the OpenAPI description: no key, unknown, revoked, expired, another
    scope's key, and the right scope's key, for every operation that needs a key."""
    base, tokens = keyed["server"].base_url, keyed["tokens"]
    assert len(PROTECTED) >= 15
    for method, path, requirement in PROTECTED:
        scope = requirement.scope
        where = f"{method} {path}"
        missing = _problem(_call(base, method, path, None), 401)
        assert f"scope '{scope}'" in missing["detail"], where
        invalid = [
            _call(base, method, path, keyed[kind]) for kind in ("unknown", "revoked", "expired")
        ]
        bodies = [_problem(answer, 401) for answer in invalid]
        assert bodies[0] == bodies[1] == bodies[2], where  # nothing tells a revoked key apart
        for answer in invalid:
            assert answer.headers["WWW-Authenticate"] == 'Bearer realm="abx", error="invalid_token"'
        other = next(s for s in SCOPES if s != scope)
        forbidden = _problem(_call(base, method, path, tokens[other]), 403)
        assert f"needs the scope '{scope}'" in forbidden["detail"], where
        assert f'scope="{scope}"' in _call(base, method, path, tokens[other]).headers[
            "WWW-Authenticate"]  # fmt: skip
        allowed = _call(base, method, path, tokens[scope])
        assert allowed.status_code not in (401, 403) and allowed.status_code < 500, (
            where, allowed.status_code, allowed.text[:300])  # fmt: skip


def test_open_routes_answer_without_a_key(keyed: dict[str, Any]) -> None:
    base = keyed["server"].base_url
    for path in ("/healthz", "/readyz", "/openapi.json", "/openapi.yaml", "/dashboards/login"):
        for token in (None, keyed["revoked"], keyed["unknown"]):
            assert _call(base, "GET", path, token).status_code == 200, path


def test_readiness_details_need_experiments_read(keyed: dict[str, Any]) -> None:
    base, tokens = keyed["server"].base_url, keyed["tokens"]
    assert _call(base, "GET", "/readyz", None).json() == {"status": "ready"}
    assert _call(base, "GET", "/readyz", tokens["assign"]).json() == {"status": "ready"}
    detailed = _call(base, "GET", "/readyz", tokens["experiments:read"]).json()
    assert (
        detailed["checks"]["experiments_loaded"] == len(list(EXAMPLE_FOLDER.glob("*.yaml")))
        and detailed["checks"]["keys_loaded"]
    )


def test_the_scope_and_key_come_from_every_header_form(keyed: dict[str, Any]) -> None:
    base, token = keyed["server"].base_url, keyed["tokens"]["assign"]
    body = {"experiment": "checkout_ranker", "unit": "u1"}
    for headers in ({"X-API-Key": token}, {"Authorization": f"bearer {token}"}):
        assert requests.post(base + "/v1/assign", json=body, headers=headers, timeout=5).ok
    wrong = requests.post(base + "/v1/assign", json=body, timeout=5,
                          headers={"Authorization": f"Basic {token}"})  # fmt: skip
    _problem(wrong, 401)


def _worker_pid(base: str, token: str) -> int:
    answer = requests.get(base + "/readyz", headers={"Authorization": f"Bearer {token}",
                          "Connection": "close"}, timeout=5)  # fmt: skip
    return int(answer.json()["checks"]["worker_pid"])


def test_revocation_reaches_every_worker_of_every_replica_within_5_seconds(
    server_factory: ServerFactory, db: str, experiments_dir: Path, runner: CliRunner
) -> None:
    replicas = [server_factory(db, experiments_dir) for _ in range(2)]
    token = make_key(db, "soon-revoked", ["assign", "experiments:read"])
    body = {"experiment": "checkout_ranker", "unit": "u1"}
    for replica in replicas:  # the key works on both workers of both replicas first
        pids: set[int] = set()

        def both_workers_answered(base: str = replica.base_url, seen: set[int] = pids) -> bool:
            seen.add(_worker_pid(base, token))
            return len(seen) == 2

        assert wait_for(both_workers_answered, timeout=30, interval=0.01), pids
    revoked_at = time.monotonic()
    result = runner.invoke(main, ["keys", "revoke", token], env={"ABX_DATABASE_URL": db})
    assert result.exit_code == 0 and "revoked" in result.output, result.output

    def refused_everywhere() -> bool:
        answers = [
            requests.post(r.base_url + "/v1/assign", json=body, timeout=5,
                          headers={"Authorization": f"Bearer {token}", "Connection": "close"})
            for r in replicas for _ in range(6)
        ]  # fmt: skip
        return all(a.status_code == 401 for a in answers)

    assert wait_for(refused_everywhere, timeout=10, interval=0.05)
    took = time.monotonic() - revoked_at
    assert took < 5.0, f"revocation took {took:.1f} s"
    time.sleep(max(0.0, 5.0 - took))
    for replica in replicas:  # and stays refused on every worker
        for _ in range(10):
            _problem(requests.post(replica.base_url + "/v1/assign", json=body, timeout=5,
                                   headers={"X-API-Key": token, "Connection": "close"}), 401)  # fmt: skip


def test_a_key_made_a_moment_ago_works_at_once(api: Api, db: str) -> None:
    token = make_key(db, "fresh", ["assign"])
    body = {"experiment": "checkout_ranker", "unit": "u1"}
    assert Api(api.base_url, key=token).post("/v1/assign", body).status_code == 200


def test_keys_through_the_api_need_admin_and_record_who(api: Api, db: str) -> None:
    created = api.post("/v1/keys", {"name": "web-app", "scopes": ["assign", "predict"],
                                    "owner": "web team", "expires_in": "90d"})  # fmt: skip
    assert created.status_code == 201, created.text
    key = created.json()
    assert key["token"].startswith("abx_live_" + key["key_id"] + "_")
    assert key["created_by"] == "key:test-suite" and key["state"] == "active"
    web = Api(api.base_url, key=key["token"])
    assert web.assign("checkout_ranker", "u1")["experiment"] == "checkout_ranker"
    _problem(web.get("/v1/keys"), 403)
    listing = api.get("/v1/keys")
    assert key["token"] not in listing.text and key["token"][-43:] not in listing.text
    assert {k["name"] for k in listing.json()["keys"]} >= {"web-app", "test-suite"}
    with psycopg.connect(db) as conn:
        stored = conn.execute("SELECT token_sha256 FROM api_keys WHERE key_id = %s",
                              (key["key_id"],)).fetchone()  # fmt: skip
    assert stored is not None and key["token"].encode() not in bytes(stored[0])
    for bad, field in [({"name": "x", "scopes": ["root"]}, "scopes"),
                       ({"name": "x", "scopes": ["assign"], "expires_in": "soon"}, "expires_in"),
                       ({"name": "x", "scopes": ["assign"], "rate_limit": "fast"}, "rate_limit"),
                       ({"name": "<script>", "scopes": ["assign"]}, "name")]:  # fmt: skip
        refused = _problem(api.post("/v1/keys", bad), 422)
        assert refused["errors"][0]["field"] == field, refused
    revoked = api.delete(f"/v1/keys/{key['key_id']}")
    assert revoked.json()["state"] == "revoked"
    assert wait_for(lambda: web.post("/v1/assign", {"experiment": "x", "unit": "u"})
                    .status_code == 401, timeout=5)  # fmt: skip
    _problem(api.delete("/v1/keys/ffffffffffff"), 404)


def test_the_keys_command(runner: CliRunner, db: str) -> None:
    env = {"ABX_DATABASE_URL": db}
    made = runner.invoke(main, ["keys", "create", "--name", "analyst-jane", "--scopes",
                                "dashboards:read,experiments:read", "--expires", "30d",
                                "--rate", "50/second"], env=env)  # fmt: skip
    assert made.exit_code == 0, made.output
    token = next(w for w in made.output.split() if w.startswith("abx_live_"))
    key_id = parse_token(token)
    assert key_id is not None and "shown this once" in made.output
    listed = runner.invoke(main, ["keys", "list"], env=env)
    assert key_id in listed.output and "analyst-jane" in listed.output
    assert token not in listed.output and token[-43:] not in listed.output
    as_json = runner.invoke(main, ["keys", "list", "--json"], env=env)
    assert token[-43:] not in as_json.output and '"rate_limit": "50/second"' in as_json.output
    rotated = runner.invoke(main, ["keys", "rotate", "analyst-jane", "--grace", "1h"], env=env)
    assert rotated.exit_code == 0, rotated.output
    assert f"old key {key_id} keeps working until" in rotated.output
    with psycopg.connect(db) as conn:
        rows = conn.execute("SELECT key_id, expires_at - now() < interval '61 minutes',"
                            " scopes, rate_limit, created_by FROM api_keys"
                            " WHERE name = 'analyst-jane' ORDER BY created_at").fetchall()  # fmt: skip
    assert len(rows) == 2 and rows[0][1] is True and rows[1][1] is None
    assert rows[1][2] == rows[0][2] and rows[1][3] == "50/second"
    assert rows[1][4].startswith("cli:")
    for args, complaint in [
        (["create", "--name", "x", "--scopes", "root"], "unknown scope(s) root"),
        (["create", "--name", "x y", "--scopes", "assign"], "is not a key name"),
        (["create", "--name", "x", "--scopes", "assign", "--expires", "later"], "not a duration"),
        (["create", "--name", "x", "--scopes", "assign", "--rate", "fast"], "not a rate"),
        (["revoke", "nope"], "there is no key 'nope'"),
        (["rotate", "nobody"], "no active key named 'nobody'"),
    ]:
        refused = runner.invoke(main, ["keys", *args], env=env)
        assert refused.exit_code == 1 and complaint in refused.output, (args, refused.output)
    unmigrated = runner.invoke(main, ["keys", "list"],
                               env={"ABX_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/x"})  # fmt: skip
    assert unmigrated.exit_code == 1 and "cannot reach the database" in unmigrated.output


def test_abx_keys_on_a_database_never_migrated_says_what_to_do(
    runner: CliRunner, empty_db: str
) -> None:
    refused = runner.invoke(main, ["keys", "list"], env={"ABX_DATABASE_URL": empty_db})
    assert refused.exit_code == 1
    assert "the keys table is missing: run `abx migrate` first" in refused.output


def test_auth_off_is_explicit_warned_and_shown(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    server = server_factory(db, experiments_dir, ABX_AUTH="off")
    open_api = Api(server.base_url, key="")
    assert open_api.assign("checkout_ranker", "u1")["experiment"] == "checkout_ranker"
    ready = open_api.get("/readyz").json()
    assert "ABX_AUTH=off" in ready["warnings"][0] and "checks" in ready
    assert "authentication is off (ABX_AUTH=off)" in server.log()
    paused = open_api.post("/v1/experiments/retention_offer/actions",
                           {"action": "pause", "actor": "ana", "reason": "r"})  # fmt: skip
    assert paused.status_code == 201
    audit = open_api.get("/v1/experiments/retention_offer/decisions").json()["decisions"]
    assert audit[-1]["actor"] == "unauthenticated"  # never the body's "ana"


def test_the_old_single_key_setting_is_refused(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    with pytest.raises(RuntimeError, match="ABX_API_KEY is no longer read"):
        server_factory(db, experiments_dir, ABX_API_KEY="old-key")


UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1"


def test_keys_during_an_outage(
    server_factory: ServerFactory, db: str, experiments_dir: Path, tmp_path: Path
) -> None:
    """No copy of the keys: 503, not a guess. A copy left by an earlier process: served."""
    blind = server_factory(UNREACHABLE, experiments_dir, ABX_AUTH="on",
                           ABX_DATA_DIR=str(tmp_path / "fresh"))  # fmt: skip
    body = {"experiment": "checkout_ranker", "unit": "u1"}
    token = make_key(db, "outage", ["assign"])
    refused = requests.post(blind.base_url + "/v1/assign", json=body, timeout=5,
                            headers={"X-API-Key": token})  # fmt: skip
    assert _problem(refused, 503)["detail"].startswith("Keys cannot be verified now")
    assert refused.headers["Retry-After"] == "5"
    assert requests.get(blind.base_url + "/healthz", timeout=5).status_code == 200
    _problem(requests.post(blind.base_url + "/v1/assign", json=body, timeout=5), 401)

    data = tmp_path / "shared"
    seen = server_factory(db, experiments_dir, ABX_DATA_DIR=str(data))
    assert Api(seen.base_url, key=token).post("/v1/assign", body).status_code == 200
    assert (data / "access" / "keys.json").stat().st_mode & 0o777 == 0o600
    assert token not in (data / "access" / "keys.json").read_text()
    seen.stop()
    restarted = server_factory(UNREACHABLE, experiments_dir, ABX_AUTH="on",
                               ABX_DATA_DIR=str(data))  # fmt: skip
    assert Api(restarted.base_url, key=token).post("/v1/assign", body).status_code == 200
    wrong = Api(restarted.base_url, key=token[:-1] + ("A" if token[-1] != "A" else "B"))
    _problem(wrong.post("/v1/assign", body), 401)


def test_cors_is_off_by_default_and_per_origin_for_assign(
    server: Server, server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    origin = "https://app.example"
    preflight = {"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
    closed = requests.options(server.base_url + "/v1/assign", headers=preflight, timeout=5)
    assert "Access-Control-Allow-Origin" not in closed.headers
    opened = server_factory(db, experiments_dir, ABX_CORS_ORIGINS=f"{origin},https://b.example")
    answer = requests.options(opened.base_url + "/v1/assign", headers=preflight, timeout=5)
    assert answer.status_code == 200 and answer.headers["Access-Control-Allow-Origin"] == origin
    assert "authorization" in answer.headers["Access-Control-Allow-Headers"].lower()
    assigned = requests.post(opened.base_url + "/v1/assign/batch", timeout=5,
                             json={"items": [{"experiment": "checkout_ranker", "unit": "u"}]},
                             headers={"Origin": origin, "X-API-Key": opened.key or ""})  # fmt: skip
    assert assigned.ok and assigned.headers["Access-Control-Allow-Origin"] == origin
    stranger = requests.options(opened.base_url + "/v1/assign", timeout=5,
                                headers={**preflight, "Origin": "https://evil.example"})  # fmt: skip
    assert "Access-Control-Allow-Origin" not in stranger.headers
    other_route = requests.options(opened.base_url + "/v1/experiments", timeout=5,
                                   headers={**preflight, "Access-Control-Request-Method": "GET"})  # fmt: skip
    assert "Access-Control-Allow-Origin" not in other_route.headers
