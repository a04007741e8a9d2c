"""A real Prometheus (Debian's package) scrapes a real ``abx serve`` (2 workers) and a real
Celery worker on loopback, with the shipped alert rules.

The test sends known traffic and reads the series back through Prometheus' HTTP API:
each count must equal what was sent, summed over both gunicorn workers. Then the
treatment model fails on every request and ``AbxModelFallbackRateHigh`` must go pending,
then firing, for that variant alone. The shipped rules are loaded as they are, except
their ``for:`` durations, cut to seconds in a copy (``rules_for_test``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from service.settings import PROJECT_ROOT
from tests.conftest import Api, Server, ServerFactory, free_port, wait_for
from tests.experiment_files import minimal_experiment, write_experiment
from tests.model_fixtures import MODELS, demo_models, raising_model
from tests.suite.system_tools import requires_system_tool, system_tool_path

PROMETHEUS = system_tool_path("prometheus")
pytestmark = requires_system_tool("prometheus")
RULES = PROJECT_ROOT / "deploy" / "prometheus" / "abx-rules.yml"
ALERT_FOR = "3s"
ONES = [1.0] * 20
"""A row the raising model cannot reshape: the treatment fails on it, the control answers."""
ZEROS = [0.0] * 20
"""A row both models answer."""


def rules_for_test(target: Path) -> Path:
    """The shipped rules with every ``for:`` cut to ``ALERT_FOR`` (expressions unchanged)."""
    text, count = re.subn(r"(?m)^(\s+for:) \S+$", rf"\1 {ALERT_FOR}", RULES.read_text())
    assert count > 0
    target.write_text(text)
    return target


class Prometheus:
    def __init__(self, folder: Path, targets: dict[str, str], rules: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        scrape = "\n".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']"
            for job, target in targets.items()
        )
        config = folder / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {rules}\nscrape_configs:\n{scrape}\n"
        )
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = (folder / "prometheus.log").open("wb")
        assert PROMETHEUS is not None
        self.process = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={folder / 'data'}",
             f"--web.listen-address={self.url.removeprefix('http://')}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert wait_for(self._ready, timeout=30), (folder / "prometheus.log").read_text()

    def _ready(self) -> bool:
        try:
            return requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=5).json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def values(self, promql: str, label: str) -> dict[str, float]:
        return {r["metric"].get(label, ""): float(r["value"][1]) for r in self.query(promql)}

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def alerts(self, name: str) -> list[dict[str, Any]]:
        body = requests.get(f"{self.url}/api/v1/alerts", timeout=5).json()
        return [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == name]

    def targets_up(self) -> dict[str, str]:
        body = requests.get(f"{self.url}/api/v1/targets", timeout=5).json()
        return {t["labels"]["job"]: t["health"] for t in body["data"]["activeTargets"]}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], Prometheus]]:
    started: list[Prometheus] = []

    def start(targets: dict[str, str]) -> Prometheus:
        prometheus = Prometheus(
            tmp_path / "prometheus", targets, rules_for_test(tmp_path / "rules.yml")
        )
        started.append(prometheus)
        return prometheus

    yield start
    for prometheus in started:
        prometheus.stop()


@pytest.fixture
def worker(
    tmp_path: Path, db: str, celery_broker: dict[str, str]
) -> Iterator[Callable[[Path], str]]:
    """Start ``abx worker --beat``; return its metrics bind."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(experiments: Path) -> str:
        bind = f"127.0.0.1:{free_port()}"
        log = (tmp_path / "worker.log").open("wb")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--beat", "--concurrency", "1"],
            env={**os.environ, "ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(experiments),
                 **celery_broker, "ABX_ANALYSIS_INTERVAL_SECONDS": "1", "ABX_WORKER_METRICS_BIND": bind,
                 "ABX_DATA_DIR": str(tmp_path / "worker-data")},
            cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
        ))  # fmt: skip
        log.close()
        return bind

    yield start
    for process in processes:
        if process.poll() is None:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
        process.kill()
        process.wait()


def scoring_experiment(models: Path) -> dict[str, Any]:
    """Control ``a`` on the logistic model, treatment ``b`` on a model that fails on ``ONES``."""
    models.mkdir(parents=True)
    shutil.copy(MODELS / "churn_logreg.onnx", models / "churn_logreg.onnx")
    return minimal_experiment(
        "scoring",
        variants=[
            {"key": "a", "weight": 0.5,
             "model": {"path": "churn_logreg.onnx", "sha256": demo_models()["churn_logreg.onnx"]}},
            {"key": "b", "weight": 0.5,
             "model": {"path": "raises.onnx", "sha256": raising_model(models / "raises.onnx")}},
        ],
    )  # fmt: skip


def predict(api: Api, unit: str, row: list[float]) -> dict[str, Any]:
    response = api.post(
        "/v1/predict",
        {"experiment": "scoring", "unit": unit, "attributes": {}, "inputs": {"features": [row]}},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def send_traffic(api: Api) -> dict[str, Any]:
    """Known, healthy traffic; return what each series must count."""
    assigned: Counter[str] = Counter()
    for i in range(120):
        assigned[api.assign("plain", f"u{i}")["variant"]] += 1
    predicted: Counter[str] = Counter()
    units: dict[str, list[str]] = {"a": [], "b": []}
    for i in range(40):
        body = predict(api, f"p{i}", ZEROS)
        assert body["fallback"] is False
        predicted[body["variant"]] += 1
        units[body["variant"]].append(f"p{i}")
    events = [
        {"event_id": f"e{i}", "experiment": "plain", "unit": f"u{i}", "metric": "conversion",
         "value": 1}
        for i in range(35)
    ]  # fmt: skip
    for batch in (events[:30], events[25:]):  # the second repeats five
        assert api.post("/v1/events", {"events": batch}).status_code == 202
    return {"assigned": assigned, "predicted": predicted, "units": units}


class AlertWatch(threading.Thread):
    """Records the states one alert goes through, polling every 0.2 s."""

    def __init__(self, prometheus: Prometheus, name: str) -> None:
        super().__init__(daemon=True)
        self.prometheus, self.name = prometheus, name
        self.states: list[str] = []
        self.labels: list[dict[str, str]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.2):
            try:
                alerts = self.prometheus.alerts(self.name)
            except requests.RequestException:
                continue  # Prometheus is stopping: the test has what it needs
            for alert in alerts:
                self.labels.append(alert["labels"] | alert["annotations"])
                if not self.states or self.states[-1] != alert["state"]:
                    self.states.append(alert["state"])


def test_prometheus_sees_what_was_sent_and_fires_on_a_failing_treatment(
    server_factory: ServerFactory,
    db: str,
    tmp_path: Path,
    worker: Callable[[Path], str],
    prometheus_factory: Callable[[dict[str, str]], Prometheus],
) -> None:
    experiments = tmp_path / "experiments"
    write_experiment(experiments, minimal_experiment("plain"))
    write_experiment(experiments, scoring_experiment(tmp_path / "models"))
    server: Server = server_factory(db, experiments, ABX_MODELS=str(tmp_path / "models"))
    assert server.metrics_url is not None
    worker_bind = worker(experiments)
    prometheus = prometheus_factory(
        {"abx-server": server.metrics_url.split("/")[2], "abx-worker": worker_bind}
    )
    watch = AlertWatch(prometheus, "AbxModelFallbackRateHigh")
    watch.start()
    try:
        check_counts_and_alert(Api(server.base_url, key=None), prometheus, watch, tmp_path)
        check_status(server, worker_bind, db, experiments)
    finally:
        watch.stop.set()
        watch.join()


def check_counts_and_alert(
    api: Api, prometheus: Prometheus, watch: AlertWatch, tmp_path: Path
) -> None:
    sent = send_traffic(api)
    assert sent["units"]["a"] and sent["units"]["b"]

    def counts_arrive(expected: dict[tuple[str, str], dict[str, int]]) -> None:
        for (promql, label), counts in expected.items():
            want = {key: float(value) for key, value in counts.items()}

            def arrived(promql: str = promql, label: str = label, want: Any = want) -> bool:
                return prometheus.values(promql, label) == want

            assert wait_for(arrived, timeout=30), (promql, prometheus.values(promql, label), want)

    counts_arrive({
        ('sum by (variant) (abx_assignments_total{experiment="plain"})', "variant"):
            dict(sent["assigned"]),
        ('sum by (route) (abx_http_requests_total{route="/v1/assign",status="200"})', "route"):
            {"/v1/assign": 120},
        ('sum by (variant) (abx_predictions_total{experiment="scoring"})', "variant"):
            dict(sent["predicted"]),
        ('sum by (route) (abx_http_request_duration_seconds_count{route="/v1/predict"})', "route"):
            {"/v1/predict": 40},
        ('sum by (result) (abx_events_total{experiment="plain"})', "result"):
            {"accepted": 35, "duplicate": 5},
        ('sum by (stream) (abx_writer_rows_total{result="written",stream="predictions"})',
         "stream"): {"predictions": 40},
    })  # fmt: skip
    assert prometheus.scalar("sum(abx_model_fallbacks_total)") == 0.0  # born at zero, none yet

    # The worker's series come from its pool process, through the main process's exporter.
    assert wait_for(
        lambda: (
            (prometheus.scalar('abx_analysis_runs_total{experiment="plain",result="ok"}') or 0) >= 1
        ),
        timeout=60,
    ), (tmp_path / "worker.log").read_text()[-3000:]
    last = prometheus.scalar('abx_analysis_last_success_timestamp_seconds{experiment="plain"}')
    assert last is not None and abs(time.time() - last) < 60
    assert prometheus.scalar("abx_analysis_interval_seconds") == 1.0
    assert prometheus.targets_up() == {"abx-server": "up", "abx-worker": "up"}
    assert watch.states == []  # healthy so far: the rule was evaluated and stayed quiet

    # Now b's model fails on every request: the control answers, the alert goes
    # pending, then firing, for b alone.
    failing = sent["units"]["b"][:10]
    for unit in failing:
        body = predict(api, unit, ONES)
        assert (body["variant"], body["fallback"]) == ("b", True)
    counts_arrive({
        ('sum by (variant) (abx_model_fallbacks_total{experiment="scoring",cause="error"})',
         "variant"): {"a": 0, "b": len(failing)},
    })  # fmt: skip
    assert wait_for(lambda: "firing" in watch.states, timeout=60), watch.states
    assert watch.states == ["pending", "firing"]
    assert {(labels["experiment"], labels["variant"], labels["severity"], labels["runbook"])
            for labels in watch.labels} == {
        ("scoring", "b", "ticket", "docs/operations.md#abxmodelfallbackratehigh")
    }  # fmt: skip


def check_status(server: Server, worker_bind: str, db: str, experiments: Path) -> None:
    """``abx status`` reads the same sources and finds everything healthy."""
    assert server.metrics_url is not None
    env = {**os.environ, "ABX_BIND": server.base_url.removeprefix("http://"),
           "ABX_METRICS_BIND": server.metrics_url.split("/")[2],
           "ABX_WORKER_METRICS_BIND": worker_bind, "ABX_DATABASE_URL": db,
           "ABX_EXPERIMENTS": str(experiments), "ABX_ANALYSIS_INTERVAL_SECONDS": "1"}  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "status", "--json"],
        env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["server"]["ready"] is True
    assert report["server_metrics"]["writer_rows_dropped"] == 0
    assert report["server_metrics"]["spool_bytes"] == {"events": 0, "writes": 0}
    assert report["worker_metrics"]["analyses_ok"] >= 1
    plain = report["decisions"]["experiments"]["plain"]
    assert plain["awaiting_approval"] == 0 and plain["last_analysis_seconds_ago"] < 60
