"""Stickiness end to end: real gunicorn servers restarted on edited YAML, one PostgreSQL."""

from __future__ import annotations

import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml

from tests.conftest import Api, ServerFactory, wait_for

SETTLE = {"ABX_ALLOCATION_SETTLE_SECONDS": "0.5"}


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def set_weights(path: Path, weights: list[float]) -> None:
    definition = yaml.safe_load(path.read_text())
    for variant, weight in zip(definition["variants"], weights, strict=True):
        variant["weight"] = weight
    path.write_text(yaml.safe_dump(definition, sort_keys=False))


def assign_all(api: Api, units: list[str]) -> dict[str, dict[str, object]]:
    return {unit: api.assign("search_embeddings", unit) for unit in units}


def test_units_keep_their_variant_across_a_weight_change_and_restart(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    units = [f"user-{i}" for i in range(300)]
    first = server_factory(db, experiments_dir, **SETTLE)
    before = assign_all(Api(first.base_url, key=None), units)
    assert first.stop() == 0  # graceful: buffered first assignments are flushed

    yaml_file = experiments_dir / "search_embeddings.yaml"
    set_weights(yaml_file, [0.1, 0.9])
    second = server_factory(db, experiments_dir, **SETTLE)
    api = Api(second.base_url, key=None)

    def switched() -> bool:
        summary = api.get("/v1/experiments/search_embeddings").json()
        return not summary["allocation_pending"] and summary["variants"][1]["weight"] == 0.9

    assert wait_for(switched, timeout=30)
    after = assign_all(api, units)
    for unit in units:
        assert after[unit]["variant"] == before[unit]["variant"], unit
    moved = [u for u in units if after[u]["reason"] == "sticky"]
    assert moved, "some units must have needed their stored assignment"
    fresh = assign_all(api, [f"fresh-{i}" for i in range(600)])
    exposed = [a["variant"] for a in fresh.values() if a["in_experiment"]]
    assert 0.84 < exposed.count("embeddings_v2") / len(exposed) < 0.96


def test_a_new_version_rerandomizes(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    units = [f"user-{i}" for i in range(400)]
    first = server_factory(db, experiments_dir, **SETTLE)
    before = assign_all(Api(first.base_url, key=None), units)
    first.stop()
    edit(
        experiments_dir / "search_embeddings.yaml",
        "owner: search-team@example.com",
        "owner: search-team@example.com\nversion: 2",
    )
    second = server_factory(db, experiments_dir, **SETTLE)
    after = assign_all(Api(second.base_url, key=None), units)
    both = [u for u in units if before[u]["in_experiment"] and after[u]["in_experiment"]]
    changed = sum(before[u]["variant"] != after[u]["variant"] for u in both)
    assert len(both) > 50 and 0.3 < changed / len(both) < 0.7  # independent coin flips


def heartbeat_of(db: str, pid: int) -> datetime:
    """When the serving process ``pid`` last sent its heartbeat (its state poll)."""
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT seen_at FROM writer_heartbeats WHERE worker_id LIKE %s", (f"%:{pid}:%",)
        ).fetchone()
    assert row is not None, f"no heartbeat of {pid}"
    seen: datetime = row[0]
    return seen


def allocation_of(api: Api, key: str) -> tuple[list[float], Any]:
    """(weights in force, announced weights) as the server's snapshot publishes them."""
    experiment = api.get("/v1/sdk/config").json()["experiments"][key]
    return [v["weight"] for v in experiment["variants"]], experiment["allocation"][
        "pending_weights"
    ]


def test_a_late_worker_holds_the_switch_until_it_has_flushed(
    server_factory: ServerFactory, db: str, experiments_dir: Path, tmp_path: Path
) -> None:
    # A: one worker that reads the allocations every 5 s (the most allowed) and flushes only
    # when it stops. B: reads every 0.2 s and reloads its YAML every 0.2 s.
    second_dir = tmp_path / "experiments-b"
    shutil.copytree(experiments_dir, second_dir)
    late = server_factory(db, experiments_dir, ABX_WORKERS="1", ABX_STATE_POLL_SECONDS="5",
                          ABX_FLUSH_INTERVAL_SECONDS="3600", ABX_DATA_DIR=str(tmp_path / "a"),
                          **SETTLE)  # fmt: skip
    prompt = server_factory(db, second_dir, ABX_RELOAD_POLL_SECONDS="0.2",
                            ABX_DATA_DIR=str(tmp_path / "b"), **SETTLE)  # fmt: skip
    late_api, prompt_api = Api(late.base_url), Api(prompt.base_url)
    (worker,) = [int(p) for p in Path(f"/proc/{late.process.pid}/task/{late.process.pid}/children")
                 .read_text().split()]  # fmt: skip
    assert wait_for(lambda: allocation_of(prompt_api, "search_embeddings")[1] is None)

    # Right after A's poll, B announces new weights: they are due 0.5 s later, A hears ~5 s on.
    polled = heartbeat_of(db, worker)
    assert wait_for(lambda: heartbeat_of(db, worker) > polled, timeout=15, interval=0.02)
    set_weights(second_dir / "search_embeddings.yaml", [0.1, 0.9])
    assert wait_for(lambda: allocation_of(prompt_api, "search_embeddings")[1] == [0.1, 0.9],
                    timeout=3, interval=0.02)  # fmt: skip
    time.sleep(0.6)  # past the switch time
    assert allocation_of(late_api, "search_embeddings") == ([0.5, 0.5], None), "A heard in time"

    # A, late, assigns under the old weights after the switch time; its rows stay buffered.
    units = [f"late-{i}" for i in range(150)]
    seen = {unit: late_api.assign("search_embeddings", unit)["variant"] for unit in units}
    assert allocation_of(late_api, "search_embeddings")[1] is None, "A heard while assigning"

    # A reads the announcement, then reads again: still holding those rows, it holds B too.
    for _ in range(2):
        polled = heartbeat_of(db, worker)
        assert wait_for(lambda: heartbeat_of(db, worker) > polled, timeout=15, interval=0.05)  # noqa: B023
    time.sleep(1.0)  # several of B's polls
    # B holds the units the change moves (control, unexposed) or agrees with A.
    answers = {unit: prompt_api.assign("search_embeddings", unit) for unit in units}
    second = [u for u, a in answers.items() if a["in_experiment"] and a["variant"] != seen[u]]
    assert not second, f"{len(second)} of {len(units)} units given a second variant"
    assert allocation_of(prompt_api, "search_embeddings") == ([0.5, 0.5], [0.1, 0.9])

    assert late.stop() == 0  # graceful: A flushes its rows and leaves
    assert wait_for(lambda: allocation_of(prompt_api, "search_embeddings")[1] is None, timeout=20)
    assert allocation_of(prompt_api, "search_embeddings")[0] == [0.1, 0.9]
    for unit in units:
        assert prompt_api.assign("search_embeddings", unit)["variant"] == seen[unit], unit
