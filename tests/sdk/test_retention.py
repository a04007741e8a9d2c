"""SDK exposure batch ids are kept as long as a resend can still be accepted, then pruned.

A resent batch is recognised by its id in ``sdk_exposure_batches``; the server refuses an
exposure more than 30 days old, so an id older than that protects nothing and is pruned by the
beat's periodic analysis task (``ABX_SDK_BATCH_RETENTION_DAYS``, 31 by default).
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import psutil
import psycopg

from service.assignment.exposures import prune_batches
from service.settings import PROJECT_ROOT, Settings
from tests.conftest import free_port, wait_for

AGES_DAYS = {"ancient": 400.0, "old": 31.5, "recent": 29.0, "fresh": 0.0}


def insert_batches(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        for batch_id, days in AGES_DAYS.items():
            conn.execute(
                "INSERT INTO sdk_exposure_batches (batch_id, items, received_at)"
                " VALUES (%s, 1, now() - %s)",
                (batch_id, timedelta(days=days)),
            )


def batch_ids(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {row[0] for row in conn.execute("SELECT batch_id FROM sdk_exposure_batches")}


def test_the_default_retention_outlasts_the_oldest_exposure_accepted() -> None:
    from service.api.sdk import OLDEST_EXPOSURE

    assert timedelta(days=Settings().sdk_batch_retention_days) > OLDEST_EXPOSURE


def test_ids_past_the_retention_are_pruned_and_the_rest_kept(db: str) -> None:
    insert_batches(db)
    with psycopg.connect(db, autocommit=True) as conn:
        pruned, oldest = prune_batches(conn, timedelta(days=31), chunk=1)
    assert pruned == 2
    assert batch_ids(db) == {"recent", "fresh"}
    assert oldest is not None and abs(oldest - 29 * 86400) < 600
    with psycopg.connect(db, autocommit=True) as conn:
        again, _ = prune_batches(conn, timedelta(days=31))
        conn.execute("DELETE FROM sdk_exposure_batches")
        assert prune_batches(conn, timedelta(days=31)) == (0, None)
    assert again == 0


def test_the_beat_prunes_old_batch_ids(db: str, tmp_path: Path, experiments_dir: Path,
                                       celery_broker: dict[str, str]) -> None:  # fmt: skip
    insert_batches(db)
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker", "--beat", "--concurrency", "1"],
        env={**os.environ, **celery_broker, "ABX_DATABASE_URL": db,
             "ABX_EXPERIMENTS": str(experiments_dir), "ABX_ANALYSIS_INTERVAL_SECONDS": "1",
             "ABX_WORKER_METRICS_BIND": f"127.0.0.1:{free_port()}",
             "ABX_DATA_DIR": str(tmp_path / "data")},
        cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        assert wait_for(lambda: batch_ids(db) == {"recent", "fresh"}, timeout=90), (
            tmp_path / "worker.log"
        ).read_text(errors="replace")[-3000:]
    finally:
        for child in psutil.Process(worker.pid).children(recursive=True):
            child.kill()
        worker.kill()
        worker.wait()
        log.close()
