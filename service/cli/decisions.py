"""``abx worker``, ``abx analyze``, ``abx action`` and ``abx export-state``: the decision loop."""

from __future__ import annotations

import os
import signal
import sys
from typing import TYPE_CHECKING

import click

from service.cli.support import experiments_or_exit, settings_from_env
from service.settings import Settings
from service.storage.embedded import database_url

if TYPE_CHECKING:
    from service.storage.leader import Leadership


@click.command()
@click.option("--beat", is_flag=True, help="Also run the scheduler (one per deployment).")
@click.option("--concurrency", type=int, default=2, show_default=True)
def worker(beat: bool, concurrency: int) -> None:
    """Run a Celery worker that analyses experiments and applies decisions.

    Its main process serves the pool's metrics on ABX_WORKER_METRICS_BIND.
    """
    from service.observability.exposition import enable_multiprocess, start_exporter

    settings = settings_from_env()
    exporter = None
    if settings.worker_metrics_bind:
        # Before the Celery app (and with it the tasks' metrics) is imported, and before
        # the pool forks: the children then write to the folder the exporter reads.
        directory = enable_multiprocess(settings.metrics_dir)
        try:
            exporter = start_exporter(
                settings.worker_metrics_bind, directory, settings.metrics_dir is None
            )
        except OSError as error:
            click.echo(
                f"cannot serve metrics on ABX_WORKER_METRICS_BIND="
                f"{settings.worker_metrics_bind}: {error}",
                err=True,
            )
            sys.exit(1)
    from service.celery_app import app
    from service.cli.support import refuse_unsafe_settings

    refuse_unsafe_settings(
        settings, experiments_or_exit(settings, check_models=False), serving=False
    )

    leadership = _lead_the_schedule(settings) if beat else None
    argv = [
        "worker",
        "--loglevel=INFO",
        f"--concurrency={concurrency}",
        f"--queues={settings.queue}",
    ]
    if beat:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        argv += ["--beat", f"--schedule={settings.data_dir / 'celerybeat-schedule'}"]
    try:
        app.worker_main(argv=argv)
    finally:
        if leadership is not None:
            leadership.release()
        if exporter is not None:
            exporter.close()


def _lead_the_schedule(settings: Settings) -> Leadership:
    """Hold the scheduler's lock before the beat starts; wait as a standby while another does.

    A holder that loses its database connection can no longer prove it is the only one, so
    it stops (SIGTERM: Celery's warm shutdown) and its supervisor starts it again as a standby.
    """
    from service.storage.leader import Leadership

    def lost() -> None:
        click.echo("lost the scheduler's lock (database connection); stopping", err=True)
        os.kill(os.getpid(), signal.SIGTERM)

    leadership = Leadership(
        database_url(settings.database_url, settings.data_dir), "scheduler", on_lost=lost
    )
    leadership.acquire(
        waiting=lambda: click.echo(
            "another scheduler holds the lock: waiting as a standby until it stops", err=True
        )
    )
    click.echo("holding the scheduler's lock", err=True)
    return leadership


@click.command()
@click.argument("experiment_key")
def analyze(experiment_key: str) -> None:
    """Analyse one experiment now (the workers' own code) and print the decision."""
    import json

    from service.decisions.tasks import analyze_now, context, post_webhook

    if experiment_key not in context().experiments:
        click.echo(f"there is no experiment {experiment_key!r}", err=True)
        sys.exit(1)
    outcome = analyze_now(experiment_key)
    decision = outcome.decision
    click.echo(
        f"{experiment_key}: {decision.kind}" + (f" {decision.variant}" if decision.variant else "")
    )
    click.echo(f"  reason: {decision.reason}")
    click.echo(f"  state:  {decision.state_after.state}")
    shown = ("units", "srm", "primary", "guardrails", "skipped", "errors", "maturity", "drift")
    summary = {k: outcome.numbers[k] for k in shown if k in outcome.numbers}
    click.echo(json.dumps(summary, indent=2, default=str))
    for delivery_id in outcome.deliveries:
        post_webhook(delivery_id)


@click.command()
@click.argument("experiment_key")
@click.argument("action", type=click.Choice(["approve", "pause", "resume", "promote", "rollback"]))
@click.option("--variant", help="The variant to promote or roll back.")
@click.option("--reason", required=True, help="Why: kept in the audit log.")
def action(experiment_key: str, action: str, variant: str | None, reason: str) -> None:
    """Approve, pause, resume, promote or roll back by hand (audited).

    The audit log records the operating-system user who ran it (cli:<user>): whoever can run
    this has the database's credentials, so no name typed on the command line is taken.
    """
    from service.cli.support import os_actor
    from service.decisions.actions import ActionRefused, act
    from service.decisions.tasks import context, experiment, post_webhook, registry_of

    if experiment_key not in context().experiments:
        click.echo(f"there is no experiment {experiment_key!r}", err=True)
        sys.exit(1)
    try:
        with context().database.pool.connection(timeout=10.0) as conn:
            decision_id, decision, deliveries = act(
                conn,
                experiment(experiment_key),
                action,
                variant,
                os_actor(),
                reason,
                registry_of(context()),
            )
    except (ActionRefused, ValueError) as refused:
        click.echo(f"refused: {refused}", err=True)
        sys.exit(1)
    click.echo(
        f"{experiment_key}: {action} recorded as {decision_id}; state {decision.state_after.state}"
    )
    for delivery_id in deliveries:
        post_webhook(delivery_id)


@click.command("export-state")
@click.option("--write", is_flag=True, help="Edit the YAML files (default: print a diff).")
def export_state(write: bool) -> None:
    """Write concluded decisions (promoted, rolled back, inconclusive) back into the YAML."""
    import difflib

    import psycopg

    from service.assignment.registry import Registry
    from service.assignment.state import read_states
    from service.decisions.export import export_change

    settings = settings_from_env()
    result = experiments_or_exit(settings, check_models=False)
    registry = Registry(result)
    with psycopg.connect(database_url(settings.database_url, settings.data_dir)) as conn:
        states = read_states(conn, registry.experiments)
    changes = 0
    for item in result.experiments:
        state = states.get(item.experiment.key)
        change = export_change(item.source.path, item.experiment, state) if state else None
        if change is None:
            continue
        changes += 1
        if write:
            change.path.write_text(change.after, encoding="utf-8")
            click.echo(f"updated {change.path}")
        else:
            diff = difflib.unified_diff(
                change.before.splitlines(True),
                change.after.splitlines(True),
                str(change.path),
                str(change.path),
            )
            click.echo("".join(diff), nl=False)
    click.echo(f"{changes} experiment file(s) {'updated' if write else 'would change'}", err=True)
