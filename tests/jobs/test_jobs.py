"""Scoring jobs end to end: real gunicorn, a real Celery worker on the run's broker, PostgreSQL.

Every row is assigned as /v1/assign answers and scored as /v1/predict would; bad rows go to
the rejects file; a worker killed mid-job resumes without a row twice or missing; a cancel
stops a job; the completion is a signed webhook; bad requests are problems and write nothing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pandas as pd
import psutil
import psycopg
import pytest
from standardwebhooks.webhooks import Webhook

from service.settings import PROJECT_ROOT
from tests.conftest import Api, ServerFactory, wait_for
from tests.decisions.test_e2e import SECRET, Receiver, WorkerFactory
from tests.experiment_files import minimal_experiment, write_experiment
from tests.model_fixtures import MODELS, demo_models

FEATURES = [f"x{i}" for i in range(20)]
SLOW = Path(__file__).parents[1] / "faults" / "slow_chunks"
FAULT_PATH = os.pathsep.join([str(SLOW), str(PROJECT_ROOT)])
"""The fault's sitecustomize imports ``service`` before the working folder is on the path:
without this tree named, it would patch (and the worker run) whichever abx is installed."""


@pytest.fixture(scope="module", autouse=True)
def built() -> dict[str, str]:
    return demo_models()


def scoring_experiment(built: dict[str, str], webhook: str) -> dict[str, Any]:
    inputs = {"features": {"features": FEATURES, "offset": 1.0, "factor": 0.5}}
    return minimal_experiment(
        "score",
        variants=[
            {"key": "a", "weight": 0.5, "model": {"path": "churn_logreg.onnx",
             "sha256": built["churn_logreg.onnx"], "inputs": inputs}},
            {"key": "b", "weight": 0.5, "model": {"path": "churn_mlp.onnx",
             "sha256": built["churn_mlp.onnx"], "inputs": inputs}},
        ],
        policy={"webhooks": [webhook]},
    )  # fmt: skip


@pytest.fixture
def setup(tmp_path: Path, built: dict[str, str], receiver: Receiver) -> Path:
    folder = tmp_path / "experiments"
    write_experiment(folder, scoring_experiment(built, receiver.url))
    return folder


def rows(count: int, seed: int = 1) -> pd.DataFrame:
    values = np.random.default_rng(seed).normal(size=(count, 20)).round(3)
    frame = pd.DataFrame(values, columns=FEATURES)
    frame.insert(0, "unit", [f"user-{i}" for i in range(count)])
    return frame


def direct(model: str, frame: pd.DataFrame) -> np.ndarray:
    session = ort.InferenceSession(str(MODELS / model), providers=["CPUExecutionProvider"])
    feeds = {"features": ((frame[FEATURES].to_numpy(np.float32) - 1) * 0.5)}
    result: np.ndarray = session.run(None, feeds)[0]
    return result.reshape(-1)


def job_row(db: str, job_id: str) -> dict[str, Any]:
    with psycopg.connect(db) as conn:
        cursor = conn.execute("SELECT * FROM score_jobs WHERE job_id = %s", (job_id,))
        names = [c.name for c in cursor.description or []]
        row = cursor.fetchone()
    return dict(zip(names, row, strict=True)) if row else {}


def job_count(db: str) -> int:
    with psycopg.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM score_jobs").fetchone()[0])  # type: ignore[index]


def wait_status(api: Api, job_id: str, status: str, timeout: float = 90) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def reached() -> bool:
        found.update(api.get(f"/v1/jobs/{job_id}").json())
        return found.get("status") == status

    assert wait_for(reached, timeout=timeout, interval=0.2), found
    return found


def unfinished(folder: Path) -> list[str]:
    """The appended files and part folders a job keeps only until it is published."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".partial", ".parts")))


def test_a_job_assigns_and_scores_like_the_api_and_reports_bad_rows(
    server_factory: ServerFactory, db: str, setup: Path, tmp_path: Path,
    start_worker: WorkerFactory, receiver: Receiver, celery_broker: dict[str, str],
) -> None:  # fmt: skip
    jobs = tmp_path / "data" / "jobs"
    server = server_factory(
        db, setup, ABX_WEBHOOK_SECRET=SECRET, ABX_JOBS_DIR=str(jobs), **celery_broker
    )
    api = Api(server.base_url)
    start_worker(setup, ABX_JOBS_DIR=str(jobs))
    frame = rows(300)
    frame["x3"] = frame["x3"].astype(object)
    frame.loc[7, "x3"] = "abc"  # not a number
    frame.loc[9, "unit"] = ""  # no unit
    upload = frame.to_csv(index=False).encode()
    response = api.session.post(
        f"{server.base_url}/v1/jobs/score",
        params={"experiment": "score", "output": "out/scores.csv", "chunk_rows": 64},
        data=upload, headers={"Content-Type": "text/csv"}, timeout=10,
    )  # fmt: skip
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued" and job["chunk_rows"] == 64
    done = wait_status(api, job["job_id"], "done")
    assert done["rows_done"] == 298 and done["rows_rejected"] == 2 and done["chunks_done"] == 5
    assert done["rows_total"] == 300 and done["rows_per_second"] > 0 and done["eta_seconds"] is None

    scored = pd.read_csv(jobs / "out" / "scores.csv", keep_default_na=False)
    assert list(scored.columns) == ["unit", "variant", "reason", "served_by", "probability"]
    assert list((jobs / "uploads").iterdir()) == []  # the uploaded input went with its job
    good = frame.drop(index=[7, 9])
    with psycopg.connect(db) as conn:  # offline scoring logged no exposure
        assert conn.execute("SELECT count(*) FROM exposures").fetchone() == (0,)
    assert list(scored["unit"]) == list(good["unit"])  # every good row once, in input order
    for unit in list(good["unit"])[:40]:
        assigned = api.assign("score", unit)
        row = scored[scored["unit"] == unit].iloc[0]
        assert (row["variant"], row["reason"]) == (assigned["variant"], assigned["reason"])
    models = {"a": "churn_logreg.onnx", "b": "churn_mlp.onnx"}
    for variant, model in models.items():
        mine = scored["variant"] == variant
        expected = direct(
            model, good[mine.to_numpy()].assign(**{"x3": good["x3"][mine.to_numpy()].astype(float)})
        )
        np.testing.assert_allclose(scored["probability"][mine], expected, rtol=1e-5, atol=1e-6)
    rejects = [
        json.loads(x) for x in (jobs / "out" / "scores.rejects.ndjson").read_text().splitlines()
    ]
    assert [(r["row"], r["unit"]) for r in rejects] == [(7, "user-7"), (9, None)]
    assert "'x3'" in rejects[0]["reason"] and "unit" in rejects[1]["reason"]

    assert wait_for(lambda: len(receiver.requests) == 1, timeout=30)
    headers, body = receiver.requests[0]
    payload = Webhook(SECRET).verify(body, headers)
    assert payload["type"] == "score_job.done" and payload["job_id"] == job["job_id"]
    assert payload["rows_done"] == 298

    # Refused requests: a problem document, and no job recorded.
    before = job_count(db)
    refused = [
        api.post("/v1/jobs/score", {"experiment": "nope", "input": "in.csv", "output": "o.csv"}),
        api.post("/v1/jobs/score", {"experiment": "score", "input": "../x.csv", "output": "o.csv"}),
        api.post("/v1/jobs/score", {"experiment": "score", "input": "/etc/passwd", "output": "o.csv"}),
        api.post("/v1/jobs/score", {"experiment": "score", "input": "missing.csv", "output": "o.csv"}),
        api.post("/v1/jobs/score", {"experiment": "score", "input": "o.csv", "output": "o.xlsx"}),
        api.post("/v1/jobs/score", {"experiment": "score", "input": "x.csv", "output": "o.csv",
                                    "variant": "zzz"}),
        api.post("/v1/jobs/score", {"experiment": "score"}),
        api.session.post(f"{server.base_url}/v1/jobs/score", data=b"x", timeout=10,
                         headers={"Content-Type": "text/plain"}),
        api.session.post(f"{server.base_url}/v1/jobs/score", params={"experiment": "score"},
                         data=b"unit\n1\n", headers={"Content-Type": "text/csv"}, timeout=10),
        api.get("/v1/jobs/not-a-uuid"),
        api.get("/v1/jobs/00000000-0000-0000-0000-000000000000"),
        api.post(f"/v1/jobs/{job['job_id']}/cancel"),
    ]  # fmt: skip
    statuses = [r.status_code for r in refused]
    assert statuses == [404, 422, 422, 422, 422, 422, 422, 415, 422, 404, 404, 409], statuses
    assert all(r.headers["Content-Type"] == "application/problem+json" for r in refused)
    assert job_count(db) == before
    assert not list((jobs / "uploads").glob("*.csv"))[1:]  # only the accepted job's upload


def test_a_killed_worker_resumes_from_its_last_chunk(
    server_factory: ServerFactory, db: str, setup: Path, tmp_path: Path,
    start_worker: WorkerFactory, celery_broker: dict[str, str], built: dict[str, str],
) -> None:  # fmt: skip
    """Killed between writing chunk 3 to the output and committing it: the resumed run
    writes chunk 3 again at the committed length, cutting off the first try's bytes."""
    jobs = tmp_path / "data" / "jobs"
    jobs.mkdir(parents=True)
    rows(1000).to_parquet(jobs / "in.parquet")
    server = server_factory(
        db, setup, ABX_WEBHOOK_SECRET=SECRET, ABX_JOBS_DIR=str(jobs), **celery_broker
    )
    api = Api(server.base_url)
    mark = tmp_path / "killed"
    start_worker(setup, ABX_JOBS_DIR=str(jobs), PYTHONPATH=FAULT_PATH, ABX_TEST_CHUNK_SLEEP="0.3",
                 ABX_TEST_KILL_AFTER_CHUNK="3", ABX_TEST_KILL_MARK=str(mark))  # fmt: skip
    job = api.post("/v1/jobs/score", {"experiment": "score", "input": "in.parquet",
                                      "output": "out.ndjson", "chunk_rows": 50}).json()  # fmt: skip
    assert wait_for(mark.exists, timeout=60, interval=0.05)
    # The pool process wrote chunk 3 and died: past the committed length there is more, which
    # the resumed run (0.3 s of fault sleep away at least) has not rewritten yet.
    at_kill = job_row(db, job["job_id"])
    assert at_kill["chunks_done"] == 3
    assert (jobs / "out.ndjson.partial").stat().st_size > at_kill["output_bytes"] > 0
    done = wait_status(api, job["job_id"], "done", timeout=120)
    assert done["attempts"] >= 2 and done["rows_done"] == 1000
    units = [json.loads(x)["unit"] for x in (jobs / "out.ndjson").read_text().splitlines()]
    assert units == [f"user-{i}" for i in range(1000)]  # none twice, none missing, in order
    assert not (jobs / "out.ndjson.partial").exists()
    assert job_row(db, job["job_id"])["output_bytes"] == (jobs / "out.ndjson").stat().st_size
    # The lineage counts the committed chunks' rows once each, the rewritten chunk included:
    # each variant's rows, scored by its own model, in the API and on the dashboard.
    scored = pd.read_json(jobs / "out.ndjson", lines=True)
    lineage = api.get("/v1/experiments/score/models").json()
    shown = {v["variant"]: [(m["served_by"], m["model_sha256"], m["predictions"], m["scored_rows"],
                             m["score_jobs"]) for m in v["models"]] for v in lineage["variants"]}  # fmt: skip
    sha = {"a": built["churn_logreg.onnx"], "b": built["churn_mlp.onnx"]}
    assert shown == {v: [(v, sha[v], 0, int((scored["variant"] == v).sum()), 1)] for v in "ab"}
    page = api.get("/dashboards/score").text
    cells = re.findall(r'data-field="scored_rows" data-value="(\d+)"', page)
    assert sorted(map(int, cells)) == sorted(m[0][3] for m in shown.values())


def test_a_cancelled_job_stops_and_the_cli_scores_inline(
    server_factory: ServerFactory, db: str, setup: Path, tmp_path: Path,
    start_worker: WorkerFactory, celery_broker: dict[str, str],
) -> None:  # fmt: skip
    jobs = tmp_path / "data" / "jobs"
    jobs.mkdir(parents=True)
    rows(1000).to_json(jobs / "in.ndjson", orient="records", lines=True)
    server = server_factory(
        db, setup, ABX_WEBHOOK_SECRET=SECRET, ABX_JOBS_DIR=str(jobs), **celery_broker
    )
    api = Api(server.base_url)
    start_worker(setup, ABX_JOBS_DIR=str(jobs), PYTHONPATH=FAULT_PATH, ABX_TEST_CHUNK_SLEEP="0.3")
    job = api.post("/v1/jobs/score", {"experiment": "score", "input": "in.ndjson",
                                      "output": "out.csv", "chunk_rows": 50}).json()  # fmt: skip
    assert wait_for(lambda: job_row(db, job["job_id"])["chunks_done"] >= 1, timeout=60)
    response = api.post(f"/v1/jobs/{job['job_id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    at_cancel = job_row(db, job["job_id"])["chunks_done"]
    assert wait_for(lambda: not unfinished(jobs), timeout=30), unfinished(jobs)
    assert job_row(db, job["job_id"])["chunks_done"] <= at_cancel + 1
    assert not (jobs / "out.csv").exists()

    # The command line: the same job run in this process, one variant for every row,
    # exposures logged on request.
    def cli(output: Path, *options: str) -> pd.DataFrame:
        result = subprocess.run(
            [sys.executable, "-m", "service.cli", "score", "score", str(jobs / "in.ndjson"),
             "-o", str(output), "--inline", *options],
            env={**os.environ, "ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(setup),
                 "ABX_WEBHOOK_SECRET": SECRET, "ABX_DATA_DIR": str(tmp_path / "cli-data")},
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert "done: 1000 rows scored" in result.stderr
        return pd.read_parquet(output)

    scored = cli(tmp_path / "cli" / "assigned.parquet", "--log-exposures")
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM exposures").fetchone() == (1000,)
    assert set(scored["reason"]) == {"hashed"} and set(scored["variant"]) == {"a", "b"}
    scored = cli(tmp_path / "cli" / "explicit.parquet", "--variant", "b")
    assert set(scored["variant"]) == {"b"} and set(scored["reason"]) == {"explicit"}


def test_a_failed_job_removes_its_partial_output_and_parts(
    server_factory: ServerFactory, db: str, setup: Path, tmp_path: Path,
    start_worker: WorkerFactory, celery_broker: dict[str, str],
) -> None:  # fmt: skip
    """A failed job is never resumed, so what it appended so far goes: the output's
    ``.partial`` (or a Parquet output's parts) and the rejects' ``.partial``. Each job here
    fails as an operator's mistake makes it: a ``.partial`` file cut short between chunks."""
    jobs = tmp_path / "data" / "jobs"
    jobs.mkdir(parents=True)
    frame = rows(300)
    frame["x3"] = frame["x3"].astype(object)
    frame.loc[3, "x3"] = "abc"  # a reject in chunk 0: the rejects file has committed bytes
    frame.to_csv(jobs / "in.csv", index=False)
    server = server_factory(
        db, setup, ABX_WEBHOOK_SECRET=SECRET, ABX_JOBS_DIR=str(jobs), **celery_broker
    )
    api = Api(server.base_url)
    # A second between a chunk's commit and the next chunk's write: the file is cut in it.
    start_worker(setup, ABX_JOBS_DIR=str(jobs), PYTHONPATH=FAULT_PATH, ABX_TEST_CHUNK_SLEEP="1")
    for output, cut in [("out.csv", "out.csv.partial"),
                        ("out.parquet", "out.rejects.ndjson.partial")]:  # fmt: skip
        job = api.post("/v1/jobs/score", {"experiment": "score", "input": "in.csv",
                                          "output": output, "chunk_rows": 50}).json()  # fmt: skip
        assert wait_for(lambda: job_row(db, job["job_id"])["chunks_done"] >= 1, timeout=60)  # noqa: B023
        kept = unfinished(jobs)
        assert cut in kept and "out.rejects.ndjson.partial" in kept, kept
        with (jobs / cut).open("r+b") as handle:
            handle.truncate(0)
        failed = wait_status(api, job["job_id"], "failed")
        assert failed["error"].startswith("cannot append the output:"), failed["error"]
        assert "its unfinished output was removed" in failed["error"]
        assert unfinished(jobs) == []
        assert failed["chunks_done"] < 6 and not (jobs / output).exists()
    assert "out.parquet.parts" in failed["error"]


def test_a_job_cancelled_while_its_worker_is_dead_leaves_no_parts(
    server_factory: ServerFactory, db: str, setup: Path, tmp_path: Path,
    start_worker: WorkerFactory, celery_broker: dict[str, str],
) -> None:  # fmt: skip
    """No runner is left to see the cancel (the job waits for its resume), so the cancel
    itself removes the parts and the rejects' ``.partial``, never to be resumed."""
    from service.jobs.store import lock_key

    jobs = tmp_path / "data" / "jobs"
    jobs.mkdir(parents=True)
    rows(1000).to_csv(jobs / "in.csv", index=False)
    server = server_factory(
        db, setup, ABX_WEBHOOK_SECRET=SECRET, ABX_JOBS_DIR=str(jobs), **celery_broker
    )
    api = Api(server.base_url)
    worker = start_worker(setup, ABX_JOBS_DIR=str(jobs), PYTHONPATH=FAULT_PATH,
                          ABX_TEST_CHUNK_SLEEP="0.3")  # fmt: skip
    job = api.post("/v1/jobs/score", {"experiment": "score", "input": "in.csv",
                                      "output": "out.parquet", "chunk_rows": 50}).json()  # fmt: skip
    assert wait_for(lambda: job_row(db, job["job_id"])["chunks_done"] >= 2, timeout=60)
    family = [worker, *psutil.Process(worker.pid).children(recursive=True)]
    for process in family:  # the parent first: it must not start another pool process
        process.send_signal(signal.SIGKILL)
    worker.wait()

    def lock_free() -> bool:  # PostgreSQL has seen the runner's connection close
        with psycopg.connect(db, autocommit=True) as conn:
            key = lock_key(job["job_id"])
            free = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
            return bool(free and free[0])

    assert wait_for(lock_free, timeout=30)
    assert job_row(db, job["job_id"])["status"] == "running"
    assert unfinished(jobs) == ["out.parquet.parts", "out.rejects.ndjson.partial"]
    response = api.post(f"/v1/jobs/{job['job_id']}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    assert unfinished(jobs) == [] and not (jobs / "out.parquet").exists()
    assert api.post(f"/v1/jobs/{job['job_id']}/cancel").status_code == 409


def test_a_file_another_active_job_uses_is_refused(
    server_factory: ServerFactory, db: str, setup: Path, tmp_path: Path,
    celery_broker: dict[str, str],
) -> None:  # fmt: skip
    """A queued job's output and input are its own until it ends: a second job writing the
    same output, writing over its input or reading its output is a 409, and nothing is
    recorded. Once the first job is cancelled the same request is accepted. No worker runs, so
    the first job stays queued."""
    jobs = tmp_path / "data" / "jobs"
    jobs.mkdir(parents=True)
    for name in ("in.ndjson", "other.ndjson"):
        rows(20).to_json(jobs / name, orient="records", lines=True)
    (jobs / "out").mkdir()
    rows(20).to_csv(jobs / "out" / "scores.csv", index=False)  # an earlier run's output
    server = server_factory(
        db, setup, ABX_WEBHOOK_SECRET=SECRET, ABX_JOBS_DIR=str(jobs), **celery_broker
    )
    api = Api(server.base_url)
    first = api.post("/v1/jobs/score", {"experiment": "score", "input": "in.ndjson",
                                        "output": "out/scores.csv"})  # fmt: skip
    assert first.status_code == 202, first.text
    job_id = first.json()["job_id"]
    recorded = job_count(db)
    clashes = [
        ("other.ndjson", "out/scores.csv", "scores.csv"),  # the same output
        ("other.ndjson", "in.ndjson", "in.ndjson"),  # over the first job's input
        ("out/scores.csv", "out/again.csv", "scores.csv"),  # the first job's output as input
    ]
    for source, output, shared in clashes:
        refused = api.post("/v1/jobs/score", {"experiment": "score", "input": source,
                                              "output": output})  # fmt: skip
        assert refused.status_code == 409, refused.text
        assert refused.headers["Content-Type"] == "application/problem+json"
        assert job_id in refused.json()["detail"] and shared in refused.json()["detail"]
    assert job_count(db) == recorded

    cli = subprocess.run(
        [sys.executable, "-m", "service.cli", "score", "score", str(jobs / "other.ndjson"),
         "-o", str(jobs / "out" / "scores.csv"), "--no-wait"],
        env={**os.environ, "ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(setup),
             "ABX_WEBHOOK_SECRET": SECRET, "ABX_DATA_DIR": str(tmp_path / "cli-data"),
             **celery_broker},
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert cli.returncode == 2 and f"job {job_id} is still using 'scores.csv'" in cli.stderr
    assert job_count(db) == recorded

    # An upload is a job's own input, removed with the job when it is cancelled.
    upload = api.session.post(
        f"{server.base_url}/v1/jobs/score",
        params={"experiment": "score", "output": "out/uploaded.csv"},
        data=rows(20).to_csv(index=False).encode(), headers={"Content-Type": "text/csv"},
        timeout=10,
    )  # fmt: skip
    assert upload.status_code == 202, upload.text
    assert len(list((jobs / "uploads").iterdir())) == 1
    assert api.post(f"/v1/jobs/{upload.json()['job_id']}/cancel").status_code == 200
    assert list((jobs / "uploads").iterdir()) == []

    assert api.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    again = api.post("/v1/jobs/score", {"experiment": "score", "input": "other.ndjson",
                                        "output": "out/scores.csv"})  # fmt: skip
    assert again.status_code == 202, again.text
    assert api.post(f"/v1/jobs/{again.json()['job_id']}/cancel").status_code == 200


def test_a_submit_holds_its_path_locks_until_its_job_is_recorded(
    db: str, setup: Path, tmp_path: Path
) -> None:
    """Two submits naming one file take turns on its lock, so the lock must last until the
    first one's job row is committed (the pool's connections autocommit: a lock released
    after its own statement would let the second submit check before the first inserts).
    Here the first submit's INSERT waits on a table lock held by another connection; while
    it waits, the output's lock must still be held."""
    from service.experiments.validation import load_experiments
    from service.jobs.store import path_lock_key
    from service.jobs.submit import submit

    experiment = load_experiments([setup]).experiments[0].experiment
    source = tmp_path / "in.ndjson"
    rows(5).to_json(source, orient="records", lines=True)
    output = tmp_path / "out.csv"
    key = path_lock_key(str(output.resolve()))
    recorded: list[str] = []
    with psycopg.connect(db, autocommit=True) as blocker, \
            psycopg.connect(db, autocommit=True) as submitter, \
            psycopg.connect(db, autocommit=True) as probe:  # fmt: skip
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE score_jobs IN SHARE MODE")

        def first() -> None:
            job = submit(
                submitter, experiment, experiment.key, variant=None, input_path=source,
                input_format="ndjson", output_path=output, log_exposures=False,
                chunk_rows=10, created_by="test", request_id=None,
            )  # fmt: skip
            recorded.append(job.job_id)

        thread = threading.Thread(target=first)
        thread.start()
        waiting = (
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'score_jobs'::regclass"
        )
        try:
            assert wait_for(lambda: probe.execute(waiting).fetchone() == (1,), timeout=30)
            with probe.transaction():
                taken = probe.execute("SELECT pg_try_advisory_xact_lock(%s)", (key,)).fetchone()
        finally:  # let the first submit finish whatever happened, before any connection closes
            blocker.execute("COMMIT")
            thread.join(30)
        assert taken == (False,), "the output's lock was released before the job was recorded"
    assert len(recorded) == 1 and job_row(db, recorded[0])["output_path"] == str(output.resolve())


def table_rows(db: str, table: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db) as conn:
        return conn.execute(
            f"SELECT job_id::text, row_number, unit, variant, reason, probability FROM {table}"
            " ORDER BY row_number"
        ).fetchall()


def test_a_killed_worker_resumes_into_the_output_table(
    server_factory: ServerFactory, db: str, setup: Path, tmp_path: Path,
    start_worker: WorkerFactory, celery_broker: dict[str, str],
) -> None:  # fmt: skip
    jobs = tmp_path / "data" / "jobs"
    jobs.mkdir(parents=True)
    frame = rows(1000)
    frame["x5"] = frame["x5"].astype(object)
    frame.loc[420, "x5"] = "n/a"  # not a number: a reject, in the rejects file
    frame.loc[777, "unit"] = ""  # no unit
    frame.to_csv(jobs / "in.csv", index=False)
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA analytics")
    server = server_factory(
        db, setup, ABX_WEBHOOK_SECRET=SECRET, ABX_JOBS_DIR=str(jobs), **celery_broker
    )
    api = Api(server.base_url)
    worker = start_worker(setup, ABX_JOBS_DIR=str(jobs), PYTHONPATH=FAULT_PATH,
                          ABX_TEST_CHUNK_SLEEP="0.3")  # fmt: skip
    response = api.post("/v1/jobs/score", {"experiment": "score", "input": "in.csv",
                                           "output_table": "analytics.churn_scores",
                                           "chunk_rows": 50})  # fmt: skip
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["output"] is None and job["output_table"] == "analytics.churn_scores"
    assert wait_for(lambda: job_row(db, job["job_id"])["chunks_done"] >= 3, timeout=60), {
        k: v
        for k, v in job_row(db, job["job_id"]).items()
        if k in ("status", "error", "chunks_done")
    }
    for child in psutil.Process(worker.pid).children(recursive=True):
        child.send_signal(signal.SIGKILL)
    killed_at = job_row(db, job["job_id"])["chunks_done"]
    assert killed_at < 20
    done = wait_status(api, job["job_id"], "done", timeout=120)
    assert done["attempts"] >= 2 and done["rows_done"] == 998 and done["rows_rejected"] == 2

    found = table_rows(db, "analytics.churn_scores")
    good = frame.drop(index=[420, 777])
    assert [r[1] for r in found] == list(good.index)  # none twice, none missing
    assert [r[2] for r in found] == list(good["unit"])
    assert {r[0] for r in found} == {job["job_id"]}
    probabilities = np.array([r[5] for r in found])
    for variant, model in {"a": "churn_logreg.onnx", "b": "churn_mlp.onnx"}.items():
        mine = np.array([r[3] == variant for r in found])
        assert mine.sum() > 300
        expected = direct(model, good[mine].assign(x5=good["x5"][mine].astype(float)))
        np.testing.assert_allclose(probabilities[mine], expected, rtol=1e-5, atol=1e-6)
    rejects_file = Path(done["rejects"])
    assert rejects_file.parent == (jobs / "rejects").resolve()
    rejects = [json.loads(x) for x in rejects_file.read_text().splitlines()]
    assert [(r["row"], r["unit"]) for r in rejects] == [(420, "user-420"), (777, None)]
    assert not list((jobs / "rejects").glob("*.partial"))


def test_table_outputs_are_checked_and_a_misfit_table_fails_the_job(
    server_factory: ServerFactory, db: str, setup: Path, tmp_path: Path,
    start_worker: WorkerFactory, celery_broker: dict[str, str],
) -> None:  # fmt: skip
    from service.jobs import tables
    from service.jobs.targets import parse_table_name

    jobs = tmp_path / "data" / "jobs"
    jobs.mkdir(parents=True)
    rows(100).to_csv(jobs / "in.csv", index=False)
    server = server_factory(
        db, setup, ABX_WEBHOOK_SECRET=SECRET, ABX_JOBS_DIR=str(jobs), **celery_broker
    )
    api = Api(server.base_url)
    before = job_count(db)

    def score(**fields: Any) -> Any:
        return api.post("/v1/jobs/score", {"experiment": "score", "input": "in.csv", **fields})

    refused = [
        score(output_table="Scores"),
        score(output_table="a.b.c"),
        score(output_table="s; DROP TABLE score_jobs"),
        score(output_table="pg_catalog.scores"),
        score(output_table="x" * 64),
        score(output_table="score_jobs"),  # abx's own table
        score(output_table="nowhere.scores"),  # no such schema
        score(output_table="scores", output="out.csv"),  # both
        score(),  # neither
        api.session.post(f"{server.base_url}/v1/jobs/score", data=b"unit\n1\n", timeout=10,
                         params={"experiment": "score", "output_table": "Bad"},
                         headers={"Content-Type": "text/csv"}),
    ]  # fmt: skip
    statuses = [r.status_code for r in refused]
    assert statuses == [422] * len(refused), [r.text for r in refused]
    assert all(r.headers["Content-Type"] == "application/problem+json" for r in refused)
    fields = [e["field"] for r in refused[:7] for e in r.json()["errors"]]
    assert fields == ["output_table"] * 7
    assert job_count(db) == before
    assert not list((jobs / "uploads").glob("*.csv"))

    # A table abx made for other outputs: accepted (abx's own), then the worker fails the job.
    with psycopg.connect(db, autocommit=True) as conn:
        tables.ensure_table(conn, parse_table_name("old_scores"), ["score"])
    start_worker(setup, ABX_JOBS_DIR=str(jobs))
    job = score(output_table="old_scores").json()
    failed = wait_status(api, job["job_id"], "failed")
    assert "other columns" in failed["error"] and "probability" in failed["error"]
    assert job_count(db) == before + 1
    with psycopg.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM old_scores").fetchone() == (0,)


def test_the_cli_scores_into_a_table(db: str, setup: Path, tmp_path: Path) -> None:
    rows(120).to_parquet(tmp_path / "in.parquet")

    def cli(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service.cli", "score", "score", str(tmp_path / "in.parquet"),
             "--inline", "--chunk-rows", "50", *options],
            env={**os.environ, "ABX_DATABASE_URL": db, "ABX_EXPERIMENTS": str(setup),
                 "ABX_WEBHOOK_SECRET": SECRET, "ABX_DATA_DIR": str(tmp_path / "data")},
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    result = cli("--output-table", "cli_scores", "--variant", "b")
    assert result.returncode == 0, result.stderr
    assert "done: 120 rows scored to table public.cli_scores" in result.stderr
    found = table_rows(db, "cli_scores")
    assert [r[1] for r in found] == list(range(120))
    assert {(r[3], r[4]) for r in found} == {("b", "explicit")}
    np.testing.assert_allclose([r[5] for r in found], direct("churn_mlp.onnx", rows(120)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert (tmp_path / "data" / "jobs" / "rejects").is_dir()
    before = job_count(db)
    for options, message in [
        (("--output-table", "t", "-o", str(tmp_path / "o.csv")), "-o OUTPUT or --output-table"),
        ((), "-o OUTPUT or --output-table"),
        (("--output-table", "Bad-Name"), "output_table: the table name 'Bad-Name'"),
        (("--output-table", "score_jobs"), "not made by an abx scoring job"),
    ]:
        refused = cli(*options)
        assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    assert job_count(db) == before
