"""The README's first command: ``abx demo`` on embedded defaults, and the embedded PostgreSQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from service.settings import PROJECT_ROOT
from tests.conftest import free_port


def abx(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env={**os.environ, **env},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """World-readable: as root, the embedded server runs as its own system user."""
    folder = Path(tempfile.mkdtemp(prefix="abx-data-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_demo_runs_the_whole_loop_until_the_better_model_is_promoted(
    db: str, tmp_path: Path
) -> None:
    # The demo stops ten seconds after the promotion (about 40 s on an idle two-core machine);
    # the long cap only matters when the rest of the suite shares the cores.
    result = abx(
        "demo", "--duration", "420", "--analysis-interval", "2", "--port", str(free_port()),
        "--users", "8000", "--clients", "4",
        env={"ABX_DATABASE_URL": db, "ABX_DATA_DIR": str(tmp_path / "data")},
        timeout=540,
    )  # fmt: skip
    log = tmp_path / "data" / "demo-worker.log"
    shown = result.stdout[-4000:] + (log.read_text()[-4000:] if log.exists() else "")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "units that changed variant: 0" in result.stdout, shown
    assert "exposures stored in PostgreSQL" in result.stdout, shown
    assert "predict checkout_ranker: " in result.stdout, shown
    assert ">>> retention_offer: the worker promoted mlp" in result.stdout, shown
    assert ">>> offer_banner: the bandit moved traffic" in result.stdout, shown
    assert "Where to look:" in result.stdout, shown
    # The example holdout: both groups exposed, and its retention effect reported.
    assert "holdout launches_2026 (3%): held out" in result.stdout, shown
    assert "retained rest - holdout" in result.stdout, shown
    with psycopg.connect(db) as conn:
        (exposures,) = conn.execute("SELECT count(*) FROM exposures").fetchone()  # type: ignore[misc]
        keys = conn.execute("SELECT name, revoked_at IS NOT NULL FROM api_keys").fetchall()
    assert exposures > 0
    # Nothing to set: the demo made its own keys, said how to use them, and revoked them.
    assert "keys for this run (revoked when it ends)" in result.stdout, shown
    assert "-H 'Authorization: Bearer abx_live_" in result.stdout, shown
    assert sorted(keys) == [("demo-analyst", True), ("demo-web-app", True)]


def test_embedded_postgres_when_no_url_is_configured(data_dir: Path) -> None:
    env = {"ABX_DATABASE_URL": "", "ABX_DATA_DIR": str(data_dir)}
    first = abx("migrate", env=env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "migration(s): 0001_core.sql, " in first.stdout  # and every later one
    assert (data_dir / "pgdata" / "PG_VERSION").exists()
    again = abx("migrate", env=env)
    assert again.returncode == 0 and "applied 0 migration(s)" in again.stdout
