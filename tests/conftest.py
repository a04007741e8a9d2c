"""Shared fixtures: a fresh PostgreSQL database per test cloned from a migrated template,
a real gunicorn server on a free port, and an ``api`` helper that adds the API key.

The run's PostgreSQL and Celery broker are chosen once, by the controller before the
xdist workers start (``tests/suite/services.py``): the one in the environment, the
machine's usual one, or else the suite's own embedded server and the folder broker.
The workers inherit the choice through ``ABX_TEST_DATABASE_URL`` and
``ABX_TEST_BROKER_URL``.

Servers require keys, as in production: ``server_factory`` creates one with every scope in
the server's database through ``service.access.keys.create_key`` (what ``abx keys create``
runs) and ``Api(server.base_url)`` sends it. A server whose database cannot be reached when
it starts (the outage tests) cannot have a key made for it; it runs with ``ABX_AUTH=off``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from click.testing import CliRunner

from service.access.keys import create_key
from service.access.scopes import SCOPES
from service.settings import PROJECT_ROOT
from service.storage.migrations import apply_migrations
from tests.suite import services
from tests.suite.postgres import OwnPostgres
from tests.suite.system_tools import skipped_for_missing_tools

MIGRATIONS = PROJECT_ROOT / "migrations"
EXAMPLES = PROJECT_ROOT / "experiments"
TEMPLATE_LOCK = 0x616278_7E
_OWN_POSTGRES = pytest.StashKey[OwnPostgres]()
_CHOSEN = pytest.StashKey[list[str]]()
_ENVIRONMENT = pytest.StashKey[dict[str, str | None]]()


def pytest_configure(config: pytest.Config) -> None:
    """Choose (or start) the run's PostgreSQL and broker, once, in the controller."""
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller chose, the environment says what
    if config.option.help:
        return
    try:
        prefix = services.database_prefix(os.environ.get("ABX_TEST_DB_PREFIX"))
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    config.stash[_ENVIRONMENT] = {
        name: os.environ.get(name)
        for name in ("ABX_TEST_DATABASE_URL", "ABX_TEST_BROKER_URL", "ABX_TEST_DB_PREFIX")
    }
    try:
        database = services.choose_database(os.environ.get("ABX_TEST_DATABASE_URL"))
        broker = services.choose_broker(os.environ.get("ABX_TEST_BROKER_URL"))
    except services.ServiceDown as error:
        raise pytest.UsageError(str(error)) from None
    if database.url is None:
        own = config.stash[_OWN_POSTGRES] = OwnPostgres()
        url, path = own.url, f"the suite's own embedded server in {own.folder} ({database.why})"
    else:
        url, path = database.url, f"{services.shown(database.url)} ({database.why})"
    assert broker.url is not None
    os.environ.update(
        ABX_TEST_DATABASE_URL=url, ABX_TEST_BROKER_URL=broker.url, ABX_TEST_DB_PREFIX=prefix
    )
    with psycopg.connect(url, connect_timeout=10) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    config.stash[_CHOSEN] = [
        f"abx tests: PostgreSQL {version[0] if version else '?'}: {path}",
        f"abx tests: Celery broker {services.shown(broker.url)} ({broker.why})",
    ]


def pytest_unconfigure(config: pytest.Config) -> None:
    own = config.stash.get(_OWN_POSTGRES, None)
    if own is not None:
        own.close()  # the server stops and its folder goes, also after Ctrl-C or a failure
    for name, value in config.stash.get(_ENVIRONMENT, {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def pytest_report_header(config: pytest.Config) -> list[str]:
    return config.stash.get(_CHOSEN, [])


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    reasons = [
        report.longrepr[2]
        for report in terminalreporter.stats.get("skipped", [])
        if isinstance(report.longrepr, tuple)
    ]
    missing = skipped_for_missing_tools(reasons)
    if missing:
        tools = ", ".join(f"{count} for {tool}" for tool, count in missing.items())
        line = f"skipped for a missing system tool: {sum(missing.values())} test(s): {tools}"
    else:
        line = "skipped for a missing system tool: 0 tests"
    for chosen in config.stash.get(_CHOSEN, []):
        terminalreporter.write_line(chosen)
    terminalreporter.write_line(line)


def admin_url() -> str:
    """The run's PostgreSQL, where test databases are created (set by pytest_configure)."""
    return os.environ["ABX_TEST_DATABASE_URL"]


def database_prefix() -> str:
    return os.environ.get("ABX_TEST_DB_PREFIX", services.DEFAULT_DB_PREFIX)


def _url_for(database: str) -> str:
    return psycopg.conninfo.make_conninfo(admin_url(), dbname=database)


def _migrations_digest() -> str:
    digest = hashlib.sha256()
    for path in sorted(MIGRATIONS.glob("*.sql")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


@pytest.fixture(scope="session")
def template_database() -> str:
    """A migrated database to clone; built once per migrations content, shared by workers."""
    name = f"{database_prefix()}template_{_migrations_digest()}"
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (TEMPLATE_LOCK,))
        try:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{name}"')
                try:
                    apply_migrations(_url_for(name), MIGRATIONS)
                except Exception:
                    conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
                    raise
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (TEMPLATE_LOCK,))
    return name


def create_database(template: str | None) -> str:
    name = f"{database_prefix()}{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        for attempt in range(20):
            try:
                conn.execute(f'CREATE DATABASE "{name}"{clause}')
                break
            except psycopg.errors.ObjectInUse:  # another worker is cloning the template
                time.sleep(0.1 * (attempt + 1))
        else:
            raise RuntimeError("could not clone the template database")
    return name


def drop_database(name: str) -> None:
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(template_database: str) -> Iterator[str]:
    """URL of a fresh, migrated database for this test alone."""
    name = create_database(template_database)
    yield _url_for(name)
    drop_database(name)


@pytest.fixture
def empty_db() -> Iterator[str]:
    """URL of a fresh database with no schema (for migration tests)."""
    name = create_database(None)
    yield _url_for(name)
    drop_database(name)


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    """A migrated PostgreSQL this test alone owns, to stop and start (``.stop()``, ``.start()``).

    Fault tests stop this one, never the run's shared server, which serves other tests
    in parallel; its guardian removes it when the test ends, or its worker dies.
    """
    server = OwnPostgres()
    try:
        apply_migrations(server.url, MIGRATIONS)
        yield server
    finally:
        server.close()


@pytest.fixture
def celery_broker() -> dict[str, str]:
    """Settings that put a Celery process on the run's broker, with a queue of its own.

    With the folder broker (``filesystem://``) a process keeps its queue under its own
    ``ABX_DATA_DIR``, so processes that must share one need the same data folder.
    """
    return {
        **services.celery_environment(os.environ["ABX_TEST_BROKER_URL"]),
        "ABX_QUEUE": f"abx-test-{uuid.uuid4().hex}",
    }


@pytest.fixture
def experiments_dir(tmp_path: Path) -> Path:
    """A private copy of the example experiments that a test may edit."""
    target = tmp_path / "experiments"
    target.mkdir()
    for path in EXAMPLES.glob("*.yaml"):
        shutil.copy(path, target / path.name)
    return target


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: Any
    metrics_url: str | None = None
    """The gunicorn master's /metrics (``ABX_METRICS_BIND``), when it serves one."""
    key: str | None = None
    """A token with every scope (None: the server runs with ABX_AUTH=off)."""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()
        return self.process.returncode


SERVER_START_SECONDS = float(os.environ.get("ABX_TEST_SERVER_START_SECONDS", "120"))
SERVER_KEYS: dict[str, str] = {}
"""base URL -> the all-scopes token made for that server (what ``Api`` sends by default)."""


def make_key(database_url: str, name: str, scopes: list[str] | str, **options: Any) -> str:
    """A real key in that database, as ``abx keys create`` makes it; returns the token."""
    with psycopg.connect(database_url, autocommit=True, connect_timeout=3) as conn:
        return create_key(conn, name, scopes, "cli:test-suite", **options).token


def start_server(
    env_overrides: dict[str, str], log_path: Path, workers: int = 2, key: str | None = None
) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "ABX_BIND": f"127.0.0.1:{port}",
        "ABX_METRICS_BIND": f"127.0.0.1:{free_port()}",
        "ABX_WORKERS": str(workers),
        "ABX_FLUSH_INTERVAL_SECONDS": "0.05",
        "ABX_STATE_POLL_SECONDS": "0.2",
        **env_overrides,
    }
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--no-migrate"],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=PROJECT_ROOT,
    )
    metrics_bind = env["ABX_METRICS_BIND"]
    metrics_url = f"http://{metrics_bind}/metrics" if metrics_bind else None
    server = Server(f"http://127.0.0.1:{port}", process, log_path, log_file, metrics_url, key)
    if key is not None:
        SERVER_KEYS[server.base_url] = key
    # Start-up is seconds on an idle machine; a loaded CI machine (or several suites on one
    # machine) can take a minute to import and warm the models: this bounds a hang, not speed.
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_file.close()
            raise RuntimeError(f"server exited during start-up:\n{server.log()}")
        try:
            if requests.get(f"{server.base_url}/healthz", timeout=0.5).status_code == 200:
                return server
        except requests.RequestException:
            time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server did not start:\n{server.log()}")


ServerFactory = Callable[..., Server]


@pytest.fixture
def server_factory(tmp_path: Path, db: str) -> Iterator[ServerFactory]:
    """Start real gunicorn servers; every one is stopped at the end of the test.

    It depends on ``db`` only so that servers stop before their database is dropped.
    """
    started: list[Server] = []

    def start(database_url: str, experiments: Path, **env: str) -> Server:
        overrides = {
            "ABX_DATABASE_URL": database_url,
            "ABX_EXPERIMENTS": str(experiments),
            "ABX_DATA_DIR": str(tmp_path / "data"),
            **env,
        }
        key = None
        if overrides.get("ABX_AUTH", "on") == "on":
            try:
                key = make_key(database_url, "test-suite", list(SCOPES))
            except psycopg.OperationalError:  # the database is away: no key can be made
                if "ABX_AUTH" not in env:  # unless the test asked for auth on regardless
                    overrides["ABX_AUTH"] = "off"
        server = start_server(overrides, tmp_path / f"server-{len(started)}.log", key=key)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


class Api:
    """requests against a server with its API key added.

    ``key=None`` sends the all-scopes key ``server_factory`` made for that server (none if it
    runs with auth off); pass a token to send that one, or ``""`` to send none.
    """

    def __init__(self, base_url: str, key: str | None = None) -> None:
        self.base_url = base_url
        if key is None:
            key = SERVER_KEYS.get(base_url)
        self.session = requests.Session()
        # No idle keep-alive connections: a stopping gthread worker would wait for them.
        self.session.headers["Connection"] = "close"
        if key:
            self.session.headers["Authorization"] = f"Bearer {key}"

    def post(self, path: str, body: Any = None, **kwargs: Any) -> requests.Response:
        return self.session.post(self.base_url + path, json=body, timeout=10, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.delete(self.base_url + path, timeout=10, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.session.get(self.base_url + path, timeout=10, **kwargs)

    def assign(self, experiment: str, unit: str | int, **attributes: Any) -> dict[str, Any]:
        response = self.post(
            "/v1/assign", {"experiment": experiment, "unit": unit, "attributes": attributes}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


@pytest.fixture
def server(server_factory: ServerFactory, db: str, experiments_dir: Path) -> Server:
    return server_factory(db, experiments_dir)


@pytest.fixture
def api(server: Server) -> Iterator[Api]:
    client = Api(server.base_url)
    yield client
    client.session.close()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, interval: float = 0.05) -> bool:
    """Poll until true; the generous default only costs time when a test is failing anyway."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
