"""The whole loop with the run's real broker and real Celery worker processes.

The broker is Redis or RabbitMQ where one answers, else kombu's filesystem transport
(see ``celery_broker``): the workers are real processes either way.

Simulated traffic goes into PostgreSQL; the worker's beat analyses every second;
decisions must reach serving, the audit log and a local webhook receiver.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from service.decisions.store import experiment_lock_key
from service.settings import PROJECT_ROOT
from tests.conftest import Api, ServerFactory, free_port, wait_for
from tests.experiment_files import minimal_experiment, write_experiment
from tests.traffic import simulate, simulate_lift

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # the Standard Webhooks spec's example secret


def decision_experiment(key: str, webhook: str, **policy: Any) -> dict[str, Any]:
    """A two-arm experiment the workers may decide on quickly, announcing to ``webhook``."""
    guardrail = {"name": "error_rate", "type": "binary", "direction": "decrease",
                 "margin": 0.02, "margin_type": "absolute"}  # fmt: skip
    return minimal_experiment(
        key,
        description="Decision test.",
        metrics={"primary": {"name": "conversion", "type": "binary"}, "guardrails": [guardrail]},
        policy={"min_units": 200, "min_runtime_hours": 0, "planned_units": 20000,
                "webhooks": [webhook], **policy},
    )  # fmt: skip


class Receiver:
    """A local webhook endpoint that records what it gets."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        received = self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


@pytest.fixture
def decision_setup(tmp_path: Path, receiver: Receiver) -> Path:
    folder = tmp_path / "experiments"
    folder.mkdir()
    for key in ("lift", "aa", "broken", "srm"):
        write_experiment(folder, decision_experiment(key, receiver.url))
    return folder


WorkerFactory = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def start_worker(tmp_path: Path, db: str, celery_broker: dict[str, str]) -> Iterator[WorkerFactory]:
    workers: list[subprocess.Popen[bytes]] = []
    logs = []

    def start(experiments: Path, **env: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"worker-{len(workers)}.log").open("wb")
        logs.append(log)
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--beat", "--concurrency", "1"],
            env={**os.environ, "ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(experiments),
                 **celery_broker, "ABX_ANALYSIS_INTERVAL_SECONDS": "1", "ABX_WEBHOOK_SECRET": SECRET,
                 "ABX_WORKER_METRICS_BIND": f"127.0.0.1:{free_port()}",
                 "ABX_DATA_DIR": str(tmp_path / "worker-data"), **env},
            cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        workers.append(process)
        return process

    yield start
    for process in workers:
        for child in (
            psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []
        ):
            child.kill()
        process.kill()
        process.wait()
    for log in logs:
        log.close()


def decisions(db: str, key: str) -> list[tuple[str, str | None, str]]:
    with psycopg.connect(db) as conn:
        return conn.execute(
            "SELECT kind, variant_key, status FROM decisions WHERE experiment_key = %s ORDER BY created_at",
            (key,),
        ).fetchall()


def analysis_runs(db: str, key: str) -> int:
    with psycopg.connect(db) as conn:
        (count,) = conn.execute(
            "SELECT count(*) FROM analysis_runs WHERE experiment_key = %s", (key,)
        ).fetchone()  # type: ignore[misc]
    return int(count)


def test_the_loop_promotes_rolls_back_halts_and_leaves_aa_alone(
    db: str,
    decision_setup: Path,
    receiver: Receiver,
    start_worker: WorkerFactory,
    server_factory: ServerFactory,
) -> None:
    simulate_lift(db)
    simulate(
        db,
        "aa",
        "aa.v1",
        {"a": 2000, "b": 2000},
        {"a": {"conversion": 0.10}, "b": {"conversion": 0.10}},
        2,
        "aa",
    )
    simulate(db, "broken", "broken.v1", {"a": 600, "b": 600},
             {"a": {"conversion": 0.1, "error_rate": 0.005}, "b": {"conversion": 0.1, "error_rate": 0.25}}, 3, "broken")  # fmt: skip
    simulate(
        db,
        "srm",
        "srm.v1",
        {"a": 2000, "b": 2400},
        {"a": {"conversion": 0.1}, "b": {"conversion": 0.1}},
        4,
        "srm",
    )
    server = server_factory(db, decision_setup, ABX_WEBHOOK_SECRET=SECRET)
    start_worker(decision_setup)

    assert wait_for(lambda: ("promote", "b", "applied") in decisions(db, "lift"), timeout=60)
    assert wait_for(lambda: ("rollback", "b", "applied") in decisions(db, "broken"), timeout=30)
    assert wait_for(lambda: ("halt", None, "applied") in decisions(db, "srm"), timeout=30)
    assert wait_for(lambda: analysis_runs(db, "aa") >= 5, timeout=30)
    assert decisions(db, "aa") == []  # A/A: many looks, never promoted
    assert [kind for kind, _, _ in decisions(db, "lift")] == ["promote"]  # decided once

    api = Api(server.base_url, key=None)
    assert wait_for(lambda: api.assign("lift", "someone")["reason"] == "promoted", timeout=10)
    assert {api.assign("lift", f"u{i}")["variant"] for i in range(20)} == {"b"}
    assert wait_for(
        lambda: api.assign("srm", "someone")["reason"] == "experiment-halted", timeout=10
    )
    rolled = {api.assign("broken", f"u{i}")["reason"] for i in range(40)}
    assert "rolled-back" in rolled  # units hashed into the rolled-back variant get the control
    audit = api.get("/v1/experiments/lift/decisions").json()
    assert audit["current"]["state"] == "promoted" and audit["current"]["winner"] == "b"
    numbers = audit["decisions"][0]["numbers"]
    assert numbers["primary"][0]["variant"] == "b" and numbers["primary"][0]["significant"] is True

    def hooks(kind: str) -> list[dict[str, Any]]:
        return [p for p in receiver.payloads() if p["kind"] == kind]

    assert wait_for(lambda: hooks("halt") and hooks("promote") and hooks("rollback"), timeout=30)
    for headers, body in receiver.requests:  # verified by the reference implementation
        assert Webhook(SECRET).verify(body, headers)["decision_id"]
    assert (
        hooks("halt")[0]["experiment"] == "srm"
        and "sample ratio mismatch" in hooks("halt")[0]["reason"]
    )


def test_humans_act_through_the_api_and_are_audited(
    db: str, decision_setup: Path, receiver: Receiver, server_factory: ServerFactory
) -> None:
    api = Api(server_factory(db, decision_setup, ABX_WEBHOOK_SECRET=SECRET).base_url)
    paused = api.post(
        "/v1/experiments/aa/actions", {"action": "pause", "actor": "ana", "reason": "investigating"}
    )
    assert paused.status_code == 201 and paused.json()["state"] == "paused"
    assert wait_for(lambda: api.assign("aa", "x")["reason"] == "experiment-paused", timeout=10)
    again = api.post(
        "/v1/experiments/aa/actions", {"action": "pause", "actor": "ana", "reason": "twice"}
    )
    assert again.status_code == 409 and again.headers["Content-Type"].startswith(
        "application/problem+json"
    )
    bad = api.post(
        "/v1/experiments/aa/actions",
        {"action": "promote", "variant": "zzz", "actor": "ana", "reason": "r"},
    )
    assert bad.status_code == 422
    missing = api.post(
        "/v1/experiments/aa/actions", {"action": "explode", "actor": "ana", "reason": "r"}
    )
    assert missing.status_code == 422
    assert (
        api.post(
            "/v1/experiments/aa/actions", {"action": "approve", "actor": "ana", "reason": "r"}
        ).status_code
        == 409
    )
    assert (
        api.post(
            "/v1/experiments/aa/actions", {"action": "resume", "actor": "ana", "reason": "ok"}
        ).status_code
        == 201
    )
    promoted = api.post(
        "/v1/experiments/aa/actions",
        {"action": "promote", "variant": "b", "actor": "ana", "reason": "ship it"},
    )
    assert promoted.json()["state"] == "promoted"
    assert wait_for(
        lambda: (
            api.assign("aa", "x")
            == {"experiment": "aa", "variant": "b", "reason": "promoted", "in_experiment": False}
        ),
        timeout=10,
    )
    audit = api.get("/v1/experiments/aa/decisions").json()["decisions"]
    assert [(d["kind"], d["actor"]) for d in audit] == [  # the key's name, not the body's
        ("pause", "key:test-suite"),
        ("resume", "key:test-suite"),
        ("promote", "key:test-suite"),
    ]
    assert api.get("/v1/experiments/ghost/decisions").status_code == 404


def test_a_worker_killed_mid_analysis_leaves_no_half_decision(
    db: str, decision_setup: Path, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    simulate_lift(db)
    slow = Path(__file__).parents[1] / "faults" / "slow_decision"
    pidfile = tmp_path / "deciding.pid"
    worker = start_worker(
        decision_setup,
        PYTHONPATH=str(slow),
        ABX_TEST_DECISION_SLEEP="4",
        ABX_TEST_DECISION_PIDFILE=str(pidfile),
    )

    key = experiment_lock_key("lift") & 0xFFFFFFFFFFFFFFFF

    def in_decision() -> bool:
        """The worker holds the experiment's advisory lock: it is inside the decision."""
        with psycopg.connect(db) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
                " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                " AND classid::bigint = %s AND objid::bigint = %s",
                (key >> 32, key & 0xFFFFFFFF),
            ).fetchone()
        return bool(row and row[0])

    assert wait_for(in_decision, timeout=60, interval=0.1)
    assert wait_for(pidfile.exists, timeout=10)
    # The pool process inside the decision, killed; a child of the worker (not the worker).
    deciding = int(pidfile.read_text())
    assert deciding in {c.pid for c in psutil.Process(worker.pid).children(recursive=True)}
    os.kill(deciding, signal.SIGKILL)
    assert wait_for(lambda: not psutil.pid_exists(deciding) or
                    psutil.Process(deciding).status() == psutil.STATUS_ZOMBIE, timeout=10)  # fmt: skip
    time.sleep(0.5)
    assert decisions(db, "lift") == []  # the killed transaction left nothing
    assert wait_for(lambda: decisions(db, "lift") == [("promote", "b", "applied")], timeout=60)
    time.sleep(6)
    assert decisions(db, "lift") == [("promote", "b", "applied")]  # and never twice


def test_a_request_id_reaches_the_task_and_its_webhook(
    db: str,
    decision_setup: Path,
    receiver: Receiver,
    server_factory: ServerFactory,
    start_worker: WorkerFactory,
    tmp_path: Path,
    celery_broker: dict[str, str],
) -> None:
    """The API enqueues the delivery with the request's id; the worker logs and sends it."""
    # One queue for both (with the folder broker, one data folder holds it).
    shared = {
        **celery_broker,
        "ABX_DATA_DIR": str(tmp_path / "shared-data"),
        "ABX_WEBHOOK_SECRET": SECRET,
    }
    api = Api(server_factory(db, decision_setup, **shared).base_url, key=None)
    start_worker(decision_setup, **shared)
    paused = api.post(
        "/v1/experiments/aa/actions",
        {"action": "pause", "actor": "ana", "reason": "traced"},
        headers={"X-Request-ID": "rid-pause-1"},
    )
    assert paused.status_code == 201 and paused.headers["X-Request-ID"] == "rid-pause-1"

    def sent_ids() -> list[str | None]:
        return [
            {k.lower(): v for k, v in h.items()}.get("x-request-id") for h, _ in receiver.requests
        ]

    assert wait_for(lambda: sent_ids() == ["rid-pause-1"], timeout=60), sent_ids()
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT request_id FROM webhook_deliveries").fetchall() == [
            ("rid-pause-1",)
        ]

    def worker_lines() -> list[dict[str, Any]]:
        text = (tmp_path / "worker-0.log").read_text()
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

    def logged() -> bool:  # the worker logs the task after the receiver has the request
        return any(
            line.get("request_id") == "rid-pause-1" and line.get("task") == "abx.deliver_webhook"
            for line in worker_lines()
        )

    assert wait_for(logged, timeout=10), worker_lines()[-20:]


def test_a_second_scheduler_waits_as_a_standby_until_the_first_stops(
    decision_setup: Path, start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """Two `abx worker --beat` on one database: one beat runs, the other takes over on SIGTERM."""

    def log(index: int) -> str:
        return (tmp_path / f"worker-{index}.log").read_text(errors="replace")

    first = start_worker(decision_setup)
    assert wait_for(lambda: "beat: Starting" in log(0), timeout=90), log(0)[-2000:]
    assert "holding the scheduler's lock" in log(0)
    start_worker(decision_setup)
    assert wait_for(lambda: "waiting as a standby" in log(1), timeout=90), log(1)[-2000:]
    time.sleep(3)
    assert "beat: Starting" not in log(1)
    first.send_signal(signal.SIGTERM)  # warm shutdown: the session, and its lock, end
    first.wait(timeout=60)
    assert wait_for(lambda: "beat: Starting" in log(1), timeout=90), log(1)[-2000:]
