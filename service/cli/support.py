"""What every ``abx`` command shares: settings from the environment, validated experiments."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from service.experiments.model_registry import model_registry
from service.experiments.schema import Experiment
from service.experiments.validation import LoadResult, load_experiments
from service.settings import Settings


def settings_from_env(**overrides: object) -> Settings:
    values = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**values)  # type: ignore[arg-type]


def experiments_or_exit(settings: Settings, check_models: bool = True) -> LoadResult:
    """Load and validate the experiment folder; print every problem and exit 1 if any.

    Commands that never load a model (importing events, exporting state) skip the model
    file checks, so they work on a host without the model files.
    """
    registry = model_registry(settings.mlflow_tracking_uri, settings.models)
    models = settings.models if check_models else None
    result = load_experiments([settings.experiments], models, registry)
    if not result.ok:
        for problem in result.problems:
            click.echo(str(problem), err=True)
        sys.exit(1)
    return result


@contextmanager
def database_connection(missing_table: str | None = None) -> Iterator[Any]:
    """An autocommit connection to the configured database; exit 1 with a plain message if not.

    ``missing_table`` names what a command's table is for, so a database that was never
    migrated gets "run `abx migrate` first" rather than a traceback.
    """
    import psycopg

    from service.storage.embedded import database_url

    settings = settings_from_env()
    try:
        with psycopg.connect(
            database_url(settings.database_url, settings.data_dir), autocommit=True
        ) as conn:
            yield conn
    except psycopg.errors.UndefinedTable:
        if missing_table is None:
            raise
        click.echo(f"the {missing_table} table is missing: run `abx migrate` first", err=True)
        sys.exit(1)
    except psycopg.OperationalError as error:
        click.echo(f"cannot reach the database: {error}", err=True)
        sys.exit(1)


AUTH_OFF = (
    "ABX_AUTH=off: authentication is off, every route is open to anyone who can reach this server"
)


def refuse_unsafe_settings(settings: Settings, result: LoadResult, serving: bool = True) -> None:
    """Exit 1 on settings a server (or worker) must not start with, saying what to do."""
    from service.decisions.webhooks import check_secrets

    if serving and settings.api_key:
        click.echo(
            "ABX_API_KEY is no longer read: keys live in PostgreSQL, each with its own scopes."
            " Create them with `abx keys create --name NAME --scopes SCOPES` and unset"
            " ABX_API_KEY.",
            err=True,
        )
        sys.exit(1)
    webhooks = any(item.experiment.policy.webhooks for item in result.experiments)
    try:
        check_secrets(settings.webhook_secrets, webhooks)
    except ValueError as error:
        click.echo(str(error), err=True)
        sys.exit(1)


def experiment_or_exit(settings: Settings, key: str) -> Experiment:
    """One valid experiment by key (other files may be invalid), or exit 1 saying so."""
    result = load_experiments([settings.experiments])
    experiment = next((i.experiment for i in result.experiments if i.experiment.key == key), None)
    if experiment is None:
        click.echo(f"no valid experiment {key!r} in {settings.experiments}", err=True)
        sys.exit(1)
    return experiment


def os_actor() -> str:
    """``cli:<user>``: who ran a command that writes, as the operating system knows them."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid
        import os

        user = f"uid-{os.getuid()}"
    return f"cli:{user}"
