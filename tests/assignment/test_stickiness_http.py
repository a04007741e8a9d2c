"""Stickiness end to end: real gunicorn servers restarted on edited YAML, one PostgreSQL."""

from __future__ import annotations

from pathlib import Path

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
