"""``abx score``: score a file in the workers (or in this process), with a progress bar."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from service.cli.support import experiments_or_exit, os_actor, settings_from_env


@click.command()
@click.argument("experiment_key")
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False,
                                                              path_type=Path))  # fmt: skip
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path),
              help="The scores (.csv, .ndjson or .parquet); rejects go beside it.")  # fmt: skip
@click.option("--output-table", metavar="SCHEMA.TABLE",
              help="Or: a table in abx's database (made if absent); rejects go to"
              " ABX_JOBS_DIR/rejects/JOB.rejects.ndjson.")  # fmt: skip
@click.option("--variant", help="Score every row with this variant instead of assigning.")
@click.option("--log-exposures", is_flag=True, help="Record assignments and exposures.")
@click.option("--chunk-rows", type=click.IntRange(1, 1_000_000), help="Default ABX_JOB_CHUNK_ROWS.")
@click.option("--inline", is_flag=True, help="Run here instead of in the workers (no broker).")
@click.option("--no-wait", is_flag=True, help="Print the job id and return at once.")
def score(
    experiment_key: str,
    input_path: Path,
    output: Path | None,
    output_table: str | None,
    variant: str | None,
    log_exposures: bool,
    chunk_rows: int | None,
    inline: bool,
    no_wait: bool,
) -> None:
    """Assign each row of INPUT (its `unit` column) as /v1/assign would and score it.

    INPUT is CSV, NDJSON or Parquet; every row lands in OUTPUT (-o, or --output-table)
    or, with its reason, in the rejects file. The job runs in `abx worker` processes
    unless --inline.
    """
    if (output is None) == (output_table is None):
        raise click.UsageError("name the scores' destination: -o OUTPUT or --output-table")
    from service.errors import AbxError
    from service.jobs import store
    from service.jobs.submit import check_format, submit
    from service.storage.database import Database
    from service.storage.embedded import database_url

    settings = settings_from_env()
    loaded = experiments_or_exit(settings, check_models=False)
    experiments = {item.experiment.key: item.experiment for item in loaded.experiments}
    database = Database(database_url(settings.database_url, settings.data_dir))
    database.open()
    try:
        with database.pool.connection(timeout=10.0) as conn:
            job = submit(
                conn, experiments.get(experiment_key), experiment_key, variant=variant,
                input_path=input_path, input_format=check_format(input_path, "input"),
                output_path=output, output_table=output_table,
                rejects_dir=settings.jobs_path / "rejects", log_exposures=log_exposures,
                chunk_rows=chunk_rows or settings.job_chunk_rows,
                created_by=os_actor(), request_id=None,
            )  # fmt: skip
    except AbxError as error:
        click.echo(f"abx score: {error}", err=True)
        sys.exit(2)
    click.echo(f"job {job.job_id}", err=True)
    if inline:
        from service.jobs.tasks import run_now

        run_now(job.job_id)
    else:
        from service.jobs.tasks import enqueue

        enqueue(job.job_id)
        if no_wait:
            click.echo(job.job_id)
            return
    with click.progressbar(length=job.rows_total or 1, label="scoring", file=sys.stderr,
                           show_eta=True, show_percent=True) as bar:  # fmt: skip
        shown = 0
        while True:
            with database.pool.connection(timeout=10.0) as conn:
                current = store.get_job(conn, job.job_id)
            assert current is not None
            if current.rows_total and bar.length != current.rows_total:
                bar.length = current.rows_total
            finished = current.rows_done + current.rows_rejected
            bar.update(finished - shown)
            shown = finished
            if current.status not in store.ACTIVE:
                break
            time.sleep(0.5)
    database.close()
    click.echo(
        f"{current.status}: {current.rows_done} rows scored to"
        f" {current.output_path or 'table ' + str(current.output_table)},"
        f" {current.rows_rejected} rejected ({current.rejects_path})"
        + (f"; {current.error}" if current.error else ""),
        err=True,
    )
    if current.status != "done":
        sys.exit(1)
