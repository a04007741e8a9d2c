"""`abx backup` and `abx restore`: a restored database answers as the original did."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from tests.conftest import PROJECT_ROOT, Api, ServerFactory, wait_for
from tests.experiment_files import minimal_experiment, write_experiment

UNITS = [f"user-{i}" for i in range(120)]


def abx(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ABX_DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def read(api: Api, path: str) -> Any:
    for _ in range(10):  # 503: every pooled connection busy on a loaded machine
        response = api.get(path)
        if response.status_code != 503:
            break
        time.sleep(0.5)
    assert response.status_code == 200, response.text
    return response.json()


def answers(api: Api) -> tuple[dict[str, str | None], Any, Any]:
    variants = {unit: api.assign("exp", unit)["variant"] for unit in UNITS}
    metrics = read(api, "/v1/experiments/exp/metrics")["metrics"]
    decisions = read(api, "/v1/experiments/exp/decisions")
    return variants, metrics, decisions


def test_restore_into_a_new_database_answers_the_same(
    db: str, empty_db: str, server_factory: ServerFactory, tmp_path: Path
) -> None:
    folder = tmp_path / "experiments"
    write_experiment(folder, minimal_experiment())
    api = Api(server_factory(db, folder).base_url)
    variants = {unit: api.assign("exp", unit)["variant"] for unit in UNITS}
    events = [
        {"event_id": f"e-{unit}", "experiment": "exp", "unit": unit, "metric": "conversion",
         "value": i % 3 == 0}
        for i, unit in enumerate(UNITS)
    ]  # fmt: skip
    assert api.post("/v1/events", {"events": events}).status_code == 202
    for action in ("pause", "resume"):  # two audit entries; serving back to the variants
        acted = api.post("/v1/experiments/exp/actions", {"action": action, "reason": "backup test"})
        assert acted.status_code == 201, acted.text

    def rolled_up() -> bool:
        metrics = read(api, "/v1/experiments/exp/metrics")["metrics"]
        return sum(m["units"] for m in metrics if m["metric"] == "conversion") == len(UNITS)

    assert wait_for(rolled_up, timeout=30), read(api, "/v1/experiments/exp/metrics")
    before = answers(api)
    assert before[0] == variants

    dump = tmp_path / "abx.dump"
    done = abx("backup", str(dump), database_url=db)
    assert done.returncode == 0, done.stderr
    restored = abx("restore", str(dump), database_url=empty_db)
    assert restored.returncode == 0, restored.stderr

    # New weights in the YAML: a unit that only hashing placed would now often move, so the
    # same variants below come from the restored assignments, not from the hash.
    write_experiment(
        folder,
        minimal_experiment(variants=[{"key": "a", "weight": 0.1}, {"key": "b", "weight": 0.9}]),
    )
    again = Api(server_factory(empty_db, folder).base_url)
    assert answers(again) == before


def test_restore_refuses_a_database_that_has_tables(db: str, tmp_path: Path) -> None:
    dump = tmp_path / "abx.dump"
    assert abx("backup", str(dump), database_url=db).returncode == 0
    with psycopg.connect(db) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    refused = abx("restore", str(dump), database_url=db)
    assert refused.returncode == 1
    assert "restore failed: the target database is not empty" in refused.stderr
    with psycopg.connect(db) as conn:  # nothing was loaded over it
        assert (
            conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
            == tables
        )


def test_a_failed_backup_leaves_no_file(tmp_path: Path) -> None:
    dump = tmp_path / "abx.dump"
    failed = abx("backup", str(dump), database_url="postgresql://postgres@127.0.0.1:1/none")
    assert failed.returncode == 1 and "backup failed:" in failed.stderr
    assert list(tmp_path.iterdir()) == []
