"""What PostgreSQL cannot store is refused up front, by field, and never wedges the writers.

Before, an event holding a NUL or a lone surrogate was acknowledged ("spooled"), and the
group commit failed on it forever, taking every later event on that worker with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import requests

from tests.api.test_api import assert_problem
from tests.conftest import Api, ServerFactory, wait_for
from tests.events.test_api import click_event, stored_event_ids

LIMIT = 8192


def ndjson_lines(prefix: str, count: int) -> list[bytes]:
    return [
        (json.dumps(click_event(f"{prefix}-{i:04d}", "u1"), separators=(",", ":")) + "\n").encode()
        for i in range(count)
    ]


def test_a_body_over_the_limit_is_refused_whole_chunked_or_not(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    api = Api(
        server_factory(
            db, experiments_dir, ABX_MAX_EVENTS_BODY_BYTES=str(LIMIT), ABX_MAX_BODY_BYTES="1024"
        ).base_url
    )
    lines = ndjson_lines("cut", 200)
    # The limit falls exactly on a line boundary: a body cut there parses as whole events.
    at_limit = b""
    for line in lines:
        if len(at_limit) + len(line) > LIMIT:
            break
        at_limit += line
    padding = LIMIT - len(at_limit)
    at_limit = at_limit[:-1] + b" " * padding + b"\n"  # exactly LIMIT bytes, all whole lines
    assert len(at_limit) == LIMIT
    over = at_limit + lines[-1]
    ndjson = {"Content-Type": "application/x-ndjson"}
    for body in (over, iter([over[:5000], over[5000:]])):  # Content-Length, then chunked
        response = api.post("/v1/events", data=body, headers=ndjson)
        assert_problem(response, 413, f"limit of {LIMIT} bytes")
    assert stored_event_ids(db) == []
    chunked_at_limit = api.post(
        "/v1/events", data=iter([at_limit[:3000], at_limit[3000:]]), headers=ndjson
    )
    assert chunked_at_limit.status_code == 202, chunked_at_limit.text
    assert len(stored_event_ids(db)) == at_limit.count(b"\n")
    # The other JSON bodies keep their own limit the same way.
    assign = json.dumps(
        {"experiment": "search_embeddings", "unit": "u" * 200, "attributes": {"a": "x" * 900}}
    )
    response = api.post(
        "/v1/assign", data=iter([assign.encode()]), headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 413, "limit of 1024 bytes")


def post_raw(api: Api, text: str, content_type: str = "application/json") -> Any:
    return api.post("/v1/events", data=text.encode("utf-8"), headers={"Content-Type": content_type})


def test_unstorable_values_are_refused_with_their_field_and_the_rest_flows(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    api = Api(server_factory(db, experiments_dir, ABX_MAX_EVENTS_BODY_BYTES=str(LIMIT)).base_url)
    deep: Any = "x"
    for _ in range(40):
        deep = {"d": deep}
    cases = [
        # (event fields, the field the 422 names)
        ({"properties": {"a": {"b": ["ok", "nul\u0000"]}}}, "events[0].properties.a.b[1]"),
        ({"properties": {"k\u0000": 1}}, "events[0].properties.'k\\x00'"),
        ({"event_id": "id\u0000"}, "events[0].event_id"),
        ({"metric": "search_click\u0000"}, "events[0].metric"),
        ({"properties": deep}, "events[0].properties" + ".d" * 32),
        ({"value": 10**400}, "events[0].value"),
    ]
    for number, (fields, field) in enumerate(cases):
        event = {**click_event(f"bad-{number}", "u1"), **fields}
        body = assert_problem(api.post("/v1/events", {"events": [event]}), 422, "problem")
        assert [e["field"] for e in body["errors"]] == [field], body
    # What json.loads lets through but the body encoder above cannot send: escapes.
    for text, field in [
        ('{"events":[{"event_id":"s","experiment":"search_embeddings","unit":"u\\ud800",'
         '"metric":"search_click","value":1}]}', "events[0].unit"),
        ('{"events":[{"event_id":"s","experiment":"search_embeddings","unit":"u",'
         '"metric":"search_click","value":1,"properties":{"p":"\\udfff"}}]}',
         "events[0].properties.p"),
        ('{"event_id":"s","experiment":"search_embeddings","unit":"u",'
         '"metric":"search_click","value":1,"properties":{"p":1e999}}', "events[0].properties.p"),
    ]:  # fmt: skip
        kind = "application/x-ndjson" if not text.startswith('{"events"') else "application/json"
        body = assert_problem(post_raw(api, text, kind), 422, "problem")
        assert [e["field"] for e in body["errors"]] == [field], body
    # A body nested past the parser's depth is malformed JSON, not a server error.
    nested = '{"events":[' + "[" * 3000 + "]" * 3000 + "]}"
    assert_problem(post_raw(api, nested), 400, "not valid JSON")
    # A unit id PostgreSQL cannot store is refused where it enters, assignment included.
    assign = api.post("/v1/assign", {"experiment": "search_embeddings", "unit": "u\u0000"})
    assert_problem(assign, 422, "NUL")
    # Nothing of those was written, and the writers still commit at once.
    good = api.post(
        "/v1/events",
        {"events": [click_event("good-1", "u1", properties={"emoji": "\U0001f600"})]},
    )
    assert good.status_code == 202 and good.json()["durable"] == "committed", good.text
    assert stored_event_ids(db) == ["good-1"]
    exposed = [
        u for u in ("f1", "f2", "f3", "f4") if api.assign("search_embeddings", u)["in_experiment"]
    ]
    with psycopg.connect(db, autocommit=True) as conn:
        assert wait_for(
            lambda: conn.execute("SELECT count(*) FROM exposures").fetchone()[0] == len(exposed),
            timeout=10,
        )
        assert conn.execute("SELECT count(*) FROM quarantine").fetchone()[0] == 0


def test_readyz_turns_not_ready_while_a_spool_waits_past_its_bound(
    server_factory: ServerFactory, db: str, experiments_dir: Path, tmp_path: Path
) -> None:
    import time

    from service.storage.spool import Spool

    spool_dir = tmp_path / "data" / "spool"  # ABX_DATA_DIR/spool: the events spool
    held = Spool(spool_dir, 1_000_000)
    now = "2026-12-01T00:00:00+00:00"
    held.append([("search_embeddings", "search_embeddings.v1", "held-1", "u1", "search_click",
                  "max", 1.0, now, now, None)])  # fmt: skip
    (segment,) = spool_dir.glob("*.spool")  # open and flock-ed by this test: not replayable
    server = server_factory(db, experiments_dir, ABX_READY_MAX_BACKLOG_SECONDS="1")
    api = Api(server.base_url)
    time.sleep(1.2)
    body = assert_problem(api.get("/readyz"), 503, "the events spool's oldest record is")
    events = body["checks"]["events"]
    assert events["spooling"] is True and events["spool"]["bytes"] == segment.stat().st_size
    assert body["checks"]["writes"]["quarantined_rows"] == 0
    anonymous = requests.get(server.base_url + "/readyz", timeout=5)
    assert anonymous.status_code == 503 and "checks" not in anonymous.json()
    held.seal()  # the lock is released: the server replays the segment and is ready again
    assert wait_for(lambda: api.get("/readyz").status_code == 200, timeout=20)
    assert stored_event_ids(db) == ["held-1"]
