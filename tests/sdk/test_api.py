"""The SDK's endpoints on a real server: snapshot with ETag, its stream, exposure batches."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import requests

from service.assignment.hashing import hash_prefix, pick_index, unit_fraction
from tests.conftest import Api, ServerFactory, make_key


def events(response: requests.Response) -> Iterator[dict[str, Any]]:
    """The ``config`` events of a server-sent event stream, as they arrive."""
    event, event_id, data = "", "", list[str]()
    for raw in response.iter_lines():
        line = raw.decode()
        if not line:
            if event == "config":
                yield {"id": event_id, **json.loads("\n".join(data))}
            event, data = "", []
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())


def test_snapshot_etag_stream_scope_and_exposures(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    """One server for all (each start costs the suite seconds): see the checks' names."""
    server = server_factory(db, experiments_dir, ABX_WORKERS="1", ABX_SDK_MAX_STREAMS="1")
    api = Api(server.base_url)
    first = api.get("/v1/sdk/config")
    assert first.status_code == 200 and first.headers["Content-Type"] == "application/json"
    snapshot = first.json()
    assert first.headers["ETag"] == f'"{snapshot["version"]}"'
    assert snapshot["hashing_version"] == 1
    ranker = snapshot["experiments"]["checkout_ranker"]
    assert ranker["seed"] == "checkout_ranker.v1" and ranker["control"] == "production"
    assert [v["weight"] for v in ranker["variants"]] == [0.34, 0.33, 0.33]
    assert ranker["forced"] == {"qa-alice": "ranker_v2", "qa-bob": "ranker_v3"}
    assert ranker["targeting"]["all"][1] == {
        "attribute": "app_version", "op": "version_gte", "value": "2.0.0"
    }  # fmt: skip
    assert ranker["allocation"]["moved_ranges"] == []  # one allocation: every range proven
    assert ranker["decision"]["state"] == "running"
    assert snapshot["experiments"]["churn_model"]["status"] == "draft"

    same = api.get("/v1/sdk/config", headers={"If-None-Match": first.headers["ETag"]})
    assert same.status_code == 304 and same.content == b""
    assert same.headers["ETag"] == first.headers["ETag"]
    stale = api.get("/v1/sdk/config", headers={"If-None-Match": '"something-else"'})
    assert stale.status_code == 200

    events_only = make_key(db, "events-only", ["events:write"])
    refused = Api(server.base_url, key=events_only).get("/v1/sdk/config")
    assert refused.status_code == 403
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert Api(server.base_url, key="").get("/v1/sdk/config").status_code == 401

    # The stream sends the version in force, then a new one when a decision changes it.
    headers = {"Authorization": f"Bearer {server.key}", "Accept": "text/event-stream"}
    with requests.get(
        server.base_url + "/v1/sdk/stream", headers=headers, stream=True, timeout=10
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        received = events(stream)
        assert next(received)["version"] == snapshot["version"]
        # One stream per worker here: another is refused, and the client polls instead.
        busy = api.get("/v1/sdk/stream")
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "5"
        assert busy.headers["Content-Type"].startswith("application/problem+json")
        paused = api.post(
            "/v1/experiments/retention_offer/actions", {"action": "pause", "reason": "sdk test"}
        )
        assert paused.status_code == 201, paused.text
        started = time.monotonic()
        pushed = next(received)
        assert time.monotonic() - started < 5
        offer = pushed["experiments"]["retention_offer"]
        assert offer["decision"] == {
            "state": "paused", "winner": None, "rolled_back": [],
            "stopped": "experiment-paused", "coverage_cap": None,
        }  # fmt: skip
        assert pushed["id"] == pushed["version"] != snapshot["version"]
    assert api.get("/v1/sdk/config").headers["ETag"] == f'"{pushed["version"]}"'
    # Reconnecting with the version held sends nothing until the next change.
    with requests.get(
        server.base_url + "/v1/sdk/stream",
        headers={**headers, "Last-Event-ID": pushed["version"]},
        stream=True,
        timeout=(5, 1.5),
    ) as again:
        try:
            first_event = next(events(again), None)
        except requests.exceptions.ConnectionError:  # the read timed out: nothing was sent
            first_event = None
        assert first_event is None
    check_exposure_batches_are_recorded_once(api, db)


def hashed_variant(experiment: str, seed: str, unit: str, bounds: tuple[float, ...]) -> int:
    return pick_index(unit_fraction(hash_prefix("variant", experiment, seed), unit), bounds)


def check_exposure_batches_are_recorded_once(api: Api, db: str) -> None:
    variants = ("baseline", "embeddings_v2")
    units = [f"sdk-{i}" for i in range(20)]
    items = [
        {"experiment": "search_embeddings", "unit": unit, "seed": "search_embeddings.v1",
         "variant": variants[hashed_variant("search_embeddings", "search_embeddings.v1", unit,
                                            (0.5, 1.0))],
         "exposed_at": time.time() - 5}
        for unit in units
    ]  # fmt: skip
    wrong = 1 - variants.index(items[0]["variant"])
    items.append({**items[0], "unit": units[0], "variant": variants[wrong]})  # not its hash
    items.append({**items[1], "seed": "search_embeddings.v0"})  # an old seed
    batch = {"batch_id": uuid.uuid4().hex, "exposures": items}
    answer = api.post("/v1/sdk/exposures", batch)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "batch_id": batch["batch_id"], "recorded": 20, "stale": 2, "duplicate": False
    }  # fmt: skip
    again = api.post("/v1/sdk/exposures", batch)
    assert again.json() == {
        "batch_id": batch["batch_id"], "recorded": 0, "stale": 0, "duplicate": True
    }  # fmt: skip

    def stored() -> tuple[dict[str, str], int]:
        with psycopg.connect(db, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT unit_id, variant_key FROM assignments WHERE experiment_key = %s",
                ("search_embeddings",),
            ).fetchall()
            exposures = conn.execute(
                "SELECT count(*) FROM exposures WHERE experiment_key = 'search_embeddings'"
            ).fetchone()
        return dict(rows), int(exposures[0]) if exposures else 0

    assignments, exposures = stored()
    assert assignments == {item["unit"]: item["variant"] for item in items[:20]}
    assert exposures == 20
    # The server now answers these units as it would after /v1/assign recorded them.
    for item in items[:3]:
        assigned = api.assign("search_embeddings", item["unit"])
        assert assigned["variant"] in (item["variant"], "baseline")  # the layer may exclude

    unknown = api.post("/v1/sdk/exposures", {"batch_id": uuid.uuid4().hex, "exposures": [
        {**items[2], "unit": "new-unit"}, {**items[3], "experiment": "nope"}]})  # fmt: skip
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "exposures[1].experiment"
    bad_variant = api.post("/v1/sdk/exposures", {"batch_id": uuid.uuid4().hex, "exposures": [
        {**items[2], "unit": "new-unit", "variant": "nope"}]})  # fmt: skip
    assert bad_variant.status_code == 422
    future = api.post("/v1/sdk/exposures", {"batch_id": uuid.uuid4().hex, "exposures": [
        {**items[2], "unit": "new-unit", "exposed_at": time.time() + 3600}]})  # fmt: skip
    assert future.status_code == 422
    bad_id = api.post("/v1/sdk/exposures", {"batch_id": "x", "exposures": items[:1]})
    assert bad_id.status_code == 422
    for refused in (unknown, bad_variant, future, bad_id):
        assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert stored() == (assignments, exposures)  # nothing written by a refused batch
