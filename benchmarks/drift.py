"""Distribution sketches and drift guardrails: false alarms, recording cost, evaluation time.

``--part false-alarms`` (no database): simulated stable traffic, treatment and control drawn
from the same distributions (20 input columns N(0, 1) and a logistic output), hour by hour
for ``--months`` of 30 days per simulated experiment; counts how many experiment-months trip
each drift guardrail (default policy: PSI > 0.25 for 3 windows in a row, 500+ rows a side)
and how many single windows go over the threshold, with Wilson 95 % intervals. The suite's
fast version is ``tests/decisions/test_drift.py::test_stable_traffic_trips_neither...``.

``--part sketch`` (no database): a real onnxruntime session of the demo ``churn_logreg``
answers one-row requests, with the sketch book off and on (``offer`` on the request path and
the background ``drain`` that bins, both timed), turn about; reports the added microseconds
per predicted row against the same loop with it off, and this process's RSS.

``--part evaluate`` (PostgreSQL): ``--experiments`` × 3 variants × 20 input columns + 1 output
of hourly sketches over ``--days`` days, COPYed into a scratch database, then one beat's worth
of drift guardrails (``service.decisions.inputs.drift_checks`` for every experiment, as the
workers call it) is timed.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections import deque
from datetime import UTC, datetime, timedelta

import numpy as np
from common import bench_database, code_version, load_average, print_header

FEATURES = 20


def wilson(k: int, n: int) -> tuple[float, float]:
    from statsmodels.stats.proportion import proportion_confint

    low, high = proportion_confint(k, n, 0.05, "wilson")
    return float(low), float(high)


def false_alarms(months: int, rows: int, seed: int, profiled: bool = False) -> None:
    from service.decisions.drift import check_drift
    from service.experiments.schema import DriftGuardrail
    from service.inference.histograms import DEFAULT_EDGES, reference_edges, sketch_of

    rng = np.random.default_rng(seed)
    weights = rng.normal(scale=0.3, size=FEATURES)
    edges = {"a": [DEFAULT_EDGES] * (FEATURES + 1), "b": [DEFAULT_EDGES] * (FEATURES + 1)}
    if profiled:  # b's bins from a reference sample, as a profile sets them; a's the default
        sample = rng.normal(size=(3000, FEATURES))
        scores = 1 / (1 + np.exp(-(sample @ weights)))
        edges["b"] = [reference_edges(sample[:, j]) for j in range(FEATURES)]
        edges["b"].append(reference_edges(scores))
    hours = 30 * 24
    guardrails = [DriftGuardrail(kind="input_drift"), DriftGuardrail(kind="prediction_drift")]
    trips = dict.fromkeys(("input_drift", "prediction_drift"), 0)
    over = dict.fromkeys(trips, 0)
    windows = 0
    started = time.perf_counter()
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for _ in range(months):
        grouped: dict[tuple[str, datetime], dict[str, object]] = {}
        for h in range(hours):
            at = base + timedelta(hours=h)
            for variant in ("a", "b"):
                x = rng.normal(size=(rows, FEATURES))
                p = 1 / (1 + np.exp(-(x @ weights)))
                features = {
                    f"input:features[{j}]": sketch_of(x[:, j], edges[variant][j])
                    for j in range(FEATURES)
                }
                features["output:probability[0]"] = sketch_of(p, edges[variant][FEATURES])
                grouped[(variant, at)] = features
        now = base + timedelta(hours=hours)
        for guardrail in guardrails:
            check = check_drift(guardrail, "b", "a", grouped, now, history_windows=hours)  # type: ignore[arg-type]
            run = longest = 0
            for window in check.history:
                bad = window.distance is not None and window.distance > guardrail.threshold
                over[guardrail.kind] += bad
                run = run + 1 if bad else 0
                longest = max(longest, run)
            trips[guardrail.kind] += longest >= guardrail.windows
        windows += hours
    bins = "; b on profile bins, a on the default ones (re-binned)" if profiled else ""
    print_header(
        f"false alarms on stable traffic: {months} experiment-months, {rows} rows per "
        f"variant-hour{bins}"
    )
    for kind in trips:
        low, high = wilson(trips[kind], months)
        w_low, w_high = wilson(over[kind], windows)
        print(f"{kind:17} months tripped {trips[kind]}/{months} = {trips[kind] / months:.3f} "
              f"[{low:.3f}, {high:.3f}]; single windows over 0.25: {over[kind]}/{windows} "
              f"= {over[kind] / windows:.2e} [{w_low:.2e}, {w_high:.2e}]")  # fmt: skip
    print(f"({time.perf_counter() - started:.0f} s)")


def sketch_cost(requests: int, rounds: int) -> None:
    import onnxruntime as ort

    from service.demo.models import build_demo_models
    from service.inference.sketches import SketchBook
    from service.settings import PROJECT_ROOT

    models = PROJECT_ROOT / "experiments" / "models"
    build_demo_models(models)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(models / "churn_logreg.onnx"), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(1)
    inputs = [rng.normal(size=(1, FEATURES)).astype(np.float32) for _ in range(requests)]
    written = [0]

    def put(stream: str, row: tuple[object, ...]) -> bool:
        written[0] += 1
        return True

    book = SketchBook(put, max_pending=requests + 1)

    def loop(sketch: bool) -> float:
        started = time.perf_counter()
        for x in inputs:
            outputs = session.run(None, {"features": x})
            if sketch:
                book.offer("exp", "a", "sha", {"features": x}, {"probability": outputs[0]})
        if sketch:
            book.drain()
        return time.perf_counter() - started

    def calibration() -> float:
        """The machine's speed now: the same number of bare tuple appends to a deque."""
        queue: deque[tuple[object, ...]] = deque()
        started = time.perf_counter()
        for x in inputs:
            queue.append(("exp", "a", "sha", 0, {"features": x}, {"probability": x}))
        return time.perf_counter() - started

    loop(False)
    loop(True)  # warm both
    off, on, bare = [], [], []
    for _ in range(rounds):
        off.append(loop(False))
        on.append(loop(True))
        bare.append(calibration())
    off_us = [1e6 * t / requests for t in off]
    on_us = [1e6 * t / requests for t in on]
    added = [b - a for a, b in zip(off_us, on_us, strict=True)]
    print_header(f"sketch recording: {requests} one-row requests x {rounds} rounds, turn about")
    print(f"model run alone: {np.median(off_us):.2f} µs/row (median round); with sketches: "
          f"{np.median(on_us):.2f} µs/row; added {np.median(added):.2f} µs/row "
          f"(rounds: {', '.join(f'{a:.2f}' for a in added)}); ratio {np.median(on_us) / np.median(off_us):.2f}x")  # fmt: skip
    bare_us = [1e6 * t / requests for t in bare]
    print(f"calibration: {requests} bare tuple appends to a deque took {np.median(bare_us):.2f} µs "
          f"each here (about 0.2 µs on an idle core); the added cost is "
          f"{np.median(added) / np.median(bare_us):.0f}x that")  # fmt: skip
    print(
        f"rows handed to the writer per drain: {written[0] // (rounds + 1)}; "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


def evaluate(experiments: int, days: int) -> None:
    import psycopg

    from service.decisions.inputs import drift_checks
    from service.experiments.schema import Experiment
    from service.inference.histograms import DEFAULT_EDGES, sketch_of

    rng = np.random.default_rng(2)
    sample = [sketch_of(rng.normal(size=500), DEFAULT_EDGES) for _ in range(16)]
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    hours = days * 24
    features = [f"input:features[{j}]" for j in range(FEATURES)] + ["output:probability[0]"]
    model = {"path": "m.onnx", "sha256": "0" * 64}
    definitions = [
        Experiment.model_validate({
            "key": f"exp{e}", "description": "d", "owner": "o", "status": "running", "control": "a",
            "variants": [{"key": v, "weight": w, "model": model} for v, w in (("a", 0.4), ("b", 0.3), ("c", 0.3))],
            "metrics": {"primary": {"name": "m", "type": "binary"}},
            "policy": {"drift": [{"kind": "input_drift"}, {"kind": "prediction_drift"}]},
        })
        for e in range(experiments)
    ]  # fmt: skip
    with bench_database(None) as url:
        started = time.perf_counter()
        with psycopg.connect(url) as conn:
            with conn.cursor().copy(
                "COPY model_sketches (experiment_key, variant_key, model_sha256, hour, feature, edges,"
                " counts, below, above, invalid, n, sum_value, sum_square) FROM STDIN"
            ) as copy:
                for e in range(experiments):
                    for h in range(hours, 0, -1):
                        at = end - timedelta(hours=h)
                        for variant in ("a", "b", "c"):
                            for i, feature in enumerate(features):
                                s = sample[(e + h + i) % len(sample)]
                                copy.write_row((f"exp{e}", variant, "0" * 64, at, feature, list(s.edges),
                                                list(s.counts), s.below, s.above, s.invalid, s.n,
                                                s.sum_value, s.sum_square))  # fmt: skip
            conn.commit()
            conn.execute("ANALYZE model_sketches")
            (rows, size) = conn.execute(
                "SELECT count(*), pg_total_relation_size('model_sketches') FROM model_sketches"
            ).fetchone()  # type: ignore[misc]
        loaded = time.perf_counter() - started
        print_header(
            f"drift evaluation: {experiments} experiments x 3 variants x {len(features)} features x {days} days hourly"
        )
        print(f"{rows} sketch rows, {size / 2**20:.0f} MiB with the index ({size / rows:.0f} B a row), "
              f"loaded in {loaded:.0f} s")  # fmt: skip
        with psycopg.connect(url) as conn:
            for attempt in range(3):
                started = time.perf_counter()
                checks = [c for d in definitions for c in drift_checks(conn, d)]
                seconds = time.perf_counter() - started
                print(f"beat {attempt + 1}: {len(checks)} checks (2 guardrails x 2 treatments x "
                      f"{experiments}) in {seconds:.2f} s ({1000 * seconds / experiments:.1f} ms an experiment)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["false-alarms", "sketch", "evaluate"], required=True)
    parser.add_argument("--months", type=int, default=20, help="false-alarms: experiment-months")
    parser.add_argument("--rows", type=int, default=500, help="false-alarms: rows per variant-hour")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profiled", action="store_true",
                        help="false-alarms: the treatment on profile bins, compared re-binned")  # fmt: skip
    parser.add_argument("--requests", type=int, default=20_000, help="sketch: requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--days", type=int, default=90)
    args = parser.parse_args()
    print(f"code {code_version()}; load average {load_average()}")
    if args.part == "false-alarms":
        false_alarms(args.months, args.rows, args.seed, args.profiled)
    elif args.part == "sketch":
        sketch_cost(args.requests, args.rounds)
    else:
        evaluate(args.experiments, args.days)


if __name__ == "__main__":
    main()
