"""``/v1/assign`` and ``/v1/events`` throughput with the unstorable-value checks and without.

Two ``abx serve`` run side by side on one migrated database, with the same settings (2
workers, auth off); one has ``no_storable_checks/`` on its PYTHONPATH, which switches the
checks off (``validation.py`` measures the same checks in-process). Client threads
(``http.client`` keep-alive) post to one server at a time, for ``--seconds`` per
measurement, alternating which server goes first in each round, since other work on the
machine comes and goes. ``/v1/assign``: one new unit per request (``checkout_ranker``, half of
them targeted). ``/v1/events``: batches of 100 unique events, half with a small
``properties`` object, a tenth with a non-ASCII unit. Reported: requests/s of each and the
median of the per-round ratios (with / without), and the servers' own CPU seconds per
request (master and workers, from /proc) with the ratio of those (without / with, so that
above 1 means cheaper, as for throughput). On a machine where other work comes and goes the
throughput ratio swings by tens of percent; CPU per request barely moves with the load, and
while a server is CPU-bound its throughput is the inverse of it.

Run: ``python benchmarks/validation_http.py [--rounds N] [--seconds S] [--connections C]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

from common import (
    ROOT,
    Server,
    abx_command,
    bench_database,
    code_version,
    cpu_seconds,
    load_average,
    print_header,
    serving,
)

HERE = Path(__file__).resolve().parent
EVENTS_PER_REQUEST = 100


def _assign_body(tag: str, number: int) -> bytes:
    country = "US" if number % 2 else "FR"
    return json.dumps({"experiment": "checkout_ranker", "unit": f"user-{tag}-{number}",
                       "attributes": {"country": country, "app_version": "2.1.0"}}).encode()  # fmt: skip


def _events_body(tag: str, number: int) -> bytes:
    events = []
    for i in range(EVENTS_PER_REQUEST):
        event = {"event_id": f"e-{tag}-{number}-{i}", "experiment": "checkout_ranker",
                 "unit": f"user-{i}" if i % 10 else f"utilisateur-é-{i}",
                 "metric": "checkout_conversion", "value": i % 2}  # fmt: skip
        if i % 2:
            event["properties"] = {"page": "cart", "items": [1, 2, 3], "coupon": {"code": "X"}}
        events.append(event)
    return json.dumps({"events": events}).encode()


def _drive(port: int, path: str, tag: str, connections: int, seconds: float) -> tuple[float, int]:
    """Requests/s answered 2xx over ``seconds`` by ``connections`` keep-alive clients, and
    how many."""
    body = _assign_body if path == "/v1/assign" else _events_body
    done, errors = [0] * connections, [0] * connections
    deadline = time.perf_counter() + seconds

    def client(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        number = 0
        while time.perf_counter() < deadline:
            number += 1
            try:
                conn.request("POST", path, body(f"{tag}-{index}", number),
                             {"Content-Type": "application/json"})  # fmt: skip
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                errors[index] += 1
                conn.close()
                continue
            if response.status < 300:
                done[index] += 1
            else:
                errors[index] += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(connections)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if sum(errors):
        print(f"  ({sum(errors)} errors on {path})")
    return sum(done) / (time.perf_counter() - started), sum(done)


def _measure(
    server: Server, path: str, tag: str, connections: int, seconds: float
) -> tuple[float, float]:
    """Requests/s and the server's CPU seconds per request over one measurement."""
    pids = server.pids
    before = cpu_seconds(pids)
    rate, requests = _drive(server.port, path, tag, connections, seconds)
    return rate, (cpu_seconds(pids) - before) / max(requests, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument("--connections", type=int, default=8)
    args = parser.parse_args()
    print_header(f"validation over HTTP, code {code_version()}, load {load_average()}")
    with bench_database(None) as url, tempfile.TemporaryDirectory() as folder:
        base = {**os.environ, "ABX_DATABASE_URL": url, "ABX_AUTH": "off", "ABX_WORKERS": "2",
                "ABX_EXPERIMENTS": str(ROOT / "experiments")}  # fmt: skip
        on_env = {**base, "ABX_DATA_DIR": f"{folder}/on"}
        path = os.pathsep.join(filter(None, [str(HERE / "no_storable_checks"),
                                             os.environ.get("PYTHONPATH")]))  # fmt: skip
        off_env = {**base, "ABX_DATA_DIR": f"{folder}/off", "PYTHONPATH": path}
        command = [*abx_command(), "serve", "--no-migrate"]
        logs = Path(folder) / "logs"
        with serving("checks", command, on_env, logs, 2) as on, \
                serving("no-checks", command, off_env, logs, 2) as off:  # fmt: skip
            for endpoint in ("/v1/assign", "/v1/events"):  # warm-up
                _drive(on.port, endpoint, "warm-on", args.connections, 2.0)
                _drive(off.port, endpoint, "warm-off", args.connections, 2.0)
            for endpoint in ("/v1/assign", "/v1/events"):
                with_checks, without, ratios = [], [], []
                cpu: dict[str, list[float]] = {on.name: [], off.name: []}
                cpu_ratios = []
                for number in range(args.rounds):
                    order = [(on, with_checks), (off, without)]
                    for server, rates in order if number % 2 == 0 else order[::-1]:
                        rate, per_request = _measure(server, endpoint, f"{server.name}-{number}",
                                                     args.connections, args.seconds)  # fmt: skip
                        rates.append(rate)
                        cpu[server.name].append(per_request)
                    ratios.append(with_checks[-1] / without[-1])
                    cpu_ratios.append(cpu[off.name][-1] / cpu[on.name][-1])
                unit = "requests/s" + (
                    f" ({EVENTS_PER_REQUEST} events each)" if endpoint == "/v1/events" else ""
                )
                print(
                    f"POST {endpoint}: {statistics.median(with_checks):,.1f} {unit} with the"
                    f" checks, {statistics.median(without):,.1f} without; ratio (median of"
                    f" rounds) {statistics.median(ratios):.3f}; rounds:"
                    f" {', '.join(f'{r:.3f}' for r in ratios)}",
                    flush=True,
                )
                print(
                    f"  server CPU per request: {statistics.median(cpu[on.name]) * 1e3:.3f} ms"
                    f" with the checks, {statistics.median(cpu[off.name]) * 1e3:.3f} ms without;"
                    f" ratio without/with (median of rounds) {statistics.median(cpu_ratios):.3f};"
                    f" rounds: {', '.join(f'{r:.3f}' for r in cpu_ratios)}",
                    flush=True,
                )
    print(f"load after: {load_average()}")


if __name__ == "__main__":
    main()
