"""The ``abx`` command: validate, migrate, serve, demo, models."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from service.cli.backup import backup, restore
from service.cli.decisions import action, analyze, export_state, worker
from service.cli.infer import infer
from service.cli.keys import keys, webhooks
from service.cli.quarantine import quarantine
from service.cli.score import score
from service.cli.shadow import shadow
from service.cli.status import status
from service.cli.support import (
    AUTH_OFF,
    experiment_or_exit,
    experiments_or_exit,
    refuse_unsafe_settings,
    settings_from_env,
)
from service.experiments.model_registry import model_registry
from service.experiments.validation import LoadResult, experiment_files, load_experiments
from service.storage.embedded import database_url
from service.storage.migrations import MigrationError, apply_migrations


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at debug level.")
def main(verbose: bool) -> None:
    """abx: experiments for ML models, from YAML to decisions."""
    from service.observability.logging import configure_logging

    settings = settings_from_env()
    level = "DEBUG" if verbose else settings.log_level
    configure_logging(settings.log_format, level, settings.log_units)


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
def validate(paths: tuple[Path, ...]) -> None:
    """Check experiment files (default: ABX_EXPERIMENTS) and print file:line: field: message."""
    settings = settings_from_env()
    targets = list(paths) or [settings.experiments]
    files = experiment_files(targets)
    if not files:
        click.echo(
            f"no experiment files (*.yaml, *.yml) in {', '.join(map(str, targets))}", err=True
        )
        sys.exit(1)
    registry = model_registry(settings.mlflow_tracking_uri, settings.models)
    result = load_experiments(targets, settings.models, registry)
    for problem in result.problems:
        click.echo(str(problem), err=True)
    if not result.ok:
        click.echo(f"{len(result.problems)} problem(s) in {len(files)} file(s)", err=True)
        sys.exit(1)
    for item in result.experiments:
        if item.experiment.policy.expected_effect is None:
            continue
        from service.decisions.plan import underpowered  # scipy: only when there is a check

        warning = underpowered(item.experiment)
        if warning is not None:
            line = item.source.line_of(("policy", "planned_units"))
            click.echo(f"{item.source.path}:{line}: policy.planned_units: warning: {warning}",
                       err=True)  # fmt: skip
    holdouts = f", {len(result.holdouts)} holdout(s)" if result.holdouts else ""
    click.echo(f"{len(result.experiments)} experiment(s){holdouts} valid")


@main.command()
def migrate() -> None:
    """Apply pending PostgreSQL migrations (safe to run twice or concurrently)."""
    settings = settings_from_env()
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
    from service.demo.models import build_missing_demo_models
    from service.server import AbxServer

    settings = settings_from_env(bind=bind, workers=workers)
    built = build_missing_demo_models(settings.experiments, settings.models)
    if built:
        click.echo(f"built demo models into {settings.models}: {', '.join(built)}", err=True)
    result = experiments_or_exit(settings)
    refuse_unsafe_settings(settings, result)
    if settings.auth == "off":
        click.echo(f"WARNING: {AUTH_OFF}", err=True)
    url = database_url(settings.database_url, settings.data_dir)
    if run_migrations:
        apply_migrations(url, settings.migrations)
    if result.holdouts:
        refuse_shrunk_holdouts(url, result)
    AbxServer(settings.model_copy(update={"database_url": url})).run()


def refuse_shrunk_holdouts(url: str, result: LoadResult) -> None:
    """Exit if a holdout's share fell under its seed since it last served (holdout_shares).

    With the database away nothing can be compared: serving goes on (it never waits on
    PostgreSQL) and the check runs at the next start.
    """
    import psycopg

    from service.assignment.holdouts import record_shares

    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            refusals = record_shares(conn, {i.holdout.key: i.holdout for i in result.holdouts})
    except psycopg.Error as error:
        click.echo(f"WARNING: holdout shares not checked (database unavailable: {error})", err=True)
        return
    for refusal in refusals:
        click.echo(refusal, err=True)
    if refusals:
        sys.exit(1)


PLAN_DESIGNS = ["policy", "msprt", "confidence_sequence", "group_sequential", "fixed", "obf",
                "pocock", "spending-obf"]  # fmt: skip


@main.command()
@click.argument("experiment_key")
@click.option("--mde", "mde", type=float, required=True, help="Minimum detectable effect.")
@click.option("--relative", is_flag=True, help="--mde is relative to the baseline (0.05 = +5 %).")
@click.option("--alpha", type=float, default=0.05, show_default=True)
@click.option("--power", type=float, default=0.8, show_default=True)
@click.option(
    "--design",
    type=click.Choice(PLAN_DESIGNS),
    default="policy",
    show_default=True,
    help="The experiment's policy.method (default), one of the decisions' methods, a fixed"
    " horizon, classic O'Brien-Fleming/Pocock, or Lan-DeMets OBF spending.",
)
@click.option(
    "--looks", type=int, default=5, show_default=True, help="Looks of a sequential design."
)
@click.option("--baseline", type=float, help="Control rate or mean (default: observed).")
@click.option(
    "--sd", "standard_deviation", type=float, help="Metric standard deviation (default: observed)."
)
@click.option("--daily-units", type=float, help="Units entering per day (default: observed).")
@click.option(
    "--effect",
    type=click.Choice(["multiplicative", "additive"]),
    default="multiplicative",
    show_default=True,
    help="Count, continuous or ratio metrics: a multiplicative lift scales the treatment's"
    " standard deviation by 1 + lift (needs the relative lift: --relative or a baseline);"
    " additive keeps equal deviations.",
)
def plan(
    experiment_key: str,
    mde: float,
    relative: bool,
    alpha: float,
    power: float,
    design: str,
    looks: int,
    baseline: float | None,
    standard_deviation: float | None,
    daily_units: float | None,
    effect: str,
) -> None:
    """Sample size per variant and expected duration of EXPERIMENT_KEY's primary metric."""
    from service.decisions.plan import PlanInputs, make_plan, observed_inputs

    settings = settings_from_env()
    experiment = experiment_or_exit(settings, experiment_key)
    observed: dict[str, float] = {}
    if None in (
        daily_units,
        baseline if experiment.metrics.primary.type == "binary" else standard_deviation,
    ):
        import psycopg

        try:
            url = database_url(settings.database_url, settings.data_dir)
            with psycopg.connect(url, connect_timeout=3) as conn:
                observed = observed_inputs(conn, experiment)
        except psycopg.Error as error:
            click.echo(f"(no observed data: {error})", err=True)
    inputs = PlanInputs(
        mde, relative, alpha, power, design, looks, baseline, standard_deviation, daily_units,
        effect,
    )  # fmt: skip
    try:
        result_plan = make_plan(experiment, inputs, observed)
    except ValueError as error:
        click.echo(f"cannot plan: {error}", err=True)
        sys.exit(1)
    metric = experiment.metrics.primary
    shown = f"{design} ({experiment.policy.method})" if design == "policy" else design
    click.echo(f"{experiment.key}: primary metric {metric.name} ({metric.type}), design {shown}")
    for name in ("baseline", "standard_deviation", "treatment_standard_deviation", "daily_units"):
        value = getattr(result_plan, name)
        if value is not None:
            click.echo(f"  {name:<28} {value:.6g} ({result_plan.sources.get(name, '')})")
    click.echo(f"  alpha per comparison {result_plan.alpha_per_comparison:.4g}, power {power}")
    if result_plan.inflation_factor > 1.0:
        click.echo(f"  inflation factor     {result_plan.inflation_factor:.4f}")
    if result_plan.bandit is not None:
        click.echo(f"  assumed              {result_plan.bandit_assumption}")
        click.echo(
            f"  units (expected under that allocation): control {result_plan.n_control}, the"
            f" better arm {result_plan.n_per_treatment}, total {result_plan.n_total}"
        )
    else:
        click.echo(
            f"  units: control {result_plan.n_control}, each treatment {result_plan.n_per_treatment}, total {result_plan.n_total}"
        )
    if result_plan.days is not None:
        click.echo(f"  expected duration    {result_plan.days} day(s)")
    else:
        click.echo("  expected duration    unknown: pass --daily-units or collect some traffic")


@main.command()
@click.argument("experiment_key")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="HTML file to write (default: EXPERIMENT_KEY-report.html).",
)
def report(experiment_key: str, output: Path | None) -> None:
    """Write EXPERIMENT_KEY's dashboard as one self-contained HTML file (plotly.js inlined)."""
    import psycopg

    from dashboards.report import report_html

    settings = settings_from_env()
    experiment = experiment_or_exit(settings, experiment_key)
    target = output or Path(f"{experiment_key}-report.html")
    try:
        url = database_url(settings.database_url, settings.data_dir)
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as conn:
            html = report_html(conn, experiment)
    except psycopg.Error as error:
        click.echo(f"cannot read the experiment's data: {error}", err=True)
        sys.exit(1)
    target.write_text(html, encoding="utf-8")
    click.echo(f"wrote {target} ({len(html.encode()):,} bytes, self-contained)")


@main.group()
def events() -> None:
    """Outcome events: backfill history."""


@events.command("import")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def import_events(path: Path) -> None:
    """Validate PATH (CSV or NDJSON) whole, then store its events idempotently."""
    import psycopg

    from service.events.file_import import import_rows, validate_file

    settings = settings_from_env()
    result = experiments_or_exit(settings, check_models=False)
    experiments = {item.experiment.key: item.experiment for item in result.experiments}
    try:
        rows, errors = validate_file(path, experiments)
    except ValueError as unreadable:
        click.echo(str(unreadable), err=True)
        sys.exit(1)
    if errors:
        for event_error in errors[:50]:
            click.echo(
                f"{path}: event {event_error.index + 1}: {event_error.field}: {event_error.message}",
                err=True,
            )
        click.echo(f"{len(errors)} problem(s); nothing was imported", err=True)
        sys.exit(1)
    url = database_url(settings.database_url, settings.data_dir)
    with (
        psycopg.connect(url, autocommit=True) as conn,
        click.progressbar(length=len(rows), label=f"importing {len(rows)} events") as bar,
    ):
        fresh = import_rows(conn, rows, bar.update)
    click.echo(f"imported {fresh} new event(s), {len(rows) - fresh} duplicate(s)")


@main.command()
@click.option(
    "--duration",
    type=float,
    default=180.0,
    show_default=True,
    help="Longest run in seconds (0: until Ctrl-C); it ends 10 s after the promotion.",
)
@click.option(
    "--analysis-interval",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds between the worker's analyses (production default: ABX_ANALYSIS_INTERVAL_SECONDS).",
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
def demo(duration: float, analysis_interval: float, port: int, users: int, clients: int) -> None:
    """Start everything on embedded defaults and drive simulated web-app traffic.

    The server, a Celery worker with its scheduler and PostgreSQL all run locally; a
    simulated web app assigns users, asks their variants' models and reports outcomes,
    until the worker promotes the better model.
    """
    from service.demo.run import run_demo

    sys.exit(
        run_demo(
            settings_from_env(),
            duration=duration,
            port=port,
            users=users,
            clients=clients,
            analysis_interval=analysis_interval,
        )
    )


@main.group()
def models() -> None:
    """ONNX models: build the demo models, quantize a model, profile a reference."""


@models.command("demo")
@click.option("--root", type=click.Path(path_type=Path), help="Default: ABX_MODELS.")
@click.option("--force", is_flag=True, help="Rebuild files that exist.")
def models_demo(root: Path | None, force: bool) -> None:
    """Build the demo models (seeded: the checksums in experiments/*.yaml hold), and a reference
    profile of each from its training data (for ``model.reference``)."""
    from service.cli.profile import profile_table
    from service.demo.models import TRAIN_ROWS, build_demo_models, demo_dataset

    target = root or settings_from_env().models
    training = demo_dataset()[0][:TRAIN_ROWS]  # the models' inputs (after the YAML's scaling)
    for name, digest in build_demo_models(target, force=force).items():
        click.echo(f"{target / name}  sha256 {digest}")
        try:
            profile, profile_digest, _, _ = profile_table(target / name, training, None)
        except Exception as error:  # a model that does not take the demo rows
            click.echo(f"  (no reference profile: {error})")
            continue
        click.echo(f"  reference: {{path: {profile.name}, sha256: {profile_digest}}}")


@models.command("profile")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Reference inputs: CSV (a header, one column per feature) or NDJSON (one"
              " object per line: input name -> row, or one row as a list).")  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="Default: MODEL with .profile.json.")  # fmt: skip
def models_profile(model: Path, data: Path, output: Path | None) -> None:
    """Run MODEL on reference data; write its reference profile and print the YAML to pin it."""
    from service.cli.profile import write_profile

    try:
        target, digest, features, rows = write_profile(model, data, output)
    except ValueError as error:
        click.echo(f"{data}: {error}", err=True)
        sys.exit(1)
    click.echo(f"{target}: {features} features over {rows} reference rows")
    click.echo(f"      reference: {{path: {target.name}, sha256: {digest}}}")


@models.command("quantize")
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("target", type=click.Path(dir_okay=False, path_type=Path))
def models_quantize(source: Path, target: Path) -> None:
    """Write SOURCE dynamically quantized to int8 as TARGET; compare them on the demo data."""
    from service.demo.models import TRAIN_ROWS, demo_dataset
    from service.experiments.model_refs import file_sha256
    from service.inference.quantization import compare_models, quantize_model

    quantize_model(source, target)
    click.echo(
        f"{target}: {target.stat().st_size:,} bytes (float: {source.stat().st_size:,}),"
        f" sha256 {file_sha256(target)}"
    )
    try:
        features, labels = demo_dataset()
        result = compare_models(source, target, features[TRAIN_ROWS:], labels[TRAIN_ROWS:])
    except Exception as error:  # not a model of the demo data's shape
        click.echo(f"(no comparison on the demo data: {error})")
        return
    click.echo(
        f"demo data: accuracy {result.accuracy_float:.4f} -> {result.accuracy_quantized:.4f}"
        f" (delta {result.accuracy_delta:+.4f}), largest probability difference"
        f" {result.largest_difference:.4f}; batch {result.batch}: {result.float_ms:.3f} ms ->"
        f" {result.quantized_ms:.3f} ms ({result.float_ms / result.quantized_ms:.1f}x)"
    )


for command in (
    worker, analyze, action, export_state, status, keys, webhooks, backup, restore, infer, shadow,
    quarantine,
    score,
):  # fmt: skip
    main.add_command(command)


if __name__ == "__main__":
    main()
