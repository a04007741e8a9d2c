"""``abx status``: what it says when parts are up, and when they are not."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
from click.testing import CliRunner

from service.cli.main import main
from service.experiments.schema import Experiment
from tests.conftest import ServerFactory, free_port
from tests.experiment_files import minimal_experiment, write_experiment


def run_status(runner: CliRunner, env: dict[str, str], *args: str) -> tuple[int, str]:
    result = runner.invoke(main, ["status", *args], env=env)
    return result.exit_code, result.output


def test_a_server_without_a_worker(
    server_factory: ServerFactory, db: str, tmp_path: Path, runner: CliRunner
) -> None:
    experiments = tmp_path / "experiments"
    write_experiment(experiments, minimal_experiment("plain"))
    write_experiment(experiments, minimal_experiment("analysed"))
    server = server_factory(db, experiments)
    assert server.metrics_url is not None
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO analysis_runs (experiment_key, seed, numbers, created_at)"
            " VALUES ('analysed', %s, '{}', now() - interval '30 seconds')",
            (Experiment.model_validate(minimal_experiment("analysed")).seed,),
        )
    env = {"ABX_BIND": server.base_url.removeprefix("http://"),
           "ABX_METRICS_BIND": server.metrics_url.split("/")[2],
           "ABX_WORKER_METRICS_BIND": f"127.0.0.1:{free_port()}",  # nothing listens
           "ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(experiments),
           "ABX_ANALYSIS_INTERVAL_SECONDS": "60"}  # fmt: skip
    code, output = run_status(runner, env)
    assert code == 1  # the worker's metrics are missing
    assert "server     ready" in output
    assert "worker metrics UNAVAILABLE" in output
    assert "writer_rows_dropped" in output and "spool_bytes" in output
    assert "plain                    never analysed STALE; awaiting approval: 0" in output
    assert "analysed                 last analysed" in output
    code, output = run_status(runner, env, "--json")
    report = json.loads(output)
    assert report["server"]["ready"] is True and "error" in report["worker_metrics"]
    assert report["server_metrics"]["spool_bytes"] == {"events": 0.0, "writes": 0.0}
    assert 25 < report["decisions"]["experiments"]["analysed"]["last_analysis_seconds_ago"] < 600


def test_nothing_running(tmp_path: Path, runner: CliRunner) -> None:
    experiments = tmp_path / "experiments"
    write_experiment(experiments, minimal_experiment("plain"))
    env = {"ABX_BIND": f"127.0.0.1:{free_port()}", "ABX_METRICS_BIND": f"127.0.0.1:{free_port()}",
           "ABX_WORKER_METRICS_BIND": "", "ABX_EXPERIMENTS": str(experiments),
           "ABX_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/none"}  # fmt: skip
    code, output = run_status(runner, env)
    assert code == 1
    assert "server     NOT READY" in output and "ConnectionError" in output
    assert "server metrics UNAVAILABLE" in output
    assert "worker metrics UNAVAILABLE ( ABX_WORKER_METRICS_BIND is empty" in output
    assert "decisions  UNAVAILABLE (OperationalError" in output
