"""Segment attributes on a real server: recorded from the first exposure only (whichever
worker or SDK batch sees the unit later), rolled up, and in the analysis API."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import psycopg

from abx_client import Client, __version__
from service.decisions.segments import NOTE
from service.experiments.segments import CLIENT
from tests.api.test_api import expected_assignment
from tests.conftest import Api, Server, wait_for

FIRST = {"country": "US", "app_version": "2.1.0", "platform": "ios"}
LATER = {"country": "DE", "app_version": "2.2.0", "platform": "android"}


def recorded(db: str) -> dict[str, dict[str, str]]:
    with psycopg.connect(db) as conn:
        return dict(conn.execute(
            "SELECT unit_id, attributes FROM exposure_attributes"
            " WHERE experiment_key = 'checkout_ranker'"
        ).fetchall())  # fmt: skip


def test_segments_come_from_the_first_exposure(
    server: Server, api: Api, db: str, experiments_dir: Path
) -> None:
    exposed = [f"web-{i}" for i in range(40) if api.assign("checkout_ranker", f"web-{i}",
                                                           **FIRST)["in_experiment"]]  # fmt: skip
    assert len(exposed) > 20  # coverage 0.8
    # SDK-made exposures carry their attributes too; the segments only are kept.
    hashed = []
    for i in range(40):
        variant, reason = expected_assignment(experiments_dir, "checkout_ranker", f"sdk-{i}", FIRST)
        if reason == "hashed":
            hashed.append({"experiment": "checkout_ranker", "unit": f"sdk-{i}",
                           "seed": "checkout_ranker.v1", "variant": variant,
                           "attributes": FIRST | {"email": "someone@example.com"}})  # fmt: skip
    response = api.post("/v1/sdk/exposures", {"batch_id": uuid.uuid4().hex, "exposures": hashed,
                                              "client": "abx-client-go/1.2.3"})  # fmt: skip
    assert response.status_code == 200 and response.json()["recorded"] == len(hashed)
    # The client SDK sends the segment attributes of the snapshot's experiment with each
    # local exposure, and only those.
    client = Client(server.base_url, server.key, flush_interval=0.1)
    try:
        answers = [client.assign("checkout_ranker", f"client-{i}", FIRST | {"email": "x@y.z"})
                   for i in range(40)]  # fmt: skip
    finally:
        client.close()
    local = [f"client-{i}" for i, a in enumerate(answers) if a.reason == "hashed"]
    first = {"platform": "ios", "country": "US"}
    # Who made each exposure is recorded too (abx.client), for the SRM drill-down.
    expected = ({u: first | {CLIENT: "server"} for u in exposed}
                | {h["unit"]: first | {CLIENT: "abx-client-go/1.2.3"} for h in hashed}
                | {u: first | {CLIENT: f"abx-client-python/{__version__}"} for u in local})  # fmt: skip
    assert len(local) > 20
    assert wait_for(lambda: len(recorded(db)) == len(expected))
    # Later requests (any worker, any batch) with changed attributes change nothing.
    for unit in exposed:
        api.assign("checkout_ranker", unit, **LATER)
    later = [item | {"attributes": LATER} for item in hashed]
    api.post("/v1/sdk/exposures", {"batch_id": uuid.uuid4().hex, "exposures": later})
    time.sleep(0.5)  # past the writers' flush interval
    assert recorded(db) == expected

    def analysed() -> dict:  # type: ignore[type-arg]
        body = api.get("/v1/experiments/checkout_ranker/analysis").json()
        return body if body["segments"]["units"]["platform"] else {}

    assert wait_for(lambda: bool(analysed()))  # the server's rollup counted them
    segments = analysed()["segments"]
    assert segments["attributes"] == ["platform", "country"]
    assert segments["note"] == NOTE and segments["correction"] == "holm"
    units = segments["units"]
    assert set(units["platform"]) == {"ios"} and set(units["country"]) == {"US"}
    assert sum(units["platform"]["ios"].values()) == len(expected)
    # An experiment without segments records no attributes and reports no segments.
    assert any(api.assign("search_embeddings", f"user-{i}", **FIRST)["in_experiment"]
               for i in range(20))  # fmt: skip
    time.sleep(0.5)
    with psycopg.connect(db) as conn:
        assert conn.execute(
            "SELECT count(*) FROM exposure_attributes WHERE experiment_key = 'search_embeddings'"
        ).fetchone() == (0,)
    assert api.get("/v1/experiments/search_embeddings/analysis").json()["segments"] is None
