"""PostgreSQL away: the snapshot is still served, exposure batches are refused (503, nothing
acknowledged) and, resent with the same id once it is back, recorded once."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

from service.assignment.hashing import hash_prefix, pick_index, unit_fraction
from tests.conftest import Api, ServerFactory, wait_for
from tests.suite.postgres import OwnPostgres


def test_exposures_wait_for_the_database_and_count_once(
    server_factory: ServerFactory, own_postgres: OwnPostgres, experiments_dir: Path
) -> None:
    server = server_factory(own_postgres.url, experiments_dir)
    api = Api(server.base_url)
    etag = api.get("/v1/sdk/config").headers["ETag"]
    fraction = unit_fraction(hash_prefix("variant", "retention_offer", "retention_offer.v1"), "u-1")
    item = {"experiment": "retention_offer", "unit": "u-1", "seed": "retention_offer.v1",
            "variant": ("logistic", "mlp")[pick_index(fraction, (0.5, 1.0))],
            "exposed_at": time.time()}  # fmt: skip
    batch = {"batch_id": uuid.uuid4().hex, "exposures": [item]}
    own_postgres.stop()
    try:
        refused = api.post("/v1/sdk/exposures", batch)
        assert refused.status_code == 503, refused.text
        assert refused.headers["Content-Type"].startswith("application/problem+json")
        served = api.get("/v1/sdk/config")  # from memory: no database needed
        assert served.status_code == 200 and served.headers["ETag"] == etag
    finally:
        own_postgres.start()

    def recorded() -> bool:
        answer = api.post("/v1/sdk/exposures", batch)
        return answer.status_code == 200 and answer.json()["recorded"] == 1

    assert wait_for(recorded, timeout=30, interval=0.5)
    again = api.post("/v1/sdk/exposures", batch).json()
    assert again["duplicate"] and again["recorded"] == 0
