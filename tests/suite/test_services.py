"""Which PostgreSQL and broker a run takes: the one named, the usual address, or its own."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import psycopg
import pytest

from service.settings import PROJECT_ROOT
from tests.conftest import admin_url, database_prefix, free_port
from tests.suite import services


@pytest.fixture
def garbage_port() -> Iterator[int]:
    """A port where something answers, but neither PostgreSQL nor a broker."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.sendall(b"not a server you know\r\n")
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(5)
    listener.close()


def test_the_default_address_is_used_when_it_answers() -> None:
    choice = services.choose_database(None, default=admin_url())
    assert choice == services.Choice(admin_url(), "the default address answered")


@pytest.mark.parametrize("where", ["closed", "garbage"])
def test_the_suite_starts_its_own_when_nothing_usable_answers(
    where: str, garbage_port: int
) -> None:
    port = free_port() if where == "closed" else garbage_port
    default = f"postgresql://postgres@127.0.0.1:{port}/test?connect_timeout=2"
    choice = services.choose_database(None, default=default)
    assert choice.url is None
    assert choice.why.startswith(f"nothing usable at {default}: ")


def test_a_named_server_is_used_and_never_replaced() -> None:
    assert services.choose_database(admin_url()).url == admin_url()
    assert services.choose_database("embedded") == services.Choice(
        None, "ABX_TEST_DATABASE_URL=embedded"
    )
    down = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/test"
    with pytest.raises(services.ServiceDown, match=r"ABX_TEST_DATABASE_URL=.*:\*\*\*@") as error:
        services.choose_database(down)
    assert "secret" not in str(error.value)


def test_the_folder_broker_when_neither_redis_nor_rabbitmq_answers(garbage_port: int) -> None:
    for port in (free_port(), garbage_port):
        redis_url = f"redis://127.0.0.1:{port}/0"
        rabbitmq_url = f"amqp://guest:guest@127.0.0.1:{port}//"
        choice = services.choose_broker(None, redis_url=redis_url, rabbitmq_url=rabbitmq_url)
        assert choice.url == services.FILESYSTEM
        assert (
            choice.why == f"nothing answered at {redis_url} nor amqp://guest:***@127.0.0.1:{port}//"
        )


def test_a_named_broker_must_answer(garbage_port: int) -> None:
    assert services.choose_broker("filesystem://").url == "filesystem://"
    for url in (f"redis://127.0.0.1:{garbage_port}/0", f"amqp://u:p@127.0.0.1:{free_port()}//"):
        with pytest.raises(services.ServiceDown, match="does not answer"):
            services.choose_broker(url)


def test_the_runs_broker_answers_and_workers_get_it() -> None:
    broker = os.environ["ABX_TEST_BROKER_URL"]
    assert services.broker_answers(broker)
    expected = "" if broker == services.FILESYSTEM else broker
    assert services.celery_environment(broker) == {"ABX_BROKER_URL": expected}


def test_database_names_carry_the_runs_prefix(db: str, template_database: str) -> None:
    prefix = database_prefix()
    assert psycopg.conninfo.conninfo_to_dict(db)["dbname"].startswith(prefix)
    assert template_database.startswith(f"{prefix}template_")


@pytest.mark.parametrize("prefix", ["", "9abc_", "Abx_", "abx-test-", "a" * 42])
def test_a_prefix_that_cannot_begin_a_database_name_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="ABX_TEST_DB_PREFIX="):
        services.database_prefix(prefix)


def test_prefixes_that_fit() -> None:
    assert services.database_prefix(None) == "abx_test_"
    assert services.database_prefix("ci_run_17_") == "ci_run_17_"
    assert services.database_prefix("a" * 41) == "a" * 41


def test_passwords_stay_out_of_what_is_printed() -> None:
    assert services.shown("redis://:hunter2@h:6379/0") == "redis://:***@h:6379/0"
    assert "hunter2" not in services.shown("host=/tmp/x user=u password=hunter2 dbname=d")
    assert services.shown("filesystem://") == "filesystem://"


def start_a_run(**env: str) -> subprocess.CompletedProcess[str]:
    """A pytest of its own over one quick test, with the run's settings overridden."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist",
         "tests/suite/test_services.py::test_prefixes_that_fit"],
        cwd=PROJECT_ROOT, env={**child_env, **env}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ABX_TEST_DB_PREFIX": "abx-test-"}, "ABX_TEST_DB_PREFIX='abx-test-': use 1-41"),
        (
            {"ABX_TEST_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{free_port()}/test"},
            "ABX_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:",
        ),
        (
            {"ABX_TEST_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0"},
            "does not answer",
        ),
    ],
)
def test_a_run_stops_at_once_on_a_setting_it_cannot_honour(
    env: dict[str, str], message: str
) -> None:
    result = start_a_run(**env)
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert message in result.stderr


def test_a_run_whose_own_server_cannot_start_fails_with_the_reason() -> None:
    result = start_a_run(ABX_TEST_DATABASE_URL="embedded", PGSERVER_POSTGRES_VERSION="99")
    assert result.returncode != 0
    assert "Unsupported Postgres version" in result.stdout + result.stderr


def test_a_run_says_which_servers_it_took() -> None:
    result = start_a_run(ABX_TEST_BROKER_URL="filesystem://")
    assert result.returncode == 0, result.stdout + result.stderr
    database = services.shown(os.environ["ABX_TEST_DATABASE_URL"])
    lines = result.stdout.splitlines()
    # once in the header, once at the end
    assert (
        sum(
            line.startswith("abx tests: PostgreSQL ")
            and line.endswith(f": {database} (from ABX_TEST_DATABASE_URL)")
            for line in lines
        )
        == 2
    ), result.stdout
    assert lines.count("abx tests: Celery broker filesystem:// (from ABX_TEST_BROKER_URL)") == 2
    assert "skipped for a missing system tool: 0 tests" in lines
