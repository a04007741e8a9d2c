"""Batch scoring: rows/s of a scoring job against a bare onnxruntime loop over the same file.

The input is one Parquet file of ``--rows`` rows (default 1M: a ``unit`` and 20 features).
Baseline, in this process: read the file ``--chunk-rows`` at a time with pyarrow, run the
model (default onnxruntime threads) ``--run-rows`` rows at a time, write the scores to
Parquet. abx: ``abx worker --concurrency 2`` (two prefork processes, one onnxruntime thread
each), the same file split in two halves submitted as two jobs of an experiment whose two
variants both use the model (each row assigned as /v1/assign would, checked, scored, its
chunk written and committed), timed from submission until both are done; and once more with
the whole file as one job (one process), to a Parquet file and to a PostgreSQL table (each
chunk's rows COPYed in the transaction that commits it); and the two halves again as jobs
of one explicit variant (``--variant a``: every row scored by that model, none assigned),
the same work as the bare loop plus the job's checks, commits and output columns. Run for the
logistic model and the heavy MLP. Before the timed jobs of each model, two small jobs (``--warm-rows`` rows each)
warm both worker processes (their context, the model's session), as the baseline's session
is made before its clock starts: the ratio compares rates, not the workers' first-job start.
Reported: rows/s, the ratio to the baseline, and the workers' peak RSS (VmHWM), which
depends on the chunk size, not the file's.

A second baseline, the floor of any sticky experiment, in this process and the same run: the
bare loop plus assigning every row exactly as a job does (``assignment.batch.assign_batch``
on the compiled experiment: one SHA-256 of each unit with the spec's prefix) and writing the
job's own output columns (``unit, variant, reason, served_by`` and the model's outputs) in one
Parquet file (checked: its variants equal the job's, row for row). Each job rate is reported
against both. ``--profile`` then runs one
``--profile-rows`` job of the logistic model in this process and prints where its time
went: read, assignment, model, write parts, commit, assemble (wall time of its functions).

Run: ``python benchmarks/score.py [--rows N] [--chunk-rows N]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import (
    abx_command,
    bench_database,
    children_of,
    code_version,
    load_average,
    peak_rss_mib,
    print_header,
    stop,
)

FEATURES = [f"x{i}" for i in range(20)]
FIXED_COLUMNS = ("unit", "variant", "reason", "served_by")  # the job output's first
MODELS = {"logistic": "churn_logreg.onnx", "heavy MLP": "mlp_heavy.onnx"}


def write_input(path: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(7)
    with pq.ParquetWriter(path, pa.schema([("unit", pa.string())] +
                                          [(f, pa.float64()) for f in FEATURES])) as writer:  # fmt: skip
        for start in range(0, rows, 100_000):
            n = min(100_000, rows - start)
            columns = {"unit": [f"user-{i}" for i in range(start, start + n)]}
            values = rng.normal(size=(n, 20)).round(4)
            columns.update({f: values[:, i] for i, f in enumerate(FEATURES)})
            writer.write_table(pa.table(columns))


def split(path: Path, parts: int) -> list[Path]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    size = -(-table.num_rows // parts)
    names = []
    for index in range(parts):
        name = path.with_name(f"{path.stem}-{index}.parquet")
        pq.write_table(table.slice(index * size, size), name)
        names.append(name)
    return names


def bare_loop(model: Path, source: Path, target: Path, chunk_rows: int, run_rows: int) -> float:
    import numpy as np
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.parquet as pq

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    started = time.perf_counter()
    rows = 0
    with pq.ParquetWriter(target, pa.schema([("unit", pa.string()),
                                             ("probability", pa.float32())])) as writer:  # fmt: skip
        for batch in pq.ParquetFile(source).iter_batches(batch_size=chunk_rows):
            matrix = np.column_stack([batch.column(f).to_numpy() for f in FEATURES])
            features = ((matrix - 1.0) * 0.5).astype(np.float32)
            out = np.concatenate([
                session.run(None, {"features": features[s : s + run_rows]})[0].reshape(-1)
                for s in range(0, len(features), run_rows)
            ])  # fmt: skip
            writer.write_table(pa.table({"unit": batch.column("unit"), "probability": out}))
            rows += batch.num_rows
    return rows / (time.perf_counter() - started)


def experiments_by_key(env: dict[str, str]) -> dict[str, Any]:
    from service.experiments.validation import load_experiments

    loaded = load_experiments([Path(env["ABX_EXPERIMENTS"])])
    return {item.experiment.key: item.experiment for item in loaded.experiments}


def floor_loop(model: Path, source: Path, target: Path, chunk_rows: int, run_rows: int,
               compiled: Any, output_schema: Any) -> float:  # fmt: skip
    """The bare loop plus what any sticky experiment must do: hash every unit, write the
    job's columns. Both variants serve the same model, so one run covers every row."""
    import numpy as np
    import onnxruntime as ort
    import pyarrow as pa
    import pyarrow.parquet as pq

    from service.assignment.batch import assign_batch

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    outputs = [name for name in output_schema.names if name not in FIXED_COLUMNS]
    started = time.perf_counter()
    rows = 0
    with pq.ParquetWriter(target, output_schema) as writer:
        for batch in pq.ParquetFile(source).iter_batches(batch_size=chunk_rows):
            units = batch.column("unit")
            assigned = assign_batch(compiled, units.to_pylist(), None, lambda units: {})
            matrix = np.column_stack([batch.column(f).to_numpy() for f in FEATURES])
            features = ((matrix - 1.0) * 0.5).astype(np.float32)
            runs = [session.run(None, {"features": features[s : s + run_rows]})
                    for s in range(0, len(features), run_rows)]  # fmt: skip
            variants = assigned.variants()
            columns: dict[str, Any] = {
                "unit": units, "variant": variants, "reason": assigned.reasons(),
                "served_by": variants,
            }  # fmt: skip
            for index, name in enumerate(outputs):
                columns[name] = np.concatenate([run[index].reshape(-1) for run in runs])
            writer.write_table(pa.table(columns).cast(output_schema))
            rows += batch.num_rows
    return rows / (time.perf_counter() - started)


def job_column(path: Path, name: str) -> list[Any]:
    """One column of a job's output file, whichever its format."""
    import pyarrow.csv as pa_csv
    import pyarrow.json as pa_json
    import pyarrow.parquet as pq

    if path.suffix == ".csv":
        table = pa_csv.read_csv(path)
    elif path.suffix == ".ndjson":
        table = pa_json.read_json(path)
    else:
        table = pq.read_table(path, columns=[name])
    return table.column(name).to_pylist()


def _timed(spent: dict[str, float], part: str, function: Any) -> Any:
    """``function`` adding its wall time to ``spent[part]`` (a generator: each resume)."""
    import inspect

    if inspect.isgeneratorfunction(function):

        def generator(*args: Any, **kwargs: Any) -> Any:
            items = function(*args, **kwargs)
            while True:
                began = time.perf_counter()
                try:
                    item = next(items)
                except StopIteration:
                    return
                finally:
                    spent[part] += time.perf_counter() - began
                yield item

        return generator

    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            spent[part] += time.perf_counter() - began

    return timed


def profile_job(env: dict[str, str], key: str, source: Path, folder: Path,
                chunk_rows: int, output_format: str = "parquet") -> None:  # fmt: skip
    """One job in this process (``run_now``, as ``abx score --inline``), its parts timed.

    Wall-clock wrappers around the job's own functions, not cProfile: a profiler's cost per
    Python call would inflate the per-unit hashing loop several times over."""
    import psycopg

    os.environ.update(env)
    from service.assignment import batch
    from service.assignment.service import AssignmentService
    from service.experiments.validation import load_experiments
    from service.jobs import files, scoring, store
    from service.jobs.submit import submit
    from service.jobs.tasks import run_now

    loaded = load_experiments([Path(env["ABX_EXPERIMENTS"])])
    experiment = loaded.experiments[[i.experiment.key for i in loaded.experiments].index(key)]
    with psycopg.connect(env["ABX_DATABASE_URL"], autocommit=True) as conn:
        job = submit(conn, experiment.experiment, key, variant=None, input_path=source,
                     input_format="parquet", output_path=folder / f"{key}-profiled.{output_format}",
                     output_table=None, rejects_dir=folder / "rejects", log_exposures=False,
                     chunk_rows=chunk_rows, created_by="bench", request_id=None)  # fmt: skip
    parts = {
        "read the input (files.read_chunks)": (files, "read_chunks"),
        "score chunks (ChunkScorer.score)": (scoring.ChunkScorer, "score"),
        "  assignment (AssignmentService.assign_batch)": (AssignmentService, "assign_batch"),
        "    of which SHA-256 loops (unit_hashes)": (batch, "unit_hashes"),
        "  model runs (run_with_fallback)": (scoring, "run_with_fallback"),
        "write chunks (files.write_chunk)": (files, "write_chunk"),
        "write part files (files.write_part)": (files, "write_part"),
        "commit chunks (store.commit_chunk)": (store, "commit_chunk"),
        "assemble the output (files.assemble)": (files, "assemble"),
        "publish the output (files.publish)": (files, "publish"),
    }
    # Older code has other functions: time those this code has.
    parts = {part: found for part, found in parts.items() if hasattr(*found)}
    spent = dict.fromkeys(parts, 0.0)
    originals = {part: getattr(owner, name) for part, (owner, name) in parts.items()}
    for part, (owner, name) in parts.items():
        setattr(owner, name, _timed(spent, part, originals[part]))
    try:
        started = time.perf_counter()
        status = run_now(job.job_id)
        wall = time.perf_counter() - started
    finally:
        for part, (owner, name) in parts.items():
            setattr(owner, name, originals[part])
    assert status == "done", status
    with psycopg.connect(env["ABX_DATABASE_URL"], autocommit=True) as conn:
        done = store.get_job(conn, job.job_id)
    rows = done.rows_done if done is not None else 0
    print(f"\nwhere one {key} job's time went (in this process; {wall:.2f} s, "
          f"{rows / wall if rows else float('nan'):,.0f} rows/s):")  # fmt: skip
    for part, seconds in spent.items():
        print(f"  {part:<48} {seconds:>6.3f} s {100 * seconds / wall:>5.1f} %"
              f" {1e6 * seconds / rows if rows else float('nan'):>6.2f} us/row")  # fmt: skip
    counted = sum(v for k, v in spent.items() if not k.startswith(" "))
    print(f"  {'rest (set-up, sessions, finish)':<48} {wall - counted:>6.3f} s"
          f" {100 * (wall - counted) / wall:>5.1f} %")  # fmt: skip


def experiment_yaml(key: str, model: str, sha: str) -> str:
    names = ", ".join(FEATURES)
    variant = (f"    model: {{path: {model}, sha256: {sha}, inputs: {{features: "
               f"{{features: [{names}], offset: 1.0, factor: 0.5}}}}}}\n")  # fmt: skip
    return (f"key: {key}\ndescription: bench\nowner: bench\nstatus: running\ncontrol: a\n"
            f"variants:\n  - key: a\n    weight: 0.5\n{variant}  - key: b\n    weight: 0.5\n"
            f"{variant}metrics:\n  primary: {{name: conversion, type: binary}}\n")  # fmt: skip


def run_jobs(env: dict[str, str], key: str, inputs: list[Path], folder: Path,
             chunk_rows: int, table: bool = False, output_format: str = "parquet",
             variant: str | None = None) -> float:  # fmt: skip
    """Submit one job per input, wait for all; rows/s from submission to the last done.

    ``variant``: every row scored by that variant's model, no assignment (``--variant``)."""
    import psycopg

    os.environ.update(env)  # before the Celery app is made: the worker's broker and queue
    from service.experiments.validation import load_experiments
    from service.jobs import store
    from service.jobs.submit import submit
    from service.jobs.tasks import enqueue

    loaded = load_experiments([Path(env["ABX_EXPERIMENTS"])])
    experiment = loaded.experiments[[i.experiment.key for i in loaded.experiments].index(key)]
    started = time.perf_counter()
    ids = []
    with psycopg.connect(env["ABX_DATABASE_URL"], autocommit=True) as conn:
        for index, source in enumerate(inputs):
            output = None if table else folder / f"{key}-{index}.{output_format}"
            job = submit(conn, experiment.experiment, key, variant=variant, input_path=source,
                         input_format="parquet", output_path=output,
                         output_table=f"{key}_{index}_{time.time_ns()}" if table else None,
                         rejects_dir=folder / "rejects",
                         log_exposures=False, chunk_rows=chunk_rows, created_by="bench",
                         request_id=None)  # fmt: skip
            enqueue(job.job_id)
            ids.append(job.job_id)
        rows = 0
        while True:
            jobs = [store.get_job(conn, job_id) for job_id in ids]
            if all(j is not None and j.status not in store.ACTIVE for j in jobs):
                break
            time.sleep(0.05)
        for job in jobs:
            assert job is not None and job.status == "done", job
            rows += job.rows_done
    return rows / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    parser.add_argument("--run-rows", type=int, default=4096)
    parser.add_argument("--warm-rows", type=int, default=5_000)
    parser.add_argument(
        "--profile", action="store_true", help="also profile one logistic job in this process"
    )
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--output-format", choices=("parquet", "csv", "ndjson"),
                        default="parquet", help="the timed file jobs' output")  # fmt: skip
    parser.add_argument("--profile-rows", type=int, default=200_000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--broker-url", default=os.environ.get("ABX_BENCH_BROKER_URL",
                                                               "redis://127.0.0.1:6379/0"))  # fmt: skip
    args = parser.parse_args()
    import pyarrow.parquet as pq

    from service.assignment.core import compile_experiment
    from service.demo.models import build_demo_models
    from service.settings import PROJECT_ROOT

    models_root = PROJECT_ROOT / "experiments" / "models"
    shas = build_demo_models(models_root)
    print(f"code {code_version()}; load {load_average()}; rows {args.rows:,}; "
          f"chunk {args.chunk_rows:,}; run {args.run_rows:,}; output {args.output_format}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="abx-score-") as scratch, \
            bench_database(args.database_url) as database_url:  # fmt: skip
        folder = Path(scratch)
        source = folder / "input.parquet"
        write_input(source, args.rows)
        halves = split(source, 2)
        warm_source = folder / "warm.parquet"
        write_input(warm_source, max(2, args.warm_rows * 2))
        warm_halves = split(warm_source, 2)
        (folder / "warm").mkdir()
        (folder / "explicit").mkdir()
        experiments = folder / "experiments"
        experiments.mkdir()
        for name, model in MODELS.items():
            key = "score_" + name.split()[-1].lower()
            (experiments / f"{key}.yaml").write_text(experiment_yaml(key, model, shas[model]))
        env = {**os.environ, "ABX_DATABASE_URL": database_url, "ABX_EXPERIMENTS": str(experiments),
               "ABX_MODELS": str(models_root), "ABX_BROKER_URL": args.broker_url,
               "ABX_QUEUE": f"abx-bench-score-{os.getpid()}", "ABX_WORKER_METRICS_BIND": "",
               "ABX_DATA_DIR": str(folder / "data"), "ABX_JOB_RUN_ROWS": str(args.run_rows),
               "ABX_LOG_LEVEL": "WARNING"}  # fmt: skip
        worker = subprocess.Popen(
            [*abx_command(), "worker", "--concurrency", "2"], env=env, cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL, stderr=(folder / "worker.log").open("wb"),
        )  # fmt: skip
        try:
            time.sleep(8)
            print_header(f"{'model':<10} {'bare rows/s':>12} {'floor rows/s':>13}"
                         f" {'2 jobs rows/s':>14} {'/bare':>6} {'/floor':>6}"
                         f" {'1 job rows/s':>13} {'/bare':>6} {'/floor':>6}"
                         f" {'1 job to table':>15} {'vs file':>7}"
                         f" {'2 jobs, variant a':>18} {'/bare':>6}")  # fmt: skip
            for name in args.models:
                model = MODELS[name]
                key = "score_" + name.split()[-1].lower()
                run_jobs(env, key, warm_halves, folder / "warm", args.chunk_rows)
                compiled = compile_experiment(experiments_by_key(env)[key])
                schema = pq.read_schema(folder / "warm" / f"{key}-0.parquet")
                bare = bare_loop(models_root / model, source, folder / "bare.parquet",
                                 args.chunk_rows, args.run_rows)  # fmt: skip
                floor = floor_loop(models_root / model, source, folder / "floor.parquet",
                                   args.chunk_rows, args.run_rows, compiled, schema)  # fmt: skip
                two = run_jobs(env, key, halves, folder, args.chunk_rows,
                               output_format=args.output_format)  # fmt: skip
                one = run_jobs(env, key, [source], folder, args.chunk_rows,
                               output_format=args.output_format)  # fmt: skip
                into_table = run_jobs(env, key, [source], folder, args.chunk_rows, table=True)
                explicit = run_jobs(env, key, halves, folder / "explicit", args.chunk_rows,
                                    output_format=args.output_format, variant="a")  # fmt: skip
                # the floor did the job's assignment: the same variant for every row, in order
                job_variants = job_column(folder / f"{key}-0.{args.output_format}", "variant")
                floor_variants = pq.read_table(folder / "floor.parquet", columns=["variant"])
                assert job_variants == floor_variants.column("variant").to_pylist(), (
                    "the floor assigned otherwise"
                )
                print(f"{name:<10} {bare:>12,.0f} {floor:>13,.0f}"
                      f" {two:>14,.0f} {two / bare:>6.2f} {two / floor:>6.2f}"
                      f" {one:>13,.0f} {one / bare:>6.2f} {one / floor:>6.2f}"
                      f" {into_table:>15,.0f} {into_table / one:>7.2f}"
                      f" {explicit:>18,.0f} {explicit / bare:>6.2f}", flush=True)  # fmt: skip
            print(f"load {load_average()} after the jobs")
            rss = [peak_rss_mib(pid) for pid in children_of(worker.pid)]
            print(f"\nworker processes' peak RSS (VmHWM): {', '.join(f'{r:.0f}' for r in rss)} MiB")
        finally:
            stop(worker)
        if args.profile:
            profiled = folder / "profiled.parquet"
            write_input(profiled, args.profile_rows)
            profile_job(env, "score_logistic", profiled, folder, args.chunk_rows,
                        args.output_format)  # fmt: skip
            if os.environ.get("ABX_BENCH_SHOW_LOG"):
                print((folder / "worker.log").read_text()[-3000:])


if __name__ == "__main__":
    sys.exit(main())
