"""``abx migrate``: ordered, recorded, idempotent, safe under concurrency, tamper-evident."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from service.cli.main import main
from service.storage.migrations import MigrationError, apply_migrations, read_migrations
from tests.conftest import MIGRATIONS


def tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    return {row[0] for row in rows}


def test_applies_in_order_and_records_versions(empty_db: str) -> None:
    applied = apply_migrations(empty_db, MIGRATIONS)
    assert applied == [m.name for m in read_migrations(MIGRATIONS)]
    assert {
        "experiments",
        "allocations",
        "assignments",
        "exposures",
        "schema_migrations",
    } <= tables(empty_db)
    assert apply_migrations(empty_db, MIGRATIONS) == []


def test_concurrent_runs_apply_each_migration_once(empty_db: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: apply_migrations(empty_db, MIGRATIONS), range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, len(read_migrations(MIGRATIONS))]


def test_a_changed_migration_is_refused(empty_db: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, folder)
    apply_migrations(empty_db, folder)
    first = sorted(folder.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited\n")
    with pytest.raises(MigrationError, match="was changed after it was applied"):
        apply_migrations(empty_db, folder)


def test_a_failing_migration_leaves_nothing_behind(empty_db: str, tmp_path: Path) -> None:
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, folder)
    (folder / "9999_broken.sql").write_text(
        "CREATE TABLE half_done (x int);\nSELECT no_such_function();\n"
    )
    with pytest.raises(MigrationError, match=r"9999_broken\.sql failed"):
        apply_migrations(empty_db, folder)
    assert "half_done" not in tables(empty_db)


def test_badly_named_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "create_things.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"NNNN_name\.sql"):
        read_migrations(tmp_path)


def test_cli_migrate(runner: CliRunner, empty_db: str) -> None:
    first = runner.invoke(main, ["migrate"], env={"ABX_DATABASE_URL": empty_db})
    assert first.exit_code == 0 and "0001_core.sql" in first.output
    again = runner.invoke(main, ["migrate"], env={"ABX_DATABASE_URL": empty_db})
    assert again.exit_code == 0 and "applied 0 migration(s)" in again.output


def test_cli_migrate_reports_failure(runner: CliRunner, empty_db: str, tmp_path: Path) -> None:
    (tmp_path / "0001_bad.sql").write_text("SELEC 1;")
    result = runner.invoke(
        main, ["migrate"], env={"ABX_DATABASE_URL": empty_db, "ABX_MIGRATIONS": str(tmp_path)}
    )
    assert result.exit_code == 1 and "migration failed: 0001_bad.sql failed" in result.output


def test_finer_latency_bins_rebuild_model_health_from_predictions(
    empty_db: str, tmp_path: Path
) -> None:
    """0024: histograms rolled up at 20 bins a decade are rebuilt at 100 from ``predictions``."""
    from datetime import timedelta

    from service.events import latency
    from service.events.rollup import roll_up_once
    from service.events.sums import model_health

    before = tmp_path / "before"
    before.mkdir()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        if path.name < "0024":
            shutil.copy(path, before / path.name)
    apply_migrations(empty_db, before)
    served = [0.5, 4.0, 4.3, 40.0]  # 4.0 and 4.3 ms share a 12 % bin, not a 2.3 % one
    with psycopg.connect(empty_db) as conn:
        for latency_ms in served:
            conn.execute(
                "INSERT INTO predictions (experiment_key, unit_id, variant_key, reason,"
                " in_experiment, served_by, model_sha256, provider, batch_rows, latency_ms,"
                " fallback, cached, shadow, predicted_at) VALUES ('e', 'u', 'a', 'hashed', true,"
                " 'a', 'x', 'cpu', 1, %s, false, false, false, now())",
                (latency_ms,),
            )
        conn.execute(  # what the rollup wrote before 0024: 142 coarse bins
            "INSERT INTO model_health VALUES ('e', 'a', current_date, 4, 0, %s)",
            ([0] * 70 + [4] + [0] * 71,),
        )
        conn.execute("UPDATE rollup_state SET value = 4 WHERE name = 'predictions'")
    apply_migrations(empty_db, MIGRATIONS)
    with psycopg.connect(empty_db) as conn:
        assert conn.execute("SELECT count(*) FROM model_health").fetchone() == (0,)
        while roll_up_once(conn, lambda key: timedelta(days=7), timedelta(hours=1)) != (0, 0):
            pass
        health = model_health(conn, "e")["a"]
    assert health.requests == len(served)
    assert len(health.latency_counts) == latency.BIN_COUNT
    assert [i for i, count in enumerate(health.latency_counts) if count] == sorted(
        latency.bin_of(value) for value in served
    )
