"""Check a scoring job's request and record it; nothing is recorded for a refused one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.errors import InvalidRequest, UnknownExperiment
from service.experiments.schema import Experiment
from service.jobs import files, store


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


def submit(
    conn: Any,
    experiment: Experiment | None,
    experiment_key: str,
    *,
    variant: str | None,
    input_path: Path,
    input_format: str,
    output_path: Path,
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
    output_format = check_format(output_path, "output")
    if output_path.resolve() == input_path.resolve():
        message = "the output would overwrite the input"
        raise InvalidRequest(message, [{"field": "output", "message": message}])
    output_path.parent.mkdir(parents=True, exist_ok=True)
    return store.create_job(
        conn,
        experiment_key=experiment.key,
        variant_key=variant,
        input_path=str(input_path.resolve()),
        input_format=input_format,
        output_path=str(output_path.resolve()),
        output_format=output_format,
        rejects_path=str(files.rejects_path(output_path.resolve())),
        log_exposures=log_exposures,
        chunk_rows=chunk_rows,
        created_by=created_by,
        request_id=request_id,
    )
