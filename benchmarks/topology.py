"""Throughput and p99 of abx with 1, 2 and 3 replicas behind HAProxy, one PostgreSQL, and
what the balancer itself costs (one replica reached directly and through HAProxy).

The topology is ``deploy/topology.py``'s (each replica its own ``abx serve`` with the
machine's default worker count, no Celery processes: they would only add noise). For each
layout, in the same run: ``POST /v1/assign`` with a new unit per request (an assignment and an
exposure written per exposed request) and ``POST /v1/events`` with 10 new events per request
(group commits), each driven by ``wrk`` for ``--duration`` seconds after a warm-up. Reported:
requests/s, p50/p99, errors, the ratios against one replica reached directly, and each
process's resident memory. Auth is off (``benchmarks/access.py`` measures its cost).

On a machine with fewer cores than replicas, more replicas cannot add throughput: the figures
then show what coordination between them costs, not how abx scales (docs/scaling.md).

Run: ``python benchmarks/topology.py [--duration 10] [--connections 32]``; needs ``haproxy``
and ``wrk`` (Debian's packages), PostgreSQL (``ABX_TEST_DATABASE_URL`` or the local one).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from common import (
    ROOT,
    WrkRun,
    bench_database,
    children_of,
    code_version,
    load_average,
    print_header,
    rss_mib,
    run_wrk,
    wait_for_quiet,
    write_wrk_script,
)

from deploy.topology import Topology
from service.demo.models import build_demo_models

ASSIGN = r"""
local headers = {["Content-Type"] = "application/json"}
function request()
  counter = counter + 1
  local body = string.format(
    '{"experiment":"checkout_ranker","unit":"%s-%d-%d","attributes":{"country":"US","app_version":"2.1.0"}}',
    run_id, thread_id, counter)
  return wrk.format("POST", "/v1/assign", headers, body)
end
"""

EVENTS = r"""
local headers = {["Content-Type"] = "application/json"}
function request()
  counter = counter + 1
  local events = {}
  for k = 1, 10 do
    events[k] = string.format(
      '{"event_id":"%s-%d-%d-%d","experiment":"checkout_ranker","unit":"u%d","metric":"checkout_conversion","value":true}',
      run_id, thread_id, counter, k, counter % 1000)
  end
  return wrk.format("POST", "/v1/events", headers, '{"events":[' .. table.concat(events, ",") .. ']}')
end
"""


def measure(
    wrk: str, script: Path, url: str, connections: int, duration: float, run: str
) -> WrkRun:
    env = {"ABX_BENCH_RUN": run}
    run_wrk(wrk, script, url, connections, 2, 3, env | {"ABX_BENCH_RUN": run + "w"})  # warm-up
    return run_wrk(wrk, script, url, connections, 2, duration, env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--database-url")
    args = parser.parse_args()
    wrk = shutil.which("wrk")
    if wrk is None or shutil.which("haproxy") is None:
        raise SystemExit("needs wrk and haproxy: apt-get install wrk haproxy")
    models = ROOT / "experiments" / "models"
    build_demo_models(models)
    print_header(f"abx topology benchmark, {code_version()}")
    rows: list[tuple[str, str, WrkRun]] = []
    memory: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        scripts = {
            "assign": write_wrk_script(folder / "assign.lua", ASSIGN),
            "events": write_wrk_script(folder / "events.lua", EVENTS),
        }
        experiments = folder / "experiments"
        experiments.mkdir()
        shutil.copy(ROOT / "experiments" / "checkout_ranker.yaml", experiments)
        with bench_database(args.database_url) as database:
            for replicas in args.replicas:
                topology = Topology(
                    folder / f"topology-{replicas}", database, "memory://", experiments, models,
                    replicas=replicas, gunicorn_workers=2, celery_workers=0, scheduler=False,
                    environment={"ABX_AUTH": "off"},
                )  # fmt: skip
                with topology:
                    targets = {f"{replicas} behind haproxy": topology.url}
                    if replicas == 1:
                        targets = {"1 direct": topology.servers[0].url, **targets}
                    for name, url in targets.items():
                        for kind, script in scripts.items():
                            wait_for_quiet()
                            run = measure(wrk, script, url, args.connections, args.duration,
                                          f"{name.replace(' ', '')}-{kind}")  # fmt: skip
                            rows.append((name, kind, run))
                    for replica in topology.servers:
                        assert replica.process is not None
                        pids = [replica.process.pid, *children_of(replica.process.pid)]
                        memory[f"{replicas}x {replica.name} (master + workers)"] = sum(
                            rss_mib(pid) for pid in pids
                        )
                    memory[f"{replicas}x haproxy"] = rss_mib(topology.processes["haproxy"].pid)
    print(f"load average at the end: {load_average()}")
    print(f"\n{'layout':<20} {'kind':<7} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'vs 1 direct':>11}")  # fmt: skip
    base = {kind: run for name, kind, run in rows if name == "1 direct"}
    for name, kind, run in rows:
        ratio = run.requests_per_second / base[kind].requests_per_second if kind in base else 0
        print(f"{name:<20} {kind:<7} {run.requests_per_second:>8,.0f} {run.p50_ms:>7.2f} "
              f"{run.p99_ms:>7.2f} {run.errors:>6} {ratio:>10.2f}x")  # fmt: skip
    print("\nresident memory (MiB):")
    for name, mib in memory.items():
        print(f"  {name:<36} {mib:>7.1f}")


if __name__ == "__main__":
    main()
