"""Nothing acknowledged is lost: PostgreSQL stopped under load, workers SIGKILLed, spool trouble.

These tests stop and start a PostgreSQL of their own (``own_postgres``: the run's
shared one serves other tests in parallel), and SIGKILL real gunicorn workers.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil
import psycopg
import requests

from tests.api.test_api import assert_problem
from tests.conftest import SERVER_KEYS, Api, Server, ServerFactory, wait_for
from tests.suite.postgres import OwnPostgres

UNREACHABLE = "postgresql://postgres@127.0.0.1:1/nowhere?connect_timeout=1"


class Load:
    """Bounded load: batches of unique events until stopped, remembering what was acknowledged."""

    def __init__(
        self, base_url: str, prefix: str, batch: int = 20, limit_seconds: float = 30
    ) -> None:
        self.url = base_url + "/v1/events"
        self.key = SERVER_KEYS.get(base_url)  # the key server_factory made (none: auth off)
        self.prefix = prefix
        self.batch = batch
        self.deadline = time.monotonic() + limit_seconds
        self.acked: list[str] = []
        self.durability: Counter[str] = Counter()
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        session = requests.Session()
        session.headers["Connection"] = "close"
        if self.key:
            session.headers["Authorization"] = f"Bearer {self.key}"
        number = 0
        while not self._stop.is_set() and time.monotonic() < self.deadline:
            ids = [f"{self.prefix}-{number}-{i}" for i in range(self.batch)]
            number += 1
            events = [
                {"event_id": event_id, "experiment": "search_embeddings", "unit": event_id,
                 "metric": "search_click", "value": 1}
                for event_id in ids
            ]  # fmt: skip
            try:
                response = session.post(self.url, json={"events": events}, timeout=15)
            except requests.RequestException:
                self.refused += 1  # not acknowledged: the client would retry
                continue
            if response.status_code == 202:
                self.acked.extend(ids)
                self.durability[response.json()["durable"]] += 1
            else:
                self.refused += 1
        session.close()


def stored(url: str) -> Counter[str]:
    with psycopg.connect(url) as conn:
        return Counter(row[0] for row in conn.execute("SELECT event_id FROM outcomes"))


def assert_exactly_once(url: str, acked: list[str]) -> None:
    def all_there() -> bool:
        try:
            return set(acked) <= set(stored(url))
        except psycopg.OperationalError:
            return False

    assert wait_for(all_there, timeout=30), (
        f"missing {len(set(acked) - set(stored(url)))} acknowledged events"
    )
    counts = stored(url)
    assert max(counts.values()) == 1, "an event was stored twice"


def test_postgres_stopped_under_load_loses_nothing(
    server_factory: ServerFactory, own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    pg, url = own_postgres, own_postgres.url
    server = server_factory(
        url, Path("experiments").resolve(), ABX_SPOOL_DIR=str(tmp_path / "spool")
    )
    with Load(server.base_url, "outage") as load:
        time.sleep(1.0)
        pg.stop()
        time.sleep(2.5)
        pg.start()
        time.sleep(2.5)
    assert load.durability["spooled"] > 0, load.durability
    assert load.durability["committed"] > 0, load.durability
    assert_exactly_once(url, load.acked)
    assert wait_for(lambda: not any((tmp_path / "spool").glob("*.spool")), timeout=30)


def gunicorn_workers(server: Server) -> list[psutil.Process]:
    return psutil.Process(server.process.pid).children()


def test_sigkilled_worker_loses_nothing_it_acknowledged(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    server = server_factory(db, experiments_dir)
    with Load(server.base_url, "kill") as load:
        time.sleep(1.0)
        victim = gunicorn_workers(server)[0]
        os.kill(victim.pid, signal.SIGKILL)
        time.sleep(2.0)
    assert load.acked
    assert_exactly_once(db, load.acked)


def test_a_killed_process_spool_is_replayed_by_the_next(
    server_factory: ServerFactory, own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    pg, url = own_postgres, own_postgres.url
    spool = tmp_path / "spool"
    pg.stop()
    down = server_factory(url, Path("experiments").resolve(), ABX_SPOOL_DIR=str(spool))
    with Load(down.base_url, "orphan", limit_seconds=2) as load:
        time.sleep(1.5)
    assert load.acked and load.durability == Counter({"spooled": len(load.acked) // 20})
    for process in [*gunicorn_workers(down), psutil.Process(down.process.pid)]:
        process.kill()
    down.stop()
    pg.start()
    server_factory(url, Path("experiments").resolve(), ABX_SPOOL_DIR=str(spool))
    assert_exactly_once(url, load.acked)


def test_no_acknowledgement_without_a_place_to_keep_events(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    server = server_factory(
        UNREACHABLE, Path("experiments").resolve(), ABX_SPOOL_DIR=str(blocker / "spool")
    )
    api = Api(server.base_url, key=None)
    event = {
        "event_id": "e1",
        "experiment": "search_embeddings",
        "unit": "u",
        "metric": "search_click",
        "value": 1,
    }
    response = api.post("/v1/events", {"events": [event]})
    assert_problem(response, 503, "were not stored")
    assert response.headers["Retry-After"] == "5"


def test_a_full_spool_refuses_instead_of_acknowledging(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory(
        UNREACHABLE,
        Path("experiments").resolve(),
        ABX_SPOOL_DIR=str(tmp_path / "spool"),
        ABX_SPOOL_MAX_BYTES="2048",
        ABX_WORKERS="1",
    )
    api = Api(server.base_url, key=None)

    def events(prefix: str, n: int) -> dict[str, Any]:
        return {
            "events": [
                {
                    "event_id": f"{prefix}{i}",
                    "experiment": "search_embeddings",
                    "unit": "u",
                    "metric": "search_click",
                    "value": 1,
                }
                for i in range(n)
            ]
        }

    small = api.post("/v1/events", events("a", 2))
    assert small.status_code == 202 and small.json()["durable"] == "spooled"
    full = api.post("/v1/events", events("b", 40))
    assert_problem(full, 503, "exceed its limit")


def test_exposures_made_while_postgres_is_down_survive_a_restart(
    server_factory: ServerFactory, own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    pg, url = own_postgres, own_postgres.url
    spool = str(tmp_path / "spool")
    pg.stop()
    down = server_factory(url, Path("experiments").resolve(), ABX_SPOOL_DIR=spool)
    api = Api(down.base_url, key=None)
    exposed = {}
    for i in range(60):
        body = api.assign("search_embeddings", f"offline-{i}")
        if body["in_experiment"]:
            exposed[f"offline-{i}"] = body["variant"]
    assert exposed
    assert wait_for(lambda: any((tmp_path / "spool-writes").glob("*.spool")), timeout=30)
    down.stop()
    pg.start()
    server_factory(url, Path("experiments").resolve(), ABX_SPOOL_DIR=spool)

    def stored() -> dict[str, str]:
        with psycopg.connect(url) as conn:
            return dict(
                conn.execute(
                    "SELECT unit_id, variant_key FROM exposures WHERE unit_id LIKE 'offline-%'"
                    " AND experiment_key = 'search_embeddings'"
                ).fetchall()
            )

    assert wait_for(lambda: stored() == exposed, timeout=20)
