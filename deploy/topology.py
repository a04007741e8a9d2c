"""abx as it is deployed, on one machine: HAProxy in front of several `abx serve` replicas,
Celery workers and one scheduler, on one PostgreSQL and one broker.

Each replica is a separate gunicorn with its own port, metrics bind, spool folder and copy
of the experiments (so a YAML change can reach the replicas one at a time, as a rollout
does). HAProxy health-checks `/readyz`, drains a replica before it is stopped (what a
Kubernetes preStop hook and endpoint removal do) and retries a request whose connection
failed on another replica; every abx write is idempotent (events carry ids, assignments are
sticky), so such a retry is safe.

`scripts/topology` starts it for a person; `tests/deploy/test_topology.py` drives it through
rolling restarts, a SIGKILLed replica, a weight rollout and a migration under traffic;
`benchmarks/topology.py` measures it. Needs `haproxy` on PATH (Debian's package).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (requests.RequestException, OSError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} after {timeout:.0f} s")


@dataclass
class Replica:
    name: str
    port: int
    folder: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def experiments(self) -> Path:
        return self.folder / "experiments"

    def ready(self) -> bool:
        return requests.get(self.url + "/readyz", timeout=1).status_code == 200


@dataclass
class Topology:
    """The processes, started by ``start`` and stopped by ``stop`` (or the context manager)."""

    root: Path
    database_url: str
    broker_url: str
    experiments: Path
    models: Path
    replicas: int = 3
    gunicorn_workers: int = 2
    celery_workers: int = 2
    scheduler: bool = True
    environment: dict[str, str] = field(default_factory=dict)
    start_seconds: float = 120.0
    port: int = field(default_factory=free_port)
    servers: list[Replica] = field(default_factory=list)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "ABX_DATABASE_URL": self.database_url,
            "ABX_BROKER_URL": self.broker_url,
            "ABX_MODELS": str(self.models),
            "ABX_LOG_FORMAT": "json",
            **self.environment,
            **extra,
        }

    def _spawn(self, name: str, args: list[str], **env: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", *args],
            env=self.env(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            start_new_session=True,  # its own process group: a SIGKILL reaches every worker
        )
        log.close()
        return process

    # --- replicas ------------------------------------------------------------------------

    def start_replica(self, replica: Replica) -> None:
        replica.process = self._spawn(
            replica.name,
            ["serve", "--no-migrate"],
            ABX_BIND=f"127.0.0.1:{replica.port}",
            ABX_METRICS_BIND=f"127.0.0.1:{free_port()}",
            ABX_WORKERS=str(self.gunicorn_workers),
            ABX_EXPERIMENTS=str(replica.experiments),
            ABX_DATA_DIR=str(replica.folder / "data"),
        )
        wait_until(replica.ready, self.start_seconds, f"{replica.name} not ready")

    def stop_replica(self, replica: Replica, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Stop one replica: SIGTERM drains it (gunicorn's graceful stop, then the writers'
        flush); SIGKILL kills the whole process group at once."""
        process = replica.process
        assert process is not None
        if sig == signal.SIGKILL:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.send_signal(sig)
        code = process.wait(timeout)
        replica.process = None
        return code

    def haproxy(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(self.root / "haproxy.sock"))
            sock.sendall(command.encode() + b"\n")
            return b"".join(iter(lambda: sock.recv(4096), b"")).decode()

    def stat(self, replica: Replica) -> dict[str, str]:
        """The replica's row of HAProxy's `show stat` (status, scur, ...)."""
        header, *rows = self.haproxy("show stat").splitlines()
        names = header.lstrip("# ").split(",")
        for row in rows:
            values = dict(zip(names, row.split(","), strict=False))
            if values.get("pxname") == "replicas" and values.get("svname") == replica.name:
                return values
        raise KeyError(replica.name)

    def restart_replica(self, replica: Replica, sig: int = signal.SIGTERM) -> None:
        """Take a replica out of the balancer, stop it with ``sig``, start it, and put it back
        once its /readyz says so: one step of a rolling restart."""
        self.haproxy(f"set server replicas/{replica.name} state drain")
        # In-flight requests finish on it; new ones go elsewhere. Wait for its sessions to end.
        wait_until(lambda: self.stat(replica)["scur"] == "0", 30, f"{replica.name} did not drain")
        self.stop_replica(replica, sig)
        self.start_replica(replica)
        self.haproxy(f"set server replicas/{replica.name} state ready")
        wait_until(
            lambda: self.stat(replica)["status"] == "UP", 30, f"{replica.name} not up in haproxy"
        )

    def rolling_restart(self) -> None:
        for replica in self.servers:
            self.restart_replica(replica)

    # --- the whole ---------------------------------------------------------------------------

    def _haproxy_config(self) -> str:
        servers = "\n".join(f"  server {r.name} 127.0.0.1:{r.port} check" for r in self.servers)
        return f"""global
  stats socket {self.root / "haproxy.sock"} mode 600 level admin
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  timeout http-request 10s
  timeout queue 10s
  # A request whose connection failed (a replica stopping or killed) goes to another one.
  # Only failures before a response are retried: every abx write is idempotent anyway.
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response
  option http-server-close
  # The whole request is read here before a replica sees it: a client that sends its headers
  # or body slowly holds a cheap HAProxy connection, never a gunicorn thread, and is cut
  # with 408 after `timeout http-request`.
  option http-buffer-request
frontend abx
  bind 127.0.0.1:{self.port}
  default_backend replicas
backend replicas
  balance roundrobin
  option httpchk GET /readyz
  http-check expect status 200
  default-server inter 500ms fall 2 rise 1
{servers}
"""

    def start(self) -> Topology:
        if shutil.which("haproxy") is None:
            raise RuntimeError("haproxy not found: apt-get install haproxy")
        self.root.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, "-m", "service.cli", "migrate"],
            env=self.env(), cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
        for i in range(self.replicas):
            replica = Replica(f"r{i}", free_port(), self.root / f"r{i}")
            shutil.copytree(self.experiments, replica.experiments, dirs_exist_ok=True)
            self.servers.append(replica)
        threads = [threading.Thread(target=self.start_replica, args=(r,)) for r in self.servers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        missing = [
            r.name for r in self.servers if r.process is None or r.process.poll() is not None
        ]
        if missing:
            raise RuntimeError(f"replicas that did not start: {missing} (logs in {self.root})")
        config = self.root / "haproxy.cfg"
        config.write_text(self._haproxy_config())
        log = (self.root / "haproxy.log").open("ab")
        self.processes["haproxy"] = subprocess.Popen(
            ["haproxy", "-f", str(config), "-db"], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        wait_until(
            lambda: requests.get(self.url + "/healthz", timeout=1).status_code == 200,
            30,
            "haproxy did not answer",
        )
        for i in range(self.celery_workers):
            self.processes[f"worker{i}"] = self._spawn(
                f"worker{i}", ["worker", "--concurrency", "1"],
                ABX_EXPERIMENTS=str(self.servers[0].experiments),
                ABX_WORKER_METRICS_BIND=f"127.0.0.1:{free_port()}",
                ABX_DATA_DIR=str(self.root / f"worker{i}"),
            )  # fmt: skip
        if not self.scheduler:
            return self
        self.processes["scheduler"] = self._spawn(
            "scheduler", ["worker", "--beat", "--concurrency", "1"],
            ABX_EXPERIMENTS=str(self.servers[0].experiments),
            ABX_WORKER_METRICS_BIND=f"127.0.0.1:{free_port()}",
            ABX_DATA_DIR=str(self.root / "scheduler"),
        )  # fmt: skip
        return self

    def stop(self) -> None:
        for replica in self.servers:
            if replica.process is not None and replica.process.poll() is None:
                self.stop_replica(replica)
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(process.pid).children(recursive=True):
                    child.kill()
                process.kill()
                process.wait()

    def __enter__(self) -> Topology:
        try:
            return self.start()
        except BaseException:
            self.stop()  # what did start is stopped: a failed start leaks no process
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- traffic --------------------------------------------------------------------------------

US_APP = {"country": "US", "app_version": "2.1.0"}
FEATURES = [[float((i % 7) - 2) for i in range(20)]]


@dataclass
class Traffic:
    """Mixed traffic through the balancer: assign, predict and events on checkout_ranker.

    Records what a client would check afterwards: every acknowledged event id, the variant
    each unit was given, and every failure (a status other than the expected one, or an
    exception), with when it happened.
    """

    url: str
    token: str | None
    threads: int = 2
    units: int = 500
    experiment: str = "checkout_ranker"
    acknowledged: set[str] = field(default_factory=set)
    variants: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    failures: list[tuple[str, str, str]] = field(default_factory=list)
    """(phase, path, what) of each request that failed even after its one retry."""
    retried: list[tuple[str, str, str]] = field(default_factory=list)
    """(phase, path, what) of each first try that failed before any answer came back."""
    phase: str = "start"
    requests_sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _call(self, session: requests.Session, path: str, body: dict[str, Any], ok: int) -> Any:
        """POST, retried once when no answer came back: every abx write is idempotent (event
        ids, sticky assignments), so a client may, and abx's SDK does."""
        for attempt in (1, 2):
            try:
                response = session.post(self.url + path, json=body, timeout=15)
                break
            except requests.RequestException as error:
                with self._lock:
                    (self.retried if attempt == 1 else self.failures).append(
                        (self.phase, path, type(error).__name__)
                    )
        else:
            return None
        with self._lock:
            self.requests_sent += 1
            if response.status_code != ok:
                self.failures.append(
                    (self.phase, path, f"{response.status_code} {response.text[:200]}")
                )
                return None
        return response.json()

    def _run(self, index: int) -> None:
        session = requests.Session()
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        n = 0
        while not self._stop.is_set():
            n += 1
            unit = f"unit-{(n * 7919 + index) % self.units}"
            path = "/v1/predict" if n % 3 == 0 else "/v1/assign"
            body: dict[str, Any] = {
                "experiment": self.experiment,
                "unit": unit,
                "attributes": US_APP,
            }
            if path == "/v1/predict":
                body["inputs"] = {"features": FEATURES}
            answer = self._call(session, path, body, 200)
            if answer and answer.get("in_experiment") and answer.get("reason") != "forced":
                with self._lock:
                    self.variants[unit].add(answer["variant"])
            if n % 2 == 0:
                ids = [f"{index}-{n}-{uuid.uuid4().hex[:8]}-{k}" for k in range(3)]
                events = [
                    {"event_id": event_id, "experiment": self.experiment, "unit": unit,
                     "metric": "checkout_conversion", "value": k == 0}
                    for k, event_id in enumerate(ids)
                ]  # fmt: skip
                if self._call(session, "/v1/events", {"events": events}, 202) is not None:
                    with self._lock:
                        self.acknowledged.update(ids)

    def start(self) -> Traffic:
        for i in range(self.threads):
            thread = threading.Thread(target=self._run, args=(i,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(30)

    def units_with_two_variants(self) -> dict[str, set[str]]:
        with self._lock:
            return {unit: set(v) for unit, v in self.variants.items() if len(v) > 1}


def create_key(database_url: str, name: str = "topology") -> str:
    """An all-scopes key, made with `abx keys create` as an operator would."""
    from service.access.scopes import SCOPES

    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "keys", "create", "--name", name,
         "--scopes", ",".join(SCOPES)],
        env={**os.environ, "ABX_DATABASE_URL": database_url}, cwd=ROOT,
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return next(word for word in out.split() if word.startswith("abx_live_"))


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="Celery workers")
    parser.add_argument("--folder", type=Path, default=ROOT / ".abx" / "topology")
    args = parser.parse_args()
    from service.demo.models import build_demo_models

    models = ROOT / "experiments" / "models"
    build_demo_models(models)
    database = os.environ.get("ABX_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    broker = os.environ.get("ABX_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
    topology = Topology(
        args.folder, database, broker, ROOT / "experiments", models,
        replicas=args.replicas, celery_workers=args.workers,
    )  # fmt: skip
    with topology:
        token = create_key(database)
        print(f"abx behind haproxy: {topology.url}  (logs in {args.folder})")
        print(f"an all-scopes key for trying it: {token}")
        for replica in topology.servers:
            print(f"  replica {replica.name}: {replica.url}")
        print("Ctrl-C stops everything (each replica drains first).")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
