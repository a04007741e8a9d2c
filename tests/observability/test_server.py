"""A real server: request ids on every response, the access log, and its /metrics bind."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from tests.conftest import Api, Server, ServerFactory, start_server, wait_for
from tests.experiment_files import minimal_experiment, write_experiment


@pytest.fixture
def experiments(tmp_path: Path) -> Path:
    folder = tmp_path / "experiments"
    write_experiment(folder, minimal_experiment("plain"))
    return folder


def log_lines(server: Server) -> list[dict[str, Any]]:
    """Every line the server wrote, each one JSON (json.loads fails the test otherwise)."""
    return [json.loads(line) for line in server.log().splitlines() if line.strip()]


def access_lines(server: Server) -> list[dict[str, Any]]:
    return [line for line in log_lines(server) if line.get("logger") == "abx.access"]


def scrape(server: Server) -> str:
    assert server.metrics_url is not None
    response = requests.get(server.metrics_url, timeout=5)
    assert response.status_code == 200
    return response.text


def test_every_response_carries_a_request_id_and_a_json_access_line(
    server_factory: ServerFactory, db: str, experiments: Path
) -> None:
    server = server_factory(db, experiments)
    api = Api(server.base_url)
    body = {"experiment": "plain", "unit": "user-secret-42", "attributes": {}}
    cases = [
        (api.post("/v1/assign", body, headers={"X-Request-ID": "caller-1"}), 200, "caller-1"),
        (api.post("/v1/assign", body, headers={"X-Request-ID": "not ok"}), 200, None),
        (api.post("/v1/assign", {**body, "experiment": "ghost"}), 404, None),
        (api.post("/v1/assign", "x", headers={"Content-Type": "text/plain"}), 415, None),
        (api.get("/v1/assign"), 405, None),
        (api.get("/no/such/page"), 404, None),
        (requests.post(f"{server.base_url}/v1/assign", json=body, timeout=5), 401, None),
        (api.get("/healthz", headers={"X-Request-ID": "x" * 129}), 200, None),
    ]
    ids = []
    for response, status, kept in cases:
        assert response.status_code == status, response.text
        request_id = response.headers["X-Request-ID"]
        assert request_id == kept if kept else len(request_id) == 32
        ids.append(request_id)
    assert len(set(ids)) == len(ids)

    def logged() -> dict[str, dict[str, Any]]:
        return {line["request_id"]: line for line in access_lines(server)}

    assert wait_for(lambda: set(ids) <= set(logged()), timeout=10)
    lines = logged()
    first = lines["caller-1"]
    assert {k: first[k] for k in ("level", "event", "method", "route", "status", "experiment")} == {
        "level": "info", "event": "request", "method": "POST", "route": "/v1/assign",
        "status": 200, "experiment": "plain",
    }  # fmt: skip
    assert first["variant"] in {"a", "b"} and first["duration_ms"] > 0
    assert [lines[i]["status"] for i in ids] == [status for _, status, _ in cases]
    assert lines[ids[5]]["route"] == "unmatched" and lines[ids[5]]["path"] == "/no/such/page"
    text = server.log()
    assert server.key and server.key not in text and "user-secret-42" not in text


def test_unit_ids_are_logged_only_when_asked(
    server_factory: ServerFactory, db: str, experiments: Path
) -> None:
    server = server_factory(db, experiments, ABX_LOG_UNITS="1")
    Api(server.base_url, key=None).assign("plain", "user-7")
    assert wait_for(lambda: any(line.get("unit") == "user-7" for line in access_lines(server)))


def test_metrics_count_requests_by_route_never_by_path(
    server_factory: ServerFactory, db: str, experiments: Path
) -> None:
    server = server_factory(db, experiments)
    api = Api(server.base_url, key=None)
    for i in range(5):
        api.assign("plain", f"u{i}")
    api.post("/v1/assign", {"experiment": "ghost-experiment", "unit": "u", "attributes": {}})
    api.get("/v1/experiments/also-a-ghost")
    api.get("/random/path/123")
    requests.request("BREW", f"{server.base_url}/healthz", timeout=5)

    def series() -> str:
        return scrape(server)

    assert wait_for(
        lambda: (
            'abx_http_requests_total{method="POST",route="/v1/assign",status="200"} 5.0' in series()
        )
    )
    text = series()
    assert 'route="/v1/experiments/<key>",status="404"' in text
    assert 'method="GET",route="unmatched",status="404"' in text
    assert 'method="other",route="unmatched",status="405"' in text  # no rule matched
    assert "ghost" not in text and "/random" not in text and "BREW" not in text
    assert "u0" not in text
    assert 'abx_assignments_total{experiment="plain"' in text


def test_the_metrics_folder_is_emptied_at_start_and_dead_workers_leave_the_live_sums(
    server_factory: ServerFactory, db: str, experiments: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_999999.db").write_bytes(b"left over by an earlier run")
    server = server_factory(db, experiments, ABX_METRICS_DIR=str(folder))
    assert not (folder / "counter_999999.db").exists()
    Api(server.base_url, key=None).assign("plain", "u1")
    workers = psutil.Process(server.process.pid).children()
    assert len(workers) == 2
    assert wait_for(lambda: all((folder / f"gauge_livesum_{w.pid}.db").exists() for w in workers))
    victim = workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    assert wait_for(lambda: not (folder / f"gauge_livesum_{victim.pid}.db").exists())
    assert (folder / f"counter_{victim.pid}.db").exists()  # its counters stay in the sums
    assert wait_for(lambda: len(psutil.Process(server.process.pid).children()) == 2)
    assert "abx_http_requests_in_flight 0.0" in scrape(server)


def test_a_taken_metrics_bind_stops_the_server_with_a_reason(
    db: str, experiments: Path, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"ABX_METRICS_BIND=127.0.0.1:{port}"):
            start_server(
                {"ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(experiments),
                 "ABX_DATA_DIR": str(tmp_path / "data"), "ABX_METRICS_BIND": f"127.0.0.1:{port}"},
                tmp_path / "server.log",
            )  # fmt: skip


def test_an_empty_metrics_bind_serves_no_metrics(
    server_factory: ServerFactory, db: str, experiments: Path
) -> None:
    server = server_factory(db, experiments, ABX_METRICS_BIND="")
    assert server.metrics_url is None
    assert Api(server.base_url, key=None).assign("plain", "u1")["experiment"] == "plain"
    assert "serving metrics" not in server.log()
