"""``abx demo``: the whole system on embedded defaults, with a simulated web app calling it."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import click
import psycopg
import requests

from service.assignment.sticky import exposures_by_variant
from service.experiments.validation import load_experiments
from service.settings import Settings
from service.storage.embedded import database_url
from service.storage.migrations import apply_migrations

COUNTRIES = ["US", "US", "US", "CA", "GB", "DE", "FR", "BR", "IN"]
PLATFORMS = ["ios", "android", "web"]
VERSIONS = ["1.9.0", "2.0.0", "2.1.3", "2.4.0", "3.0.0-beta.1"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def simulated_user(index: int) -> dict[str, Any]:
    """A reproducible web-app user: same index, same attributes."""
    rng = random.Random(index)
    return {
        "unit": f"user-{index}",
        "attributes": {
            "country": rng.choice(COUNTRIES),
            "platform": rng.choice(PLATFORMS),
            "app_version": rng.choice(VERSIONS),
        },
    }


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    variants: Counter[tuple[str, str]] = field(default_factory=Counter)
    reasons: Counter[tuple[str, str]] = field(default_factory=Counter)
    first_seen: dict[tuple[str, str], str] = field(default_factory=dict)
    changed: int = 0
    predictions: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    """(variant, model name, provider) -> answers to /v1/predict on PREDICT_EXPERIMENT."""
    fallbacks: int = 0
    mean_probability: dict[str, float] = field(default_factory=dict)


def _client(
    base: str, keys: list[str], users: int, tally: Tally, stop: threading.Event, token: str
) -> None:
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {token}"
    rng = random.Random()
    while not stop.is_set():
        user = simulated_user(rng.randrange(users))
        items = [{"experiment": key, **user} for key in keys]
        started = time.perf_counter()
        try:
            response = session.post(f"{base}/v1/assign/batch", json={"items": items}, timeout=5)
            response.raise_for_status()
            assignments = response.json()["assignments"]
        except requests.RequestException:
            with tally.lock:
                tally.errors += 1
            time.sleep(0.1)
            continue
        elapsed_ms = (time.perf_counter() - started) * 1000
        with tally.lock:
            tally.requests += 1
            tally.latencies_ms.append(elapsed_ms)
            for a in assignments:
                tally.reasons[(a["experiment"], a["reason"])] += 1
                if a["in_experiment"]:
                    tally.variants[(a["experiment"], a["variant"])] += 1
                    seen = tally.first_seen.setdefault(
                        (a["experiment"], user["unit"]), a["variant"]
                    )
                    tally.changed += seen != a["variant"]
        _predict(session, base, user, rng, tally)
        if LOOP_EXPERIMENT in keys:
            _outcomes(session, base, user, tally)
        banner = [a["variant"] for a in assignments
                  if a["experiment"] == BANDIT_EXPERIMENT and a["in_experiment"]]  # fmt: skip
        if banner:
            _banner_click(session, base, user, banner[0], tally)


PREDICT_EXPERIMENT = "checkout_ranker"
LOOP_EXPERIMENT = "retention_offer"
TRUE_RETENTION = {"logistic": 0.10, "mlp": 0.16}
"""The simulated effect: users served by the MLP churn model are retained more often."""
HOLDOUT = "launches_2026"
"""The example holdout: its ``retained`` is posted too, so its page shows what launched."""


def _outcomes(session: requests.Session, base: str, user: dict[str, Any], tally: Tally) -> None:
    """Serve the user on the loop experiment, then report whether they were retained.

    Each user's outcome is drawn once from their id, so a returning user reports the same
    event (same event_id) and deduplication keeps it once.
    """
    try:
        body = {**user, "experiment": LOOP_EXPERIMENT, "inputs": {"features": [[1.0] * 20]}}
        answer = session.post(f"{base}/v1/predict", json=body, timeout=5).json()
        variant = answer["variant"]
        draw = random.Random(f"{user['unit']}-outcome")
        events = [{"event_id": f"{user['unit']}-cost", "experiment": LOOP_EXPERIMENT,
                   "unit": user["unit"], "metric": "offer_cost", "value": round(draw.gauss(5, 1), 2)}]  # fmt: skip
        if variant in TRUE_RETENTION and draw.random() < TRUE_RETENTION[variant]:
            events.append({"event_id": f"{user['unit']}-retained", "experiment": LOOP_EXPERIMENT,
                           "unit": user["unit"], "metric": "retained", "value": 1})  # fmt: skip
            events.append({"event_id": f"{user['unit']}-retained", "experiment": HOLDOUT,
                           "unit": user["unit"], "metric": "retained", "value": 1})  # fmt: skip
        session.post(f"{base}/v1/events", json={"events": events}, timeout=10).raise_for_status()
    except (requests.RequestException, KeyError, ValueError):
        with tally.lock:
            tally.errors += 1


BANDIT_EXPERIMENT = "offer_banner"
TRUE_CLICKS = {"classic": 0.04, "countdown": 0.12, "social": 0.05}
"""The bandit's truth: the countdown banner is clicked most, so traffic should move to it."""


def _banner_click(
    session: requests.Session, base: str, user: dict[str, Any], variant: str, tally: Tally
) -> None:
    """Report a click on the user's banner, drawn once from their id (deduplicated)."""
    if not random.Random(f"{user['unit']}-click").random() < TRUE_CLICKS.get(variant, 0.0):
        return
    event = {"event_id": f"{user['unit']}-click", "experiment": BANDIT_EXPERIMENT,
             "unit": user["unit"], "metric": "banner_click", "value": 1}  # fmt: skip
    try:
        session.post(f"{base}/v1/events", json={"events": [event]}, timeout=10).raise_for_status()
    except requests.RequestException:
        with tally.lock:
            tally.errors += 1


def _bandit_weights(base: str, token: str) -> tuple[int, dict[str, float]] | None:
    """How many times the bandit re-weighted, and its latest weights (from the audit log)."""
    try:
        audit = requests.get(f"{base}/v1/experiments/{BANDIT_EXPERIMENT}/decisions", timeout=5,
                             headers={"Authorization": f"Bearer {token}"}).json()  # fmt: skip
    except (requests.RequestException, ValueError):
        return None
    moves = [d for d in audit.get("decisions", []) if d["kind"] == "reweight"]
    return (len(moves), moves[-1]["numbers"]["bandit"]["weights"]) if moves else None


def _predict(
    session: requests.Session, base: str, user: dict[str, Any], rng: random.Random, tally: Tally
) -> None:
    """Ask the user's variant's model for a churn probability (raw features: 2z + 1)."""
    row = [2 * rng.gauss(0, 1) + 1 for _ in range(20)]
    body = {**user, "experiment": PREDICT_EXPERIMENT, "inputs": {"features": [row]}}
    try:
        response = session.post(f"{base}/v1/predict", json=body, timeout=5)
        response.raise_for_status()
        answer = response.json()
    except requests.RequestException:
        with tally.lock:
            tally.errors += 1
        return
    key = (answer["variant"], answer["model"]["name"], answer["provider"])
    with tally.lock:
        tally.predictions[key] += 1
        tally.fallbacks += answer["fallback"]
        count = tally.predictions[key]
        previous = tally.mean_probability.get(key[0], 0.0)
        probability = answer["outputs"]["probability"][0][0]
        tally.mean_probability[key[0]] = previous + (probability - previous) / count


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _report(tally: Tally, keys: list[str], elapsed: float) -> None:
    with tally.lock:
        latencies = list(tally.latencies_ms[-5000:])
        lines = [
            f"\n[{elapsed:5.0f}s] {tally.requests} batch calls ({tally.requests / max(elapsed, 1e-9):.0f}/s), "
            f"errors {tally.errors}, p50 {_percentile(latencies, 0.5):.1f} ms, "
            f"p99 {_percentile(latencies, 0.99):.1f} ms, units that changed variant: {tally.changed}"
        ]
        for (variant, model, provider), n in sorted(tally.predictions.items()):
            lines.append(
                f"  predict {PREDICT_EXPERIMENT}: {variant:<11} model {model:<13} on {provider}:"
                f" {n} answers, mean churn probability {tally.mean_probability[variant]:.3f}"
            )
        if tally.predictions:
            lines.append(f"  predict fallbacks: {tally.fallbacks}")
        for key in keys:
            exposed = {v: n for (k, v), n in tally.variants.items() if k == key}
            total = sum(exposed.values()) or 1
            shares = ", ".join(f"{v} {n / total:.0%}" for v, n in sorted(exposed.items()))
            reasons = ", ".join(
                f"{r} {n}" for (k, r), n in sorted(tally.reasons.items()) if k == key
            )
            lines.append(f"  {key:<20} exposed: {shares or '-'}\n  {'':<20} reasons: {reasons}")
    click.echo("\n".join(lines))


def _loop_state(base: str, token: str) -> dict[str, Any]:
    """The loop experiment's decision state and latest decision, as the API shows them."""
    try:
        audit = requests.get(f"{base}/v1/experiments/{LOOP_EXPERIMENT}/decisions", timeout=5,
                             headers={"Authorization": f"Bearer {token}"}).json()  # fmt: skip
    except (requests.RequestException, ValueError):
        return {}
    latest = audit["decisions"][-1] if audit.get("decisions") else None
    return {"current": audit.get("current", {}), "latest": latest}


def _report_loop(state: dict[str, Any]) -> None:
    if not state:
        return
    current, latest = state["current"], state["latest"]
    line = f"  decisions {LOOP_EXPERIMENT}: state {current.get('state')}"
    if current.get("winner"):
        line += f", winner {current['winner']}"
    if latest:
        line += f"; last decision {latest['kind']} by {latest['actor']}: {latest['reason']}"
    click.echo(line)


def _report_bandit(base: str, token: str, moved_before: bool) -> bool:
    """Show the bandit's weights; announce its first move. Returns whether it has moved."""
    found = _bandit_weights(base, token)
    if found is None:
        click.echo(f"  {BANDIT_EXPERIMENT} (bandit): waiting for 100 units per arm to re-weight")
        return moved_before
    moves, weights = found
    shown = ", ".join(f"{k} {w:.0%}" for k, w in sorted(weights.items()))
    click.echo(f"  {BANDIT_EXPERIMENT} (bandit): weights {shown} after {moves} re-weighting(s);"
               f" true click rates {TRUE_CLICKS}")  # fmt: skip
    if not moved_before:
        click.echo(f"\n>>> {BANDIT_EXPERIMENT}: the bandit moved traffic ({shown}); users"
                   " already assigned keep their banner\n")  # fmt: skip
    return True


def _report_holdout(base: str, token: str) -> None:
    """The example holdout's groups and its cumulative effect on retention, as the API says."""
    try:
        response = requests.get(f"{base}/v1/holdouts/{HOLDOUT}", timeout=5,
                                headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        if response.status_code != 200:
            return
        report = response.json()
    except (requests.RequestException, ValueError):
        return
    units = report["analysis"]["units"]
    line = (f"  holdout {HOLDOUT} ({report['share']:.0%}): held out {units.get('holdout', 0)},"
            f" rest {units.get('rest', 0)}")  # fmt: skip
    for comparison in report["analysis"]["primary"]:
        line += (f"; {comparison['metric']} rest - holdout {comparison['difference']:+.3f}"
                 f" [{comparison['ci_low']:+.3f}, {comparison['ci_high']:+.3f}] (always valid)")  # fmt: skip
    click.echo(line)


def _wait_ready(base: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise click.ClickException("the server exited during start-up; see its log above")
        try:
            if requests.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.3)
    raise click.ClickException("the server did not become ready in time")


DEMO_KEYS = {
    "demo-web-app": ["assign", "predict", "events:write"],
    "demo-analyst": ["dashboards:read", "experiments:read", "decisions:write"],
}
"""The keys ``abx demo`` makes for its simulated web app and for you, revoked when it ends."""


def _make_demo_keys(url: str) -> dict[str, str]:
    """A key per role, through the same code as ``abx keys create``; old demo keys revoked."""
    from service.access.keys import create_key, list_keys, revoke_key

    with psycopg.connect(url, autocommit=True) as conn:
        for key in list_keys(conn):
            if key.name in DEMO_KEYS:
                revoke_key(conn, key.key_id)
        return {name: create_key(conn, name, scopes, "abx demo", "abx demo").token
                for name, scopes in DEMO_KEYS.items()}  # fmt: skip


def _revoke_demo_keys(url: str, tokens: dict[str, str]) -> None:
    from service.access.keys import revoke_key

    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=3) as conn:
            for token in tokens.values():
                revoke_key(conn, token)
    except psycopg.Error as error:
        click.echo(f"(could not revoke the demo keys: {error})", err=True)


def _stored_exposures(url: str) -> list[tuple[str, str, int]]:
    with psycopg.connect(url) as conn:
        return exposures_by_variant(conn)


def _explain_keys(base: str, web_app: str, analyst: str) -> None:
    """How to use the demo's keys while it runs (they are revoked when it ends)."""
    if not web_app:
        click.echo("ABX_AUTH=off: every route is open, no key needed")
        return
    click.echo(
        f"\nkeys for this run (revoked when it ends):\n"
        f"  web app  {web_app}  (assign, predict, events:write)\n"
        f"  analyst  {analyst}  (dashboards:read, experiments:read, decisions:write)\n"
        f"Try it while it runs:\n"
        f"  curl -s {base}/v1/experiments -H 'Authorization: Bearer {analyst}'\n"
        f"  curl -s -X POST {base}/v1/assign -H 'Authorization: Bearer {web_app}'"
        " -H 'Content-Type: application/json' "
        '-d \'{"experiment": "checkout_ranker", "unit": "user-1", '
        '"attributes": {"country": "US", "app_version": "2.1.0"}}\'\n'
        f"  {base}/dashboards/ in a browser: sign in with the analyst key\n"
    )


def run_demo(
    settings: Settings,
    duration: float,
    port: int,
    users: int,
    clients: int,
    analysis_interval: float = 5.0,
) -> int:
    from service.demo.models import build_missing_demo_models

    built = build_missing_demo_models(settings.experiments, settings.models)
    if built:
        click.echo(f"built demo models into {settings.models}: {', '.join(built)}")
    result = load_experiments([settings.experiments], settings.models)
    if not result.ok:
        for problem in result.problems:
            click.echo(str(problem), err=True)
        return 1
    click.echo(
        "abx demo: starting PostgreSQL" + (" (embedded)" if not settings.database_url else "")
    )
    url = database_url(settings.database_url, settings.data_dir)
    applied = apply_migrations(url, settings.migrations)
    click.echo(f"migrations applied: {len(applied)}; experiments: {len(result.experiments)}")
    base = f"http://127.0.0.1:{port}"
    tokens = _make_demo_keys(url) if settings.auth == "on" else {name: "" for name in DEMO_KEYS}
    web_app, analyst = tokens["demo-web-app"], tokens["demo-analyst"]
    metrics_port, worker_metrics_port = _free_port(), _free_port()
    env = {
        # Log lines for a person, and no access log over the simulated traffic's report.
        "ABX_LOG_FORMAT": "console",
        "ABX_ACCESS_LOG": "false",
        **os.environ,
        "ABX_DATABASE_URL": url,
        "ABX_BIND": f"127.0.0.1:{port}",
        "ABX_METRICS_BIND": f"127.0.0.1:{metrics_port}",
        "ABX_WORKER_METRICS_BIND": f"127.0.0.1:{worker_metrics_port}",
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--no-migrate"], env=env
    )
    click.echo(
        f"metrics: http://127.0.0.1:{metrics_port}/metrics (server),"
        f" http://127.0.0.1:{worker_metrics_port}/metrics (worker)"
    )
    worker_env = {**env, "ABX_ANALYSIS_INTERVAL_SECONDS": str(analysis_interval)}
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    worker_log = (settings.data_dir / "demo-worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker", "--beat", "--concurrency", "1"],
        env=worker_env,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    click.echo(f"worker log: {settings.data_dir / 'demo-worker.log'}")
    try:
        _wait_ready(base, server)
        keys = sorted(item.experiment.key for item in result.experiments)
        click.echo(f"serving on {base}; simulating {users} users with {clients} clients")
        _explain_keys(base, web_app, analyst)
        tally, stop = Tally(), threading.Event()
        workers = [
            threading.Thread(
                target=_client, args=(base, keys, users, tally, stop, web_app), daemon=True
            )
            for _ in range(clients)
        ]
        click.echo(
            f"a Celery worker analyses every {analysis_interval:g} s; users served by the MLP model on"
            f" {LOOP_EXPERIMENT} are retained more often ({TRUE_RETENTION})"
        )
        started = time.monotonic()
        promoted_at: float | None = None
        bandit_moved = False
        for thread in workers:
            thread.start()
        try:
            while duration <= 0 or time.monotonic() - started < duration:
                if promoted_at is not None and time.monotonic() - promoted_at > 10:
                    break
                time.sleep(
                    min(
                        3.0,
                        max(0.1, duration - (time.monotonic() - started)) if duration > 0 else 3.0,
                    )
                )
                _report(tally, keys, time.monotonic() - started)
                loop = _loop_state(base, analyst)
                _report_loop(loop)
                if BANDIT_EXPERIMENT in keys:
                    bandit_moved = _report_bandit(base, analyst, bandit_moved)
                _report_holdout(base, analyst)
                if promoted_at is None and loop.get("current", {}).get("state") == "promoted":
                    promoted_at = time.monotonic()
                    click.echo(f"\n>>> {LOOP_EXPERIMENT}: the worker promoted {loop['current']['winner']}"
                               " — every eligible user now gets it (reason 'promoted')\n")  # fmt: skip
        except KeyboardInterrupt:
            pass
        stop.set()
        for thread in workers:
            thread.join(10)
        time.sleep(2 * settings.flush_interval_seconds + 0.5)
        click.echo("\nexposures stored in PostgreSQL (one row per unit and variant):")
        for key, variant, count in _stored_exposures(url):
            click.echo(f"  {key:<20} {variant:<16} {count}")
        click.echo(
            f"\nWhere to look: {base}/dashboards/ (analyst pages),"
            f" {base}/v1/experiments/{LOOP_EXPERIMENT}/decisions (audit log),"
            f" {base}/v1/holdouts/{HOLDOUT} (the holdout),"
            " `abx export-state` (the decision as a YAML change to commit)"
        )
        click.echo("\nThe demo's keys are revoked now; make your own with `abx keys create`.")
        return 0 if tally.changed == 0 and tally.requests > 0 else 1
    finally:
        if settings.auth == "on":
            _revoke_demo_keys(url, tokens)
        for process in (worker, server):
            process.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
        worker_log.close()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
