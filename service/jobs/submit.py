"""Check a scoring job's request and record it; nothing is recorded for a refused one."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from service.errors import Conflict, InvalidRequest, UnknownExperiment
from service.experiments.schema import Experiment
from service.jobs import files, store, tables
from service.jobs.targets import TableName, TableNameProblem, parse_table_name


def inside(root: Path, name: str, field: str) -> Path:
    """``name`` relative to the jobs folder; the API may name nothing outside it."""
    candidate = Path(name)
    resolved = (root / candidate).resolve()
    if candidate.is_absolute() or not resolved.is_relative_to(root.resolve()):
        raise InvalidRequest(
            f"{field} must be a path inside the jobs folder (ABX_JOBS_DIR), relative to it.",
            [{"field": field, "message": "absolute, or outside the jobs folder"}],
        )
    return resolved


def check_format(path: Path, field: str) -> str:
    try:
        return files.format_of(path)
    except files.FileProblem as problem:
        raise InvalidRequest(str(problem), [{"field": field, "message": str(problem)}]) from None


def check_table(text: str, field: str = "output_table") -> TableName:
    """The output table's name, strictly checked (``targets.py``), or a 422 problem."""
    try:
        return parse_table_name(text)
    except TableNameProblem as problem:
        raise InvalidRequest(
            f"{field}: {problem}", [{"field": field, "message": str(problem)}]
        ) from None


def submit(
    conn: Any,
    experiment: Experiment | None,
    experiment_key: str,
    *,
    variant: str | None,
    input_path: Path,
    input_format: str,
    output_path: Path | None,
    output_table: str | None = None,
    rejects_dir: Path | None = None,
    log_exposures: bool,
    chunk_rows: int,
    created_by: str,
    request_id: str | None,
) -> store.Job:
    if experiment is None:
        raise UnknownExperiment(f"There is no experiment {experiment_key!r}.")
    if variant is not None and variant not in experiment.variant_keys:
        message = f"{variant!r} is not a variant of {experiment.key!r}"
        raise InvalidRequest(message, [{"field": "variant", "message": message}])
    if not any(v.model is not None for v in experiment.variants):
        message = f"experiment {experiment.key!r} serves no models"
        raise InvalidRequest(message, [{"field": "experiment", "message": message}])
    if not input_path.is_file():
        message = f"there is no file {input_path.name!r} to read"
        raise InvalidRequest(message, [{"field": "input", "message": message}])
    job_id = str(uuid.uuid4())
    if (output_path is None) == (output_table is None):
        message = "name either an output file or an output table"
        raise InvalidRequest(message, [{"field": "output", "message": message}])
    if output_table is not None:
        if rejects_dir is None:
            raise ValueError("a job writing to a table needs a folder for its rejects")
        table = check_table(output_table)
        try:
            tables.check_target(conn, table)
        except tables.TableProblem as problem:
            message = str(problem)
            raise InvalidRequest(message, [{"field": "output_table", "message": message}]) from None
        output_format, output, output_name = "table", None, table.qualified
        # Rejects of a table job: a file named after the job, in the jobs folder.
        rejects = files.rejects_path(rejects_dir.resolve() / f"{job_id}.ndjson")
        rejects.parent.mkdir(parents=True, exist_ok=True)
    else:
        assert output_path is not None
        output_format = check_format(output_path, "output")
        if output_path.resolve() == input_path.resolve():
            message = "the output would overwrite the input"
            raise InvalidRequest(message, [{"field": "output", "message": message}])
        output, output_name = str(output_path.resolve()), None
        output_path.parent.mkdir(parents=True, exist_ok=True)
        rejects = files.rejects_path(output_path.resolve())
    # One transaction: the path locks hold until the job is recorded (the pool's
    # connections autocommit, which would release them after their own statement).
    with conn.transaction():
        claim_files(conn, str(input_path.resolve()), output)
        return store.create_job(
            conn,
            job_id=job_id,
            experiment_key=experiment.key,
            variant_key=variant,
            input_path=str(input_path.resolve()),
            input_format=input_format,
            output_path=output,
            output_table=output_name,
            output_format=output_format,
            rejects_path=str(rejects),
            log_exposures=log_exposures,
            chunk_rows=chunk_rows,
            created_by=created_by,
            request_id=request_id,
        )


def claim_files(conn: Any, input_path: str, output: str | None) -> None:
    """Refuse a job whose files a queued or running job is using.

    Two jobs appending to one ``.partial`` file would interleave their rows, and a failed or
    cancelled job removes its unfinished files, the other's with them. A job whose output
    replaces another's input would change that job's rows on its resume, and a job reading
    another's output would read it before or after its last chunk. The transaction's advisory
    locks on the paths, held until the caller's transaction records the job, make two submits
    naming one file take turns, so only one gets it.
    """
    for path in sorted({input_path} | ({output} if output else set())):
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (store.path_lock_key(path),))
    holder = store.active_job_using(conn, input_path, output)
    if holder is not None:
        job_id, path = holder
        message = f"job {job_id} is still using {Path(path).name!r}; wait for it or cancel it"
        raise Conflict(message)
