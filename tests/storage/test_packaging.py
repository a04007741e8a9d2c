"""A wheel of abx carries what it needs to run: its packages and the migrations."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import psycopg

from service.settings import PROJECT_ROOT


def test_the_wheel_lists_every_package_of_the_tree() -> None:
    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    in_tree = {
        ".".join(init.parent.relative_to(PROJECT_ROOT).parts)
        for top in ("service", "analysis", "dashboards")
        for init in (PROJECT_ROOT / top).rglob("__init__.py")
    }
    assert in_tree | {"service.storage.schema"} == set(config["packages"])
    assert config["package-dir"]["service.storage.schema"] == "migrations"


def test_a_non_editable_install_runs_abx_migrate(tmp_path: Path, empty_db: str) -> None:
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(PROJECT_ROOT)],
        check=True, capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("abx-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        check=True, capture_output=True,
    )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target), "ABX_DATABASE_URL": empty_db}
    run = subprocess.run(
        [sys.executable, "-c", "import service, sys; print(service.__file__); sys.argv = ['abx', 'migrate'];"
         " from service.cli.main import main; main()"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(str(target / "service")), run.stdout  # not the source tree
    migrations = sorted(p.name for p in (PROJECT_ROOT / "migrations").glob("*.sql"))
    with psycopg.connect(empty_db) as conn:
        applied = [row[0] for row in conn.execute("SELECT name FROM schema_migrations ORDER BY 1")]
    assert applied == migrations
