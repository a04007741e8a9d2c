"""``abx shadow report KEY``: each shadow against the served model, hour by hour."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta

import click


def _number(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@click.group()
def shadow() -> None:
    """Shadow variants: how they compare with the model that serves."""


@shadow.command("report")
@click.argument("experiment_key")
@click.option("--hours", type=click.IntRange(1, 720), default=24, show_default=True,
              help="Hours to cover, the current one included.")  # fmt: skip
def report(experiment_key: str, hours: int) -> None:
    """Agreement, output differences and latency per hour, with 95 % intervals."""
    from service.cli.support import experiment_or_exit, settings_from_env
    from service.decisions.shadows import graduation_checks
    from service.inference.records import shadow_reports
    from service.storage.database import Database
    from service.storage.embedded import database_url

    settings = settings_from_env()
    experiment = experiment_or_exit(settings, experiment_key)
    if not any(v.shadow is not None for v in experiment.variants):
        click.echo(f"{experiment_key} has no shadow variant", err=True)
        sys.exit(1)
    since = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(
        hours=hours - 1
    )
    database = Database(database_url(settings.database_url, settings.data_dir), max_size=1)
    database.open()
    try:
        with database.pool.connection(timeout=10.0) as conn:
            reports = shadow_reports(conn, experiment, since)
            graduation = {c.variant: c for c in graduation_checks(conn, experiment)}
    finally:
        database.close()
    for found in reports:
        click.echo(f"{experiment_key}/{found.variant} against {found.served_by} "
                   f"(sample rate {found.sample_rate:g}), since {since.isoformat()}")  # fmt: skip
        click.echo("  hour (UTC)                  runs  agreement [95% CI]       mean|diff| [95% CI]"
                   "        max|diff|  latency ms [95% CI]   p99 ms  served p99")  # fmt: skip
        for window in [*found.hours, *([found.overall] if found.overall else [])]:
            click.echo(
                f"  {window.hour[:25]:<26} {window.runs:>5}  "
                f"{_number(window.agreement)} [{_number(window.agreement_ci_low)}, "
                f"{_number(window.agreement_ci_high)}]  "
                f"{_number(window.mean_abs_diff, 4)} [{_number(window.mean_abs_diff_ci_low, 4)}, "
                f"{_number(window.mean_abs_diff_ci_high, 4)}]  {_number(window.max_abs_diff, 4)}  "
                f"{window.latency_mean_ms:.3f} [{window.latency_mean_ci_low_ms:.3f}, "
                f"{window.latency_mean_ci_high_ms:.3f}]  {_number(window.latency_p99_ms)}  "
                f"{_number(window.served_latency_p99_ms)}"
            )
        if not found.hours:
            click.echo("  no shadow runs in these hours")
        check = graduation.get(found.variant)
        if check is not None:
            status = "ready" if check.ready else f"latest hour: {check.missed}"
            click.echo(f"  graduation ({check.action}, weight {check.weight:g}): "
                       f"{check.hours_held}/{check.hours_needed} hours within bounds; {status}")  # fmt: skip
