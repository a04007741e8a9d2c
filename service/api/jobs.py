"""Batch scoring jobs: submit one (a file the workers can read, or an upload), follow, cancel."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from flask import Blueprint, current_app, request
from pydantic import Field, ValidationError, model_validator

from service.api import auth
from service.api.bodies import ApiModel
from service.api.body import invalid_request, parse_json_body
from service.errors import Conflict, NotFound, PayloadTooLarge, UnsupportedMediaType
from service.jobs import files, store
from service.jobs.run import cancel_job
from service.jobs.submit import check_format, check_table, inside, submit
from service.jobs.tasks import enqueue
from service.observability.logging import annotate, current_request_id

bp = Blueprint("jobs", __name__)
UPLOAD_BLOCK = 1 << 20

PathText = Annotated[str, Field(min_length=1, max_length=1024)]


class ScoreOptions(ApiModel):
    experiment: Annotated[str, Field(min_length=1, max_length=64)]
    output: PathText | None = None
    output_table: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    """``schema.table`` in abx's database; its name is checked by ``jobs.targets``."""
    variant: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    log_exposures: bool = False
    chunk_rows: Annotated[int, Field(ge=1, le=1_000_000)] | None = None

    @model_validator(mode="after")
    def _one_output(self) -> ScoreOptions:
        if (self.output is None) == (self.output_table is None):
            raise ValueError("name exactly one of output (a file) and output_table")
        return self


class ScoreRequest(ScoreOptions):
    input: PathText


def _runtime() -> Any:
    return current_app.extensions["abx"]


def _upload_options() -> ScoreOptions:
    raw: dict[str, Any] = dict(request.args.items())
    if "log_exposures" in raw:
        raw["log_exposures"] = raw["log_exposures"].lower() in ("1", "true", "yes")
    if "chunk_rows" in raw:
        raw["chunk_rows"] = int(raw["chunk_rows"]) if raw["chunk_rows"].isdigit() else -1
    try:
        return ScoreOptions.model_validate(raw)
    except ValidationError as error:
        raise invalid_request(error, "query") from error


@bp.post("/v1/jobs/score")
def post_score() -> tuple[dict[str, Any], int]:
    runtime = _runtime()
    settings = runtime.settings
    root = settings.jobs_path
    root.mkdir(parents=True, exist_ok=True)
    upload = None
    if request.is_json:
        body: ScoreOptions = parse_json_body(ScoreRequest)
        input_path = inside(root, body.input, "input")  # type: ignore[attr-defined]
        input_format = check_format(input_path, "input")
    else:
        input_format = files.CONTENT_TYPES.get(request.mimetype or "", "")
        if not input_format:
            raise UnsupportedMediaType(
                "Send application/json naming a file, or the input itself as "
                + ", ".join(files.CONTENT_TYPES)
                + f" (got {request.mimetype or 'no content type'})."
            )
        body = _upload_options()
    output_path = None
    if body.output is not None:
        output_path = inside(root, body.output, "output")
        check_format(output_path, "output")
    else:
        assert body.output_table is not None
        check_table(body.output_table)  # before an upload is stored
    experiment = runtime.registry.experiments.get(body.experiment)
    if not request.is_json:
        upload = settings.uploads_path / f"{uuid.uuid4().hex}{files.EXTENSIONS[input_format]}"
        _save_upload(upload, settings.job_upload_max_bytes)
        input_path = upload
    try:
        with runtime.database.pool.connection(timeout=2.0) as conn:
            job = submit(
                conn, experiment, body.experiment, variant=body.variant,
                input_path=input_path, input_format=input_format, output_path=output_path,
                output_table=body.output_table, rejects_dir=root / "rejects",
                log_exposures=body.log_exposures,
                chunk_rows=body.chunk_rows or settings.job_chunk_rows,
                created_by=auth.current().actor, request_id=current_request_id(),
            )  # fmt: skip
    except Exception:
        if upload is not None:
            upload.unlink(missing_ok=True)
        raise
    enqueue(job.job_id)
    annotate(experiment=job.experiment_key, job=job.job_id)
    return job.describe(), 202


def _save_upload(target: Any, limit: int) -> None:
    """Stream the body to disk, refusing it (and keeping nothing) past ``limit`` bytes."""
    if (request.content_length or 0) > limit:
        raise PayloadTooLarge(f"The upload is larger than the limit of {limit} bytes.")
    request.max_content_length = limit
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    try:
        with target.open("wb") as handle:
            while block := request.stream.read(UPLOAD_BLOCK):
                written += len(block)
                if written > limit:
                    raise PayloadTooLarge(f"The upload is larger than the limit of {limit} bytes.")
                handle.write(block)
    except BaseException:
        target.unlink(missing_ok=True)
        raise


def _job(job_id: str) -> store.Job:
    with _runtime().database.pool.connection(timeout=2.0) as conn:
        job = store.get_job(conn, job_id)
    if job is None:
        raise NotFound(f"There is no job {job_id!r}.")
    return job


@bp.get("/v1/jobs/<job_id>")
def get_job(job_id: str) -> dict[str, Any]:
    return _job(job_id).describe()


@bp.post("/v1/jobs/<job_id>/cancel")
def cancel(job_id: str) -> dict[str, Any]:
    job = _job(job_id)
    runtime = _runtime()
    cancelled = cancel_job(runtime.database, job_id, runtime.settings.uploads_path)
    if cancelled is None:
        raise Conflict(f"Job {job_id} has already ended ({job.status}).")
    return cancelled.describe()
