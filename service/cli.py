"""The ``abx`` command: validate, migrate, serve, demo."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from service.embedded_postgres import database_url
from service.experiment_validation import experiment_files, load_experiments
from service.schema_migrations import MigrationError, apply_migrations
from service.settings import Settings


def _settings(**overrides: object) -> Settings:
    values = {key: value for key, value in overrides.items() if value is not None}
    return Settings(**values)  # type: ignore[arg-type]


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
def main(verbose: bool) -> None:
    """abx: experiments for ML models, from YAML to decisions."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def validate(paths: tuple[Path, ...]) -> None:
    """Check experiment files (default: ABX_EXPERIMENTS) and print file:line: field: message."""
    targets = list(paths) or [_settings().experiments]
    files = experiment_files(targets)
    if not files:
        click.echo(
            f"no experiment files (*.yaml, *.yml) in {', '.join(map(str, targets))}", err=True
        )
        sys.exit(1)
    result = load_experiments(targets)
    for problem in result.problems:
        click.echo(str(problem), err=True)
    if not result.ok:
        click.echo(f"{len(result.problems)} problem(s) in {len(files)} file(s)", err=True)
        sys.exit(1)
    click.echo(f"{len(result.experiments)} experiment(s) valid")


@main.command()
def migrate() -> None:
    """Apply pending PostgreSQL migrations (safe to run twice or concurrently)."""
    settings = _settings()
    try:
        applied = apply_migrations(
            database_url(settings.database_url, settings.data_dir), settings.migrations
        )
    except MigrationError as error:
        click.echo(f"migration failed: {error}", err=True)
        sys.exit(1)
    click.echo(
        f"applied {len(applied)} migration(s)" + (f": {', '.join(applied)}" if applied else "")
    )


@main.command()
@click.option("--bind", help="HOST:PORT (default ABX_BIND or 127.0.0.1:8000).")
@click.option("--workers", type=int, help="gunicorn workers (default: one per core, at least 2).")
@click.option(
    "--migrate/--no-migrate",
    "run_migrations",
    default=True,
    show_default=True,
    help="Apply pending migrations before serving.",
)
def serve(bind: str | None, workers: int | None, run_migrations: bool) -> None:
    """Serve the HTTP API under gunicorn."""
    from service.server import AbxServer

    settings = _settings(bind=bind, workers=workers)
    result = load_experiments([settings.experiments])
    if not result.ok:
        for problem in result.problems:
            click.echo(str(problem), err=True)
        sys.exit(1)
    url = database_url(settings.database_url, settings.data_dir)
    if run_migrations:
        apply_migrations(url, settings.migrations)
    AbxServer(settings.model_copy(update={"database_url": url})).run()


@main.command()
@click.option(
    "--duration",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds of simulated traffic (0: until Ctrl-C).",
)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--users", type=int, default=5000, show_default=True, help="Simulated web-app users.")
@click.option(
    "--clients",
    type=int,
    default=8,
    show_default=True,
    help="Concurrent simulated web-app clients.",
)
def demo(duration: float, port: int, users: int, clients: int) -> None:
    """Start everything on embedded defaults and drive simulated web-app traffic."""
    from service.demo import run_demo

    sys.exit(run_demo(_settings(), duration=duration, port=port, users=users, clients=clients))


if __name__ == "__main__":
    main()
