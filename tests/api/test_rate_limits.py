"""Rate limits: one count per key and scope shared by both gunicorn workers (on Redis, or on
the memory-mapped file without it), 429 problems with their headers, throttled sign-ins."""

from __future__ import annotations

import multiprocessing
import re
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import psutil
import pytest
import requests

from service.access.counters import PROBES, SharedFileStorage
from tests.conftest import Server, ServerFactory, make_key

REDIS = "redis://127.0.0.1:6379/3"


def _hammer(server: Server, token: str, seconds: float, clients: int = 6) -> list[float]:
    """Assign calls from several clients for ``seconds``; the times of the ones served."""
    served: list[float] = []
    refused: Counter[int] = Counter()
    stop = time.monotonic() + seconds
    body = {"experiment": "checkout_ranker", "unit": "u1"}

    def client() -> None:
        session = requests.Session()
        session.headers.update({"X-API-Key": token, "Connection": "close"})
        for _ in range(5000):  # bounded
            if time.monotonic() >= stop:
                break
            answer = session.post(server.base_url + "/v1/assign", json=body, timeout=5)
            if answer.status_code == 200:
                served.append(time.monotonic())
            else:
                refused[answer.status_code] += 1
        session.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert set(refused) <= {429}, refused
    assert refused[429] > 0, "the limit was never reached"
    return served


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


@pytest.mark.parametrize("storage", ["file", "redis"])
def test_a_limit_holds_across_two_workers(
    storage: str, server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    env = {"ABX_REDIS_URL": REDIS} if storage == "redis" else {}
    server = server_factory(db, experiments_dir, **env)
    limit, seconds = 25, 4.0
    token = make_key(
        db, f"limited-{uuid.uuid4().hex[:6]}", ["assign"], rate_limit=f"{limit}/second"
    )
    workers = psutil.Process(server.process.pid).children()
    assert len(workers) == 2
    before = [_cpu(w) for w in workers]
    started = time.monotonic()
    served = _hammer(server, token, seconds)
    elapsed = time.monotonic() - started
    busy = [_cpu(w) - b for w, b in zip(workers, before, strict=True)]
    assert min(busy) > 0.05, f"both workers must have served the load: {busy}"
    # Fixed windows of one second start at the first request: within the run there are at most
    # ceil(elapsed) + 1 windows, each letting `limit` through: one window's tolerance.
    windows = int(elapsed) + 2
    assert len(served) <= limit * windows, (len(served), limit, windows)
    assert len(served) >= limit * int(elapsed) * 0.8, (len(served), elapsed)
    # Per worker, the two together would have let about twice as many through.


def test_over_the_limit_is_a_429_problem_with_its_headers(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    server = server_factory(db, experiments_dir, ABX_RATE_LIMITS='{"assign": "3/minute"}')
    token = make_key(db, "three", ["assign", "experiments:read"])
    own = make_key(db, "own-rate", ["assign"], rate_limit="5/minute")
    body = {"experiment": "checkout_ranker", "unit": "u1"}
    headers = {"X-API-Key": token}
    answers = [requests.post(server.base_url + "/v1/assign", json=body, headers=headers,
                             timeout=5) for _ in range(4)]  # fmt: skip
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    over = answers[-1]
    assert over.headers["Content-Type"].startswith("application/problem+json")
    problem = over.json()
    assert problem["status"] == 429 and "per 60 s from this key" in problem["detail"]
    retry = int(over.headers["Retry-After"])
    assert 1 <= retry <= 60 and over.headers["RateLimit-Reset"] == str(retry)
    assert over.headers["RateLimit-Limit"] == "3" and over.headers["RateLimit-Remaining"] == "0"
    assert over.headers["RateLimit-Policy"] == "3;w=60"
    # Another scope of the same key has its own count; a key's own rate replaces the scope's.
    assert requests.get(server.base_url + "/v1/experiments", headers=headers, timeout=5).ok
    statuses = [requests.post(server.base_url + "/v1/assign", json=body, timeout=5,
                              headers={"X-API-Key": own}).status_code for _ in range(6)]  # fmt: skip
    assert statuses == [200] * 5 + [429]


def test_requests_without_a_valid_key_are_limited_per_client(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    server = server_factory(db, experiments_dir, ABX_RATE_LIMIT_UNAUTHENTICATED="10/minute")
    body = {"experiment": "checkout_ranker", "unit": "u1"}
    statuses = Counter(
        requests.post(server.base_url + "/v1/assign", json=body, timeout=5,
                      headers={"X-API-Key": f"abx_live_{i:012x}_{'y' * 43}"}).status_code
        for i in range(30)
    )  # fmt: skip
    assert statuses == Counter({401: 10, 429: 20})
    good = requests.post(server.base_url + "/v1/assign", json=body, timeout=5,
                         headers={"X-API-Key": server.key or ""})  # fmt: skip
    assert good.status_code == 200  # a valid key is counted on its own
    assert requests.get(server.base_url + "/healthz", timeout=5).status_code == 200


def _sign_in(session: requests.Session, base: str, key: str) -> requests.Response:
    form = session.get(base + "/dashboards/login", timeout=5).text
    match = re.search(r'name="csrf_token" value="([^"]+)"', form)
    assert match is not None
    return session.post(base + "/dashboards/login", timeout=5, allow_redirects=False,
                        data={"key": key, "csrf_token": match.group(1)})  # fmt: skip


def test_failed_sign_ins_are_throttled_per_client(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    server = server_factory(db, experiments_dir, ABX_RATE_LIMIT_SIGN_IN="3/minute")
    analyst = make_key(db, "analyst", ["dashboards:read"])
    browser = requests.Session()
    assert _sign_in(browser, server.base_url, analyst).status_code == 303  # successes are free
    assert _sign_in(browser, server.base_url, analyst).status_code == 303
    failures = [_sign_in(browser, server.base_url, "abx_live_" + "0" * 12 + "_" + "z" * 43)
                for _ in range(4)]  # fmt: skip
    assert [f.status_code for f in failures] == [401, 401, 401, 429]
    assert int(failures[-1].headers["Retry-After"]) >= 1
    assert _sign_in(browser, server.base_url, analyst).status_code == 429  # until the window ends


def test_limits_fail_open_when_redis_is_away(
    server_factory: ServerFactory, db: str, experiments_dir: Path
) -> None:
    server = server_factory(db, experiments_dir, ABX_REDIS_URL="redis://127.0.0.1:1/0")
    token = make_key(db, "no-redis", ["assign"], rate_limit="2/minute")
    body = {"experiment": "checkout_ranker", "unit": "u1"}
    statuses = [requests.post(server.base_url + "/v1/assign", json=body, timeout=5,
                              headers={"X-API-Key": token}).status_code for _ in range(3)]  # fmt: skip
    # Counted in each worker's memory meanwhile: never a 5xx, and still limited per worker.
    assert set(statuses) <= {200, 429} and statuses[0] == 200
    assert "Rate limit storage unreachable" in server.log()


def _count(path: str, key: str, times: int) -> None:
    storage = SharedFileStorage(f"abx+file://{path}")
    for _ in range(times):
        storage.incr(key, 60)


def test_the_shared_file_counts_exactly_across_processes(tmp_path: Path) -> None:
    path = str(tmp_path / "counters.bin")
    context = multiprocessing.get_context("fork")
    processes = [context.Process(target=_count, args=(path, "k", 500)) for _ in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    storage = SharedFileStorage(f"abx+file://{path}")
    assert storage.get("k") == 2000 and storage.get("other") == 0
    assert time.time() < storage.get_expiry("k") <= time.time() + 60
    assert storage.incr("short", 1) == 1 and storage.incr("short", 1) == 2
    time.sleep(1.05)
    assert storage.get("short") == 0 and storage.incr("short", 1) == 1  # a new window
    storage.clear("k")
    assert storage.get("k") == 0 and storage.check()
    storage.reset()
    assert storage.get("short") == 0


def test_the_shared_file_stays_bounded_when_full(tmp_path: Path) -> None:
    """More live windows than slots: the soonest-ending is reused, nothing grows or fails."""
    import service.access.counters as counters

    original = counters.SLOTS
    counters.SLOTS = 64
    try:
        storage = SharedFileStorage(f"abx+file://{tmp_path / 'small.bin'}")
        size = (tmp_path / "small.bin").stat().st_size
        for i in range(1000):
            assert storage.incr(f"key-{i}", 60) == 1
        assert storage.incr("key-999", 60) == 2  # the newest windows are kept
        assert (tmp_path / "small.bin").stat().st_size == size
        assert PROBES <= 64
    finally:
        counters.SLOTS = original
