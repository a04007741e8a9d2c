"""A polling SDK hears of new weights before they apply (``allocation_settle_seconds``).

A weight change applies ``ABX_ALLOCATION_SETTLE_SECONDS`` after it is announced. Until the
SDK holds a snapshot with the announced weights, it assigns the hash ranges they move
locally, under the old weights, and the server does not wait for it: so it must hear well
inside the settle time, whatever ``poll_interval`` the application chose.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import yaml

from abx_client import Client
from tests.conftest import Api, ServerFactory, wait_for


def test_a_polling_sdk_hears_of_new_weights_before_they_apply(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    server = server_factory(
        db, experiments_dir, ABX_ALLOCATION_SETTLE_SECONDS="3", ABX_RELOAD_POLL_SECONDS="0.2"
    )
    assert Api(server.base_url).get("/v1/sdk/config").json()["allocation_settle_seconds"] == 3.0
    # Asked to poll every minute, without the stream: the settle time caps it at 1 s.
    client = Client(server.base_url, server.key, stream=False, poll_interval=60)
    try:
        assert client.wait_ready(10)
        old = client.version
        path = experiments_dir / "search_embeddings.yaml"
        definition = yaml.safe_load(path.read_text())
        definition["variants"][0]["weight"], definition["variants"][1]["weight"] = 0.3, 0.7
        path.write_text(yaml.safe_dump(definition, sort_keys=False))

        assert wait_for(lambda: client.version != old, timeout=30, interval=0.01)
        heard = time.time()
        with psycopg.connect(db) as conn:
            (effective_at,) = conn.execute(
                "SELECT max(effective_at) FROM allocations WHERE experiment_key ="
                " 'search_embeddings'"
            ).fetchone()
        assert heard < effective_at.timestamp(), "the SDK heard after the switch time"
        # It now asks the server about units in the range the change moves.
        sources = {client.assign("search_embeddings", f"u{i}").source for i in range(400)}
        assert "server" in sources
    finally:
        client.close()
