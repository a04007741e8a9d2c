"""The SDK and /v1/assign agree on every unit: every example experiment (under the example
holdout), then after a weight change, a ramp step, a halt, a promotion and a rollback.

``ABX_SDK_AGREEMENT_UNITS`` sets the units per experiment (the suite: 1,500; the claim in
docs/sdk.md is measured with 100,000). Every answer is compared, variant and reason; the
SDK's own threads run it (8 callers), so moved-range units go through its batched fallback.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from abx_client import Client
from service.assignment.hashing import hash_prefix, unit_fraction
from service.assignment.state import ExperimentState, load_state, save_state
from service.experiments.schema import Experiment
from tests.conftest import EXAMPLES, Api, Server, ServerFactory, wait_for

UNITS = int(os.environ.get("ABX_SDK_AGREEMENT_UNITS", "1500"))
EXPERIMENTS = ("checkout_ranker", "churn_model", "retention_offer", "search_embeddings",
               "search_reranker")  # fmt: skip
COUNTRIES = ("US", "CA", "FR", "GB", "DE")
VERSIONS = ("1.9.0", "2.0.0", "2.1.0-beta", "3.0", "v2.4.1")
PLATFORMS = ("ios", "android", "web")


def attributes(index: int) -> dict[str, Any]:
    return {"country": COUNTRIES[index % 5], "app_version": VERSIONS[index // 5 % 5],
            "platform": PLATFORMS[index // 25 % 3]}  # fmt: skip


def population() -> list[tuple[str, str | int, dict[str, Any]]]:
    units: list[str | int] = ["qa-alice", "qa-bob", "qa-carol", 42]
    units += [f"user-{i}" for i in range(UNITS - len(units))]
    return [(e, unit, attributes(i)) for e in EXPERIMENTS for i, unit in enumerate(units)]


def server_answers(api: Api, items: list[tuple[str, str | int, dict[str, Any]]]) -> list[Any]:
    answers = []
    for start in range(0, len(items), 1000):
        body = {"items": [{"experiment": e, "unit": u, "attributes": a}
                          for e, u, a in items[start:start + 1000]]}  # fmt: skip
        response = api.post("/v1/assign/batch", body)
        assert response.status_code == 200, response.text
        answers += [
            (a["variant"], a["reason"], a.get("holdout")) for a in response.json()["assignments"]
        ]
    return answers


def compare(client: Client, api: Api, phase: str) -> dict[str, int]:
    items = population()
    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        local = list(pool.map(lambda item: client.assign(item[0], item[1], item[2]), items))
    sdk_seconds = time.monotonic() - started
    served = server_answers(api, items)
    print(
        f"{phase}: SDK {sdk_seconds:.2f} s, server {time.monotonic() - started - sdk_seconds:.2f} s"
    )
    mismatches = [
        (item[0], item[1], (a.variant, a.reason, a.holdout), s)
        for item, a, s in zip(items, local, served, strict=True)
        if (a.variant, a.reason, a.holdout) != s
    ]
    assert mismatches == [], (
        f"{phase}: {len(mismatches)} of {len(items)} differ: {mismatches[:10]}; {client.stats()}"
    )
    reasons: dict[str, int] = {}
    for answer in local:
        reasons[f"{answer.source}:{answer.reason}"] = (
            reasons.get(f"{answer.source}:{answer.reason}", 0) + 1
        )
    return reasons


def settled(client: Client, server: Server, check: Any) -> bool:
    """The SDK's snapshot passes ``check``, and every worker serves that same version."""
    snapshot = client._snapshot
    if snapshot is None or not check(snapshot):
        return False
    api = Api(server.base_url)
    return all(
        api.get("/v1/sdk/config").headers["ETag"] == f'"{snapshot.version}"' for _ in range(6)
    )


@pytest.fixture
def agreement_server(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> Iterator[tuple[Server, Client]]:
    offer = experiments_dir / "retention_offer.yaml"
    definition = yaml.safe_load(offer.read_text())
    definition["policy"]["ramp"] = {"steps": [0.2, 0.5, 1.0], "hold_hours": 0}
    offer.write_text(yaml.safe_dump(definition, sort_keys=False))
    (experiments_dir / "holdouts").mkdir()
    for holdout in (EXAMPLES / "holdouts").glob("*.yaml"):
        (experiments_dir / "holdouts" / holdout.name).write_text(holdout.read_text())
    server = server_factory(
        db, experiments_dir, ABX_ALLOCATION_SETTLE_SECONDS="0.5", ABX_RELOAD_POLL_SECONDS="0.2"
    )
    client = Client(server.base_url, server.key, fallback_timeout=10.0, flush_interval=0.1)
    assert client.wait_ready(10)
    yield server, client
    client.close()


def set_state(db: str, experiments_dir: Path, key: str, state: ExperimentState) -> None:
    """What the decision cycle writes (its own function), without waiting for evidence."""
    experiment = Experiment.model_validate(
        yaml.safe_load((experiments_dir / f"{key}.yaml").read_text())
    )
    with psycopg.connect(db, autocommit=True) as conn:
        load_state(conn, experiment)  # the row exists once the decisions first looked
        save_state(conn, experiment, state)


def test_sdk_agrees_with_the_server_through_every_change(
    agreement_server: tuple[Server, Client], db: str, experiments_dir: Path
) -> None:
    server, client = agreement_server
    api = Api(server.base_url)
    first = compare(client, api, "as configured")
    assert first.get("local:hashed", 0) > UNITS and "server:sticky" not in first
    assert {"local:forced", "local:targeted-out", "local:not-in-layer", "local:not-in-coverage",
            "local:experiment-not-running", "local:holdout"} <= set(first)  # fmt: skip
    assert client.flush(30)  # the SDK's first assignments are stored before weights move
    check_holdout_exposures(db)

    embeddings = experiments_dir / "search_embeddings.yaml"
    definition = yaml.safe_load(embeddings.read_text())
    definition["variants"][0]["weight"], definition["variants"][1]["weight"] = 0.2, 0.8
    embeddings.write_text(yaml.safe_dump(definition, sort_keys=False))

    def reweighted(snapshot: Any) -> bool:
        compiled = snapshot.experiments["search_embeddings"]
        return compiled.bounds == (0.2, 1.0) and bool(compiled.moved)

    assert wait_for(lambda: settled(client, server, reweighted), timeout=60)
    after_weights = compare(client, api, "after a weight change")
    assert after_weights.get("server:sticky", 0) > 0  # moved units kept their first variant

    set_state(db, experiments_dir, "retention_offer", ExperimentState("ramping", ramp_step=1))
    assert wait_for(lambda: settled(
        client, server, lambda s: s.experiments["retention_offer"].coverage == 0.5), timeout=60)  # fmt: skip
    compare(client, api, "after a ramp step")

    set_state(db, experiments_dir, "search_reranker", ExperimentState("halted"))
    assert wait_for(lambda: settled(
        client, server, lambda s: s.experiments["search_reranker"].stopped == "experiment-halted"),
        timeout=60)  # fmt: skip
    compare(client, api, "after a halt")

    promoted = api.post("/v1/experiments/checkout_ranker/actions",
                        {"action": "promote", "variant": "ranker_v2", "reason": "agreement"})  # fmt: skip
    assert promoted.status_code == 201, promoted.text
    assert wait_for(lambda: settled(
        client, server, lambda s: s.experiments["checkout_ranker"].winner == "ranker_v2"), timeout=60)  # fmt: skip
    after_promotion = compare(client, api, "after a promotion")
    assert after_promotion.get("local:promoted", 0) > 0
    assert after_promotion.get("local:holdout", 0) > 0  # a launch never reaches held-out units

    rolled = api.post("/v1/experiments/search_embeddings/actions",
                      {"action": "rollback", "variant": "embeddings_v2", "reason": "agreement"})  # fmt: skip
    assert rolled.status_code == 201, rolled.text
    assert wait_for(lambda: settled(
        client, server, lambda s: "embeddings_v2" in s.experiments["search_embeddings"].rolled_back),
        timeout=60)  # fmt: skip
    last = compare(client, api, "after a rollback")
    assert last.get("local:rolled-back", 0) > 0
    assert "sdk-server-unavailable" not in client.stats()


def check_holdout_exposures(db: str) -> None:
    """The SDK's local answers reached the holdout's exposures, each unit in the group its
    hash gives (held out: fraction < share), with both groups present."""
    holdout = yaml.safe_load((EXAMPLES / "holdouts" / "launches_2026.yaml").read_text())
    seed = f"{holdout['key']}.v1"
    prefix = hash_prefix("holdout", holdout["key"], seed)
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT unit_id, variant_key FROM exposures WHERE experiment_key = %s AND seed = %s",
            (holdout["key"], seed),
        ).fetchall()
    groups = {group for _, group in rows}
    assert groups == {"holdout", "rest"}, groups
    for unit, group in rows:
        assert (unit_fraction(prefix, unit) < holdout["share"]) == (group == "holdout"), unit
