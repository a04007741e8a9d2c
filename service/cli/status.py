"""``abx status``: the health an operator wants at a glance, from the sources the alerts read.

The server's readiness (``/readyz``), the server's and the worker's ``/metrics`` (what
Prometheus scrapes: spool, writer, rollup, analyses) and PostgreSQL (the last analysis
of each running experiment and the decisions awaiting approval, as the worker's gauges
report them). Each source that does not answer is said so; the exit status is 1 when
the server is not ready or a source is missing.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from typing import Any

import click

from service.cli.support import experiments_or_exit, settings_from_env
from service.settings import Settings
from service.storage.embedded import database_url

Samples = dict[str, list[tuple[dict[str, str], float]]]


def scrape(url: str, timeout: float = 3.0) -> Samples:
    """Every sample of a /metrics page, by name."""
    import requests
    from prometheus_client.parser import text_string_to_metric_families

    response = requests.get(url, timeout=timeout)
    response.raise_for_status()
    samples: Samples = defaultdict(list)
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[sample.name].append((sample.labels, float(sample.value)))
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        value
        for found, value in samples.get(name, [])
        if all(found.get(key) == wanted for key, wanted in labels.items())
    )


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    result: dict[str, float] = defaultdict(float)
    for found, value in samples.get(name, []):
        result[found.get(label, "")] += value
    return dict(result)


def _url(bind: str, path: str) -> str:
    host, _, port = bind.rpartition(":")
    return f"http://{host or '127.0.0.1'}:{port}{path}"


def server_status(settings: Settings, base_url: str | None) -> dict[str, Any]:
    import requests

    url = (base_url.rstrip("/") if base_url else _url(settings.bind, "")) + "/readyz"
    try:
        response = requests.get(url, timeout=3.0)
        body = response.json()
    except (requests.RequestException, ValueError) as error:
        return {"url": url, "ready": False, "error": f"{type(error).__name__}: {error}"}
    checks = body.get("checks", {})
    return {
        "url": url,
        "ready": response.status_code == 200,
        "database": checks.get("database"),
        "experiments_loaded": checks.get("experiments_loaded"),
    }


def server_metrics(settings: Settings) -> dict[str, Any]:
    if not settings.metrics_bind:
        return {"error": "ABX_METRICS_BIND is empty: the server exports no metrics"}
    url = _url(settings.metrics_bind, "/metrics")
    try:
        samples = scrape(url)
    except Exception as error:
        return {"url": url, "error": f"{type(error).__name__}: {error}"}
    return {
        "url": url,
        "requests_in_flight": total(samples, "abx_http_requests_in_flight"),
        "writer_pending_rows": by_label(samples, "abx_writer_pending_rows", "stream"),
        "writer_rows_dropped": total(samples, "abx_writer_rows_total", result="dropped"),
        "spool_bytes": by_label(samples, "abx_spool_bytes", "spool"),
        "spool_oldest_record_age_seconds": by_label(
            samples, "abx_spool_oldest_record_age_seconds", "spool"
        ),
        "rows_quarantined": by_label(samples, "abx_rows_quarantined_total", "stream"),
        "rollup_lag_seconds": by_label(samples, "abx_rollup_lag_seconds", "stream"),
        "allocation_changes_pending": [
            key
            for key, value in by_label(
                samples, "abx_allocation_changes_pending", "experiment"
            ).items()
            if value
        ],
    }


def worker_metrics(settings: Settings) -> dict[str, Any]:
    if not settings.worker_metrics_bind:
        return {"error": "ABX_WORKER_METRICS_BIND is empty: the worker exports no metrics"}
    url = _url(settings.worker_metrics_bind, "/metrics")
    try:
        samples = scrape(url)
    except Exception as error:
        return {"url": url, "error": f"{type(error).__name__}: {error}"}
    return {
        "url": url,
        "analyses_ok": total(samples, "abx_analysis_runs_total", result="ok"),
        "analyses_failed": total(samples, "abx_analysis_runs_total", result="error"),
        "webhooks_failed": total(samples, "abx_webhook_deliveries_total", result="failed"),
        "webhooks_abandoned": total(samples, "abx_webhook_deliveries_total", result="abandoned"),
    }


def decision_status(settings: Settings) -> dict[str, Any]:
    """The last analysis of each running experiment and what awaits approval (PostgreSQL)."""
    import psycopg

    from service.decisions.store import awaiting_approval_counts, last_analysis_at

    loaded = experiments_or_exit(settings, check_models=False)
    running = [i.experiment for i in loaded.experiments if i.experiment.status == "running"]
    try:
        url = database_url(settings.database_url, settings.data_dir)
        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            awaiting = awaiting_approval_counts(conn, running)
            last = {e.key: last_analysis_at(conn, e.key, e.seed) for e in running}
    except psycopg.Error as error:
        return {"error": f"{type(error).__name__}: {error}"}
    now = time.time()
    return {
        "analysis_interval_seconds": settings.analysis_interval_seconds,
        "experiments": {
            key: {
                "last_analysis_seconds_ago": round(now - at.timestamp(), 1) if at else None,
                "awaiting_approval": awaiting.get(key, 0),
            }
            for key, at in sorted(last.items())
        },
    }


def _print(report: dict[str, Any]) -> None:
    server = report["server"]
    ready = "ready" if server["ready"] else "NOT READY"
    detail = server.get("error") or f"database {server['database']}"
    click.echo(f"server     {ready} ({server['url']}: {detail})")
    for title, part in (("server metrics", report["server_metrics"]),
                        ("worker metrics", report["worker_metrics"])):  # fmt: skip
        if "error" in part:
            click.echo(f"{title:<14} UNAVAILABLE ({part.get('url', '')} {part['error']})")
            continue
        click.echo(f"{title:<14} {part['url']}")
        for key, value in part.items():
            if key != "url":
                click.echo(f"  {key:<34} {value}")
    decisions = report["decisions"]
    if "error" in decisions:
        click.echo(f"decisions  UNAVAILABLE ({decisions['error']})")
        return
    interval = decisions["analysis_interval_seconds"]
    click.echo(f"decisions  (analysis every {interval:g} s)")
    for key, item in decisions["experiments"].items():
        ago = item["last_analysis_seconds_ago"]
        when = "never analysed" if ago is None else f"last analysed {ago:g} s ago"
        stale = " STALE" if ago is None or ago > 3 * interval else ""
        click.echo(f"  {key:<24} {when}{stale}; awaiting approval: {item['awaiting_approval']}")


@click.command()
@click.option("--url", "base_url", help="The server's base URL (default: from ABX_BIND).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def status(base_url: str | None, as_json: bool) -> None:
    """Readiness, spool and writer state, analyses and pending decisions, at a glance."""
    settings = settings_from_env()
    report = {
        "server": server_status(settings, base_url),
        "server_metrics": server_metrics(settings),
        "worker_metrics": worker_metrics(settings),
        "decisions": decision_status(settings),
    }
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print(report)
    healthy = report["server"]["ready"] and not any(
        "error" in report[part] for part in ("server_metrics", "worker_metrics", "decisions")
    )
    sys.exit(0 if healthy else 1)
