"""Distribution sketches and drift guardrails: false alarms, recording cost, evaluation time.

``--part false-alarms`` (no database): simulated stable traffic, treatment and control drawn
from the same distributions (20 input columns N(0, 1) and a logistic output), hour by hour
for ``--months`` of 30 days per simulated experiment; counts how many experiment-months trip
each drift guardrail (default policy: PSI > 0.25 for 3 windows in a row, 500+ rows a side)
and how many single windows go over the threshold, with Wilson 95 % intervals. The suite's
fast version is ``tests/decisions/test_drift.py::test_stable_traffic_trips_neither...``.

``--part sketch`` (no database): a real onnxruntime session of the demo ``churn_logreg`` (one
thread) answers ``--requests`` requests of ``--batch`` rows. Measured as CPU time of this thread
(``time.thread_time``, so other processes on the machine only blur it, where wall-clock A/Bs
on a loaded machine were meaningless), per predicted row, median of ``--rounds`` rounds taken
turn about: the model run alone; the request path's ``offer`` (the enqueue) less a bare call
with the same arguments; and the background ``drain`` that bins, before (the code this
benchmark replaced, kept here: every offer's arrays checked one by one, every column through
``np.histogram``) and after (``SketchBook.drain``). Both drains must hand the writer the same
rows. Also the peak memory ``tracemalloc`` sees during one drain of each.

``--part evaluate`` (PostgreSQL): ``--experiments`` × 3 variants × 20 input columns + 1 output
of hourly sketches, generated inside a scratch database (an unlogged table) for each history
length of ``--days`` in turn (1, 7, 30 and 90 days: the older hours are added at each step),
then one beat's worth of drift guardrails (``service.decisions.inputs.drift_checks`` for every
experiment, as the workers call it, each in its own transaction) is timed before (the code
this benchmark replaced, kept here verbatim: sketches read in text format, one distance
computation per window) and after, turn about; both must give the same checks. Reported: wall
seconds, CPU seconds of this process and of its PostgreSQL backend (``/proc``).
"""

from __future__ import annotations

import argparse
import resource
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
from common import bench_database, code_version, cpu_seconds, load_average, print_header

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


def sketch_cost(requests: int, rounds: int, batch: int) -> None:
    import tracemalloc

    import onnxruntime as ort

    from service.demo.models import build_demo_models
    from service.inference.sketches import SketchBook, sketch_offers_one_by_one
    from service.settings import PROJECT_ROOT

    models = PROJECT_ROOT / "experiments" / "models"
    build_demo_models(models)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # the model runs in this thread: its CPU time is ours
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(models / "churn_logreg.onnx"), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(1)
    feeds = [
        {"features": rng.normal(size=(batch, FEATURES)).astype(np.float32)} for _ in range(requests)
    ]
    answers = [{"probability": session.run(None, f)[0]} for f in feeds]
    rows = requests * batch
    written: list[tuple[object, ...]] = []

    def put(stream: str, row: tuple[object, ...]) -> bool:
        written.append(row)
        return True

    class OneByOne(SketchBook):
        """The drain before this change: every array checked offer by offer, every column
        through ``np.histogram``."""

        def drain(self) -> int:
            taken: dict[tuple[str, str, str, int], list[tuple[object, ...]]] = {}
            pending = self._pending
            while pending:
                offer = pending.popleft()
                taken.setdefault(offer[:4], []).append(offer)
            for (experiment, variant, sha, hour), offers in taken.items():
                at = datetime.fromtimestamp(hour * 3600, UTC)
                for feature, sketch in sketch_offers_one_by_one(offers, sha, self._edges_for):  # type: ignore[arg-type]
                    self._put("model_sketches", (experiment, variant, sha, at, feature,
                                                 list(sketch.edges), list(sketch.counts), sketch.below,
                                                 sketch.above, sketch.invalid, sketch.n,
                                                 sketch.sum_value, sketch.sum_square))  # fmt: skip
            return sum(len(offers) for offers in taken.values())

    books = {"before": OneByOne(put, max_pending=requests + 1),
             "after": SketchBook(put, max_pending=requests + 1)}  # fmt: skip

    def model_alone() -> float:
        started = time.thread_time()
        for f in feeds:
            session.run(None, f)
        return time.thread_time() - started

    def bare_calls() -> float:
        """The loop and call overhead ``offer`` is measured against: a method doing nothing."""

        class Nothing:
            def offer(self, *args: object) -> None:
                pass

        nothing = Nothing()
        started = time.thread_time()
        for f, a in zip(feeds, answers, strict=True):
            nothing.offer("exp", "a", "sha", f, a)
        return time.thread_time() - started

    def offers(book: SketchBook) -> float:
        started = time.thread_time()
        for f, a in zip(feeds, answers, strict=True):
            book.offer("exp", "a", "sha", f, a)
        return time.thread_time() - started

    def drain(book: SketchBook) -> float:
        written.clear()
        started = time.thread_time()
        book.drain()
        return time.thread_time() - started

    outputs = {}
    for name, book in books.items():  # warm both; their rows must agree
        offers(book)
        drain(book)
        outputs[name] = list(written)
    if outputs["before"] != outputs["after"]:
        raise SystemExit("the two drains disagree")
    times: dict[str, list[float]] = {"model": [], "bare": []}
    for name in books:
        times[f"offer {name}"], times[f"drain {name}"] = [], []
    for _ in range(rounds):  # turn about: the machine's load falls on every measure alike
        times["model"].append(model_alone())
        times["bare"].append(bare_calls())
        for name, book in books.items():
            times[f"offer {name}"].append(offers(book))
            times[f"drain {name}"].append(drain(book))
    us = {k: float(np.median([1e6 * t / rows for t in v])) for k, v in times.items()}
    spread = {k: (1e6 * min(v) / rows, 1e6 * max(v) / rows) for k, v in times.items()}
    peak = {}
    for name, book in books.items():
        offers(book)
        written.clear()
        tracemalloc.start()
        book.drain()
        peak[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    print_header(
        f"sketch recording: {requests} requests of {batch} row(s) x {rounds} rounds, turn about; "
        f"CPU time of this thread (time.thread_time), µs per predicted row, median round"
    )
    enqueue = us["offer after"] - us["bare"]
    print(f"model run alone (onnxruntime, 1 thread): {us['model']:.3f}")
    print(
        f"request path, offer (enqueue), less the bare call: {enqueue:.3f} "
        f"(offer {us['offer after']:.3f}, bare call {us['bare']:.3f})"
    )
    for name in books:
        low, high = spread[f"drain {name}"]
        print(
            f"sketch thread, drain {name:6}: {us[f'drain {name}']:.3f} (rounds {low:.3f} to "
            f"{high:.3f}); peak traced memory of one drain {peak[name] / 2**20:.1f} MiB"
        )
    before, after = us["drain before"], us["drain after"]
    print(
        f"drain before/after: {before / after:.1f}x; added CPU per row (enqueue + drain): "
        f"before {enqueue + before:.3f}, after {enqueue + after:.3f}, "
        f"{100 * (enqueue + after) / us['model']:.0f} % of the model run alone"
    )
    print(
        f"rows handed to the writer per drain: {len(written)}; "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    )


def _checks_before(conn: Any, experiment: Any) -> list[Any]:
    """``drift_checks`` as it was before the evaluation was made cheap, kept verbatim as this
    benchmark's baseline: sketches read in text format, every count turned into a float, and
    one distance computation per window."""
    from analysis.drift import distance_rows, rebin
    from service.decisions.drift import (
        PREFIX,
        DriftCheck,
        DriftWindow,
        _merged,
        comparisons,
        group,
        window_starts,
    )
    from service.inference.histograms import Sketch

    def read_sketches(since: datetime) -> dict[tuple[str, str, datetime, str], Sketch]:
        found = {}
        for (variant, sha, hour, feature, edges, counts, below, above, invalid, n, total,
             square) in conn.execute(
            "SELECT variant_key, model_sha256, hour, feature, edges, counts, below, above,"
            " invalid, n, sum_value, sum_square FROM model_sketches WHERE experiment_key = %s"
            " AND hour >= %s", (experiment.key, since),
        ):  # fmt: skip
            found[(variant, sha, hour, feature)] = Sketch(
                tuple(edges), tuple(int(c) for c in counts), int(below), int(above),
                int(invalid), int(n), float(total), float(square),
            )  # fmt: skip
        return found

    def common(mine: Sketch, theirs: Sketch) -> tuple[Any, list[float], list[float]]:
        if mine.edges == theirs.edges:
            return (
                mine.edges,
                [float(c) for c in mine.histogram],
                [float(c) for c in theirs.histogram],
            )

        def fullest(sketch: Sketch) -> float:
            return max(sketch.histogram) / max(sum(sketch.histogram), 1)

        if fullest(mine) >= fullest(theirs):
            moved = rebin(theirs.edges, theirs.histogram, mine.edges)
            return mine.edges, [float(c) for c in mine.histogram], [float(c) for c in moved]
        moved = rebin(mine.edges, mine.histogram, theirs.edges)
        return theirs.edges, [float(c) for c in moved], [float(c) for c in theirs.histogram]

    def window_distance(guardrail: Any, variant: str, grouped: Any, start: datetime) -> Any:
        hours = [start + timedelta(hours=h) for h in range(guardrail.window_hours)]
        prefix = PREFIX[guardrail.kind]
        mine = _merged(grouped, variant, hours, prefix)
        theirs = _merged(grouped, experiment.control, hours, prefix)
        pairs = [
            (feature, *common(sketch, theirs[feature]))
            for feature, sketch in sorted(mine.items())
            if feature in theirs
            and sketch.n >= guardrail.min_rows and theirs[feature].n >= guardrail.min_rows
        ]  # fmt: skip
        worst: tuple[float, str] | None = None
        by_width: dict[int, list[Any]] = {}
        for pair in pairs:
            by_width.setdefault(len(pair[1]), []).append(pair)
        for rows in by_width.values():
            values = distance_rows(
                guardrail.measure, [e for _, e, _, _ in rows], [b for _, _, _, b in rows],
                [a for _, _, a, _ in rows],
            )  # fmt: skip
            index = int(values.argmax())
            if worst is None or values[index] > worst[0]:
                worst = (float(values[index]), rows[index][0])
        return DriftWindow(start, None, None) if worst is None else DriftWindow(start, *worst)

    guardrails = experiment.policy.drift
    (now,) = conn.execute("SELECT now()").fetchone()
    since = min(window_starts(now, g)[0] for g in guardrails)
    grouped = group(read_sketches(since))
    treatments = [v.key for v in experiment.variants if v.key != experiment.control]
    found = []
    for guardrail in guardrails:
        for variant in treatments:
            assert comparisons(guardrail, variant, experiment.control, False) == ["control"]
            history = [window_distance(guardrail, variant, grouped, start)
                       for start in window_starts(now, guardrail)]  # fmt: skip
            over = 0
            for window in reversed(history):
                if window.distance is None or window.distance <= guardrail.threshold:
                    break
                over += 1
            latest = history[-1]
            found.append(DriftCheck(
                guardrail.kind, variant, guardrail.measure, guardrail.threshold,
                guardrail.action, guardrail.windows, over, over >= guardrail.windows,
                latest.distance, latest.feature, experiment.control, history,
            ))  # fmt: skip
    return found


def _load_hours(conn: Any, experiments: int, first: int, last: int, end: datetime) -> None:
    """Hours ``first`` to ``last`` before ``end`` of every experiment, generated by PostgreSQL
    from 16 sample sketches (the client would take an hour to send 13.6M rows one by one)."""
    for e in range(experiments):
        conn.execute(
            "INSERT INTO model_sketches SELECT 'exp' || %(e)s, v, repeat('0', 64),"
            " %(end)s - h * interval '1 hour',"
            " CASE WHEN i = %(features)s THEN 'output:probability[0]'"
            "  ELSE 'input:features[' || i || ']' END,"
            " s.edges, s.counts, s.below, s.above, s.invalid, s.n, s.sum_value, s.sum_square"
            " FROM generate_series(%(last)s, %(first)s, -1) AS h"
            " CROSS JOIN unnest(ARRAY['a', 'b', 'c']) AS v"
            " CROSS JOIN generate_series(0, %(features)s) AS i"
            " JOIN bench_samples AS s ON s.idx = (%(e)s + h + i) %% 16 ORDER BY 4, 2, 5",
            {"e": e, "end": end, "first": first, "last": last, "features": FEATURES},
        )
        conn.commit()


def evaluate(experiments: int, days: list[int], rounds: int) -> None:
    import psycopg

    from service.decisions.inputs import drift_checks
    from service.experiments.schema import Experiment
    from service.inference.histograms import DEFAULT_EDGES, sketch_of

    rng = np.random.default_rng(2)
    sample = [sketch_of(rng.normal(size=500), DEFAULT_EDGES) for _ in range(16)]
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
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
    ways = {"before": _checks_before, "after": drift_checks}
    with bench_database(None) as url, psycopg.connect(url) as conn:
        # A scratch table written once: no WAL for its gigabytes. Reads are the same.
        conn.execute("ALTER TABLE model_sketches SET UNLOGGED")
        conn.execute(
            "CREATE TABLE bench_samples (idx int PRIMARY KEY, edges float8[], counts int8[],"
            " below int8, above int8, invalid int8, n int8, sum_value float8, sum_square float8)"
        )
        for i, s in enumerate(sample):
            conn.execute(
                "INSERT INTO bench_samples VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (i, list(s.edges), list(s.counts), s.below, s.above, s.invalid, s.n, s.sum_value,
                 s.sum_square),
            )  # fmt: skip
        conn.commit()
        loaded = 0  # hours of history so far; each step adds the older hours
        for day_count in sorted(days):
            started = time.perf_counter()
            _load_hours(conn, experiments, loaded + 1, day_count * 24, end)
            loaded = day_count * 24
            conn.execute("ANALYZE model_sketches")
            conn.commit()
            (rows, size) = conn.execute(
                "SELECT count(*), pg_total_relation_size('model_sketches') FROM model_sketches"
            ).fetchone()  # type: ignore[misc]
            conn.commit()
            print_header(
                f"drift evaluation: {experiments} experiments x 3 variants x {FEATURES + 1} "
                f"features, {day_count} days of hourly sketches"
            )
            print(f"{rows} sketch rows, {size / 2**30:.2f} GiB with the index ({size / rows:.0f} B a "
                  f"row); this step loaded in {time.perf_counter() - started:.0f} s; load average "
                  f"{load_average()}")  # fmt: skip
            with psycopg.connect(url) as reader:
                backend = [reader.info.backend_pid]
                answers = {
                    n: [c for d in definitions for c in way(reader, d)] for n, way in ways.items()
                }
                reader.rollback()
                if answers["before"] != answers["after"]:
                    raise SystemExit("the two evaluations disagree")
                seconds: dict[str, dict[str, list[float]]] = {
                    n: {"wall": [], "client": [], "server": []} for n in ways
                }
                for _ in range(rounds):  # turn about
                    for name, way in ways.items():
                        wall, client, server = (
                            time.perf_counter(),
                            time.process_time(),
                            cpu_seconds(backend),
                        )
                        for d in definitions:
                            way(reader, d)
                            reader.rollback()  # each experiment's analysis is its own transaction
                        seconds[name]["wall"].append(time.perf_counter() - wall)
                        seconds[name]["client"].append(time.process_time() - client)
                        seconds[name]["server"].append(cpu_seconds(backend) - server)
            checks = len(answers["after"])
            for name in ways:
                m = {k: float(np.median(v)) for k, v in seconds[name].items()}
                walls = ", ".join(f"{w:.2f}" for w in seconds[name]["wall"])
                print(f"{name:6}: one beat ({checks} checks) {m['wall']:.2f} s wall (rounds {walls}); "
                      f"CPU {m['client']:.2f} s in the worker, {m['server']:.2f} s in PostgreSQL")  # fmt: skip
            b, a = (float(np.median(seconds[n]["wall"])) for n in ("before", "after"))
            bc, ac = (
                float(np.median([c + s for c, s in zip(seconds[n]["client"], seconds[n]["server"], strict=True)]))
                for n in ("before", "after")
            )  # fmt: skip
            print(f"before/after: {b / a:.1f}x wall, {bc / ac:.1f}x CPU (worker + PostgreSQL)")


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
    parser.add_argument("--batch", type=int, default=1, help="sketch: rows per request")
    parser.add_argument("--experiments", type=int, default=100)
    parser.add_argument("--days", type=int, nargs="+", default=[1, 7, 30, 90],
                        help="evaluate: history lengths, loaded one after the other")  # fmt: skip
    args = parser.parse_args()
    print(f"code {code_version()}; load average {load_average()}")
    if args.part == "false-alarms":
        false_alarms(args.months, args.rows, args.seed, args.profiled)
    elif args.part == "sketch":
        sketch_cost(args.requests, args.rounds, args.batch)
    else:
        evaluate(args.experiments, args.days, args.rounds)


if __name__ == "__main__":
    main()
