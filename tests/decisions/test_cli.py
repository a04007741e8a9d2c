"""``abx analyze``, ``abx action``, ``abx export-state`` and webhook retries, without a broker."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from service.cli.main import main
from service.cli.support import os_actor
from service.decisions.webhooks import retry_delay_seconds
from tests.conftest import free_port
from tests.decisions.test_e2e import SECRET, decision_experiment
from tests.experiment_files import write_experiment
from tests.traffic import simulate, simulate_lift


class FlakyReceiver:
    """Fails the first ``failures`` posts with HTTP 500, then accepts."""

    def __init__(self, failures: int) -> None:
        self.calls: list[bytes] = []
        calls, remaining = self.calls, [failures]

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                calls.append(self.rfile.read(int(self.headers["Content-Length"])))
                status = 500 if remaining[0] > 0 else 204
                remaining[0] -= 1
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def flaky() -> Iterator[FlakyReceiver]:
    receiver = FlakyReceiver(failures=1)
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


@pytest.fixture
def env(db: str, tmp_path: Path, flaky: FlakyReceiver) -> dict[str, str]:
    folder = tmp_path / "experiments"
    folder.mkdir()
    write_experiment(folder, decision_experiment("lift", flaky.url))
    return {"ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(folder), "ABX_WEBHOOK_SECRET": SECRET,
            "ABX_DATA_DIR": str(tmp_path / "data")}  # fmt: skip


def reset_worker_context() -> None:
    """The worker context is per process: close it so the next command builds one for its settings."""
    from service.decisions.tasks import context

    if context.cache_info().currsize:
        context().database.close()
    context.cache_clear()


@pytest.fixture(autouse=True)
def _close_worker_context() -> Iterator[None]:
    yield
    reset_worker_context()


def fresh_cli(runner: CliRunner, args: list[str], env: dict[str, str]) -> Any:
    reset_worker_context()
    return runner.invoke(main, args, env=env)


def test_analyze_prints_the_decision_and_delivers_webhooks(
    runner: CliRunner, db: str, env: dict[str, str], flaky: FlakyReceiver
) -> None:
    simulate_lift(db)
    result = fresh_cli(runner, ["analyze", "lift"], env)
    assert result.exit_code == 0, result.output
    assert "lift: promote b" in result.output and '"srm"' in result.output
    assert len(flaky.calls) == 1  # first attempt failed with HTTP 500: still pending
    with psycopg.connect(db) as conn:
        status, attempts, error = conn.execute(
            "SELECT status, attempts, last_error FROM webhook_deliveries"
        ).fetchone()  # type: ignore[misc]
    assert (status, attempts, error) == ("pending", 1, "HTTP 500")
    again = fresh_cli(runner, ["analyze", "lift"], env)
    assert "lift: continue" in again.output and "the experiment is promoted" in again.output
    assert json.loads(flaky.calls[0])["kind"] == "promote"


def test_backoff_grows_and_is_capped() -> None:
    assert [retry_delay_seconds(n) for n in (1, 2, 3, 10)] == [2.0, 4.0, 8.0, 300.0]


def test_action_and_export_state(runner: CliRunner, db: str, env: dict[str, str]) -> None:
    refused = fresh_cli(runner, ["action", "lift", "approve", "--reason", "r"], env)
    assert refused.exit_code == 1 and "no decision awaits approval" in refused.output
    done = fresh_cli(
        runner,
        ["action", "lift", "promote", "--variant", "b", "--reason", "ship"],
        env,
    )
    assert done.exit_code == 0 and "state promoted" in done.output
    with psycopg.connect(db) as conn:
        (actor,) = conn.execute("SELECT actor FROM decisions WHERE kind = 'promote'").fetchone()  # type: ignore[misc]
    assert actor == os_actor() and actor.startswith("cli:")  # the OS user, not a typed name
    typed = fresh_cli(runner, ["action", "lift", "pause", "--actor", "ana", "--reason", "r"], env)
    assert typed.exit_code == 2 and "No such option" in typed.output and "--actor" in typed.output
    diff = fresh_cli(runner, ["export-state"], env)
    assert (
        "+status: concluded" in diff.output
        and "weight: 0" in diff.output
        and "weight: 1" in diff.output
    )
    written = fresh_cli(runner, ["export-state", "--write"], env)
    assert written.exit_code == 0
    text = (Path(env["ABX_EXPERIMENTS"]) / "lift.yaml").read_text()
    assert text.startswith("# abx: promoted (b)") and "status: concluded" in text
    assert "{key: a, weight: 0}" in text and "{key: b, weight: 1}" in text
    check = runner.invoke(main, ["validate", env["ABX_EXPERIMENTS"]])
    assert check.exit_code == 0, check.output
    unknown = fresh_cli(runner, ["analyze", "ghost"], env)
    assert unknown.exit_code == 1 and "no experiment 'ghost'" in unknown.output


@pytest.mark.parametrize("method", ["group_sequential", "confidence_sequence", "msprt"])
def test_every_method_analyses_and_stores_its_numbers(
    runner: CliRunner, db: str, tmp_path: Path, method: str
) -> None:
    """Intervals can be unbounded before the first formal look: they are stored as null."""
    folder = tmp_path / f"experiments-{method}"
    folder.mkdir()
    write_experiment(
        folder, decision_experiment("early", "http://127.0.0.1:9/unused", method=method)
    )
    simulate(
        db,
        "early",
        "early.v1",
        {"a": 300, "b": 300},
        {"a": {"conversion": 0.1}, "b": {"conversion": 0.12}},
        5,
        "early",
    )
    env = {
        "ABX_DATABASE_URL": db,
        "ABX_EXPERIMENTS": str(folder),
        "ABX_DATA_DIR": str(tmp_path / "data"),
        "ABX_WEBHOOK_SECRET": SECRET,
    }
    for _ in range(2):  # the second run reads the first run's stored state back
        result = fresh_cli(runner, ["analyze", "early"], env)
        assert result.exit_code == 0, result.output
        assert "early: continue" in result.output
    with psycopg.connect(db) as conn:
        (runs,) = conn.execute(
            "SELECT count(*) FROM analysis_runs WHERE experiment_key = 'early'"
        ).fetchone()  # type: ignore[misc]
    assert runs == 2
