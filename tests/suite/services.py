"""Which PostgreSQL and which Celery broker a test run uses, and why.

Given by the environment, a server is used as it is and never replaced: a run
that was told where its server is fails loudly when it is down (CI sets both).
Unset, the machine's usual address is tried; when nothing answers there, the
suite starts its own PostgreSQL and uses the filesystem broker the demo uses.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import kombu.exceptions
import psycopg
import redis
from amqp.exceptions import AMQPError
from kombu import Connection

DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/test"
EMBEDDED = "embedded"  # ABX_TEST_DATABASE_URL=embedded: the suite starts its own server
REDIS_URL = "redis://127.0.0.1:6379/0"
RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
FILESYSTEM = "filesystem://"
DEFAULT_DB_PREFIX = "abx_test_"
# PostgreSQL names are at most 63 bytes; the longest the suite adds is "template_" + 12 + "_".
_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")


class ServiceDown(RuntimeError):
    """A server named in the environment does not answer: the run stops rather than replace it."""


@dataclass(frozen=True)
class Choice:
    """What a run uses (``url``, or None: start the suite's own) and a line saying why."""

    url: str | None
    why: str


def shown(url: str) -> str:
    """The URL (or libpq key=value string) with its password hidden, for lines a person reads."""
    if "://" not in url:
        params = psycopg.conninfo.conninfo_to_dict(url)
        if params.get("password"):
            params["password"] = "***"
        return psycopg.conninfo.make_conninfo(**params)
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def database_prefix(configured: str | None) -> str:
    prefix = DEFAULT_DB_PREFIX if configured is None else configured
    if not _PREFIX.match(prefix):
        raise ValueError(
            f"ABX_TEST_DB_PREFIX={prefix!r}: use 1-41 lower-case letters, digits or underscores,"
            " not starting with a digit (it begins database names)"
        )
    return prefix


def postgres_refusal(url: str) -> str | None:
    """None when a server at ``url`` accepts a connection, else what went wrong."""
    try:
        with psycopg.connect(url, connect_timeout=3):
            return None
    except psycopg.Error as error:
        return str(error).strip().splitlines()[0]


def choose_database(configured: str | None, default: str = DEFAULT_DATABASE_URL) -> Choice:
    """``ABX_TEST_DATABASE_URL`` if set (``embedded``: the suite's own), else the default, else own."""
    if configured == EMBEDDED:
        return Choice(None, "ABX_TEST_DATABASE_URL=embedded")
    if configured:
        refusal = postgres_refusal(configured)
        if refusal is not None:
            raise ServiceDown(f"ABX_TEST_DATABASE_URL={shown(configured)}: {refusal}")
        return Choice(configured, "from ABX_TEST_DATABASE_URL")
    refusal = postgres_refusal(default)
    if refusal is None:
        return Choice(default, "the default address answered")
    return Choice(None, f"nothing usable at {default}: {refusal}")


def redis_answers(url: str) -> bool:
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2) as client:
            return bool(client.ping())
    except redis.RedisError:
        return False


def rabbitmq_answers(url: str) -> bool:
    try:
        with Connection(url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=0)  # one try, no back-off
            return True
    except (OSError, AMQPError, kombu.exceptions.OperationalError):  # refused, reset, refused login
        return False


def broker_answers(url: str) -> bool:
    if url == FILESYSTEM:
        return True
    return (
        redis_answers(url) if url.startswith(("redis://", "rediss://")) else rabbitmq_answers(url)
    )


def choose_broker(
    configured: str | None, redis_url: str = REDIS_URL, rabbitmq_url: str = RABBITMQ_URL
) -> Choice:
    """``ABX_TEST_BROKER_URL`` if set (``filesystem://`` for folders), else Redis, RabbitMQ, folders."""
    if configured:
        if not broker_answers(configured):
            raise ServiceDown(f"ABX_TEST_BROKER_URL={shown(configured)} does not answer")
        return Choice(configured, "from ABX_TEST_BROKER_URL")
    if redis_answers(redis_url):
        return Choice(redis_url, "Redis answered")
    if rabbitmq_answers(rabbitmq_url):
        return Choice(rabbitmq_url, "RabbitMQ answered")
    return Choice(FILESYSTEM, f"nothing answered at {redis_url} nor {shown(rabbitmq_url)}")


def celery_environment(broker: str) -> dict[str, str]:
    """Settings for a Celery process on ``broker``: an empty URL means the folder broker."""
    return {"ABX_BROKER_URL": "" if broker == FILESYSTEM else broker}
