"""The SDK once its server has gone away: the application's calls stay local and cheap.

A real HTTP server (the standard library's) publishes a snapshot and is then shut down, so
every request of the SDK's threads is refused, as with a stopped ``abx serve``.
"""

from __future__ import annotations

import gc
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from abx_client import Client
from abx_client._memory import UnitMemory, memory_key
from abx_client.client import _exposure_body

SNAPSHOT = {
    "version": "v1",
    "experiments": {
        "e": {
            "key": "e", "status": "running", "seed": "e.v1", "hashing_version": 1,
            "control": "a", "variants": [{"key": "a", "weight": 0.5}, {"key": "b", "weight": 0.5}],
            "coverage": 1.0, "layer": None, "targeting": None, "forced": {}, "metrics": ["m"],
            "segments": ["country", "platform"],
            "allocation": {"earlier_weights": [], "pending_weights": None, "moved_ranges": []},
            "decision": {"state": "running", "winner": None, "rolled_back": [], "stopped": None,
                         "coverage_cap": None},
        }
    },
}  # fmt: skip


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/v1/sdk/config":
            self.send_error(404)  # no stream: the SDK polls
            return
        body = json.dumps(getattr(self.server, "snapshot", SNAPSHOT)).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("ETag", '"v1"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _Accepting(_Handler):
    """Also accepts every batch (``{}``, as ``POST /v1/sdk/exposures`` answers a new one)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")


class _Server:
    """A server that publishes ``SNAPSHOT`` until ``stop()``; refused connections after."""

    def __init__(
        self,
        port: int = 0,
        snapshot: dict[str, Any] | None = None,
        handler: type[BaseHTTPRequestHandler] = _Handler,
    ) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._server.snapshot = snapshot or SNAPSHOT  # type: ignore[attr-defined]
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self._stopped = False

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture
def server() -> Iterator[_Server]:
    running = _Server()
    try:
        yield running
    finally:
        running.stop()


def _thread_stat(name: str) -> tuple[int, int]:
    """(voluntary context switches, CPU nanoseconds) of this process's thread ``name``."""
    (thread,) = [t for t in threading.enumerate() if t.name == name]
    task = Path(f"/proc/self/task/{thread.native_id}")
    switches = next(
        int(line.split()[1])
        for line in (task / "status").read_text().splitlines()
        if line.startswith("voluntary_ctxt_switches")
    )
    return switches, int((task / "schedstat").read_text().split()[0])


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads Linux's /proc")
def test_a_gone_server_costs_the_application_no_background_work(server: _Server) -> None:
    with Client(
        server.url, None, close_timeout=0.5, batch_size=50, max_queue=1000, timeout=0.5
    ) as client:
        assert client.wait_ready(5)
        server.stop()
        for index in range(200):  # a full batch is due; sending it fails: backoff
            client.assign("e", f"before-{index}")
        deadline = time.monotonic() + 10
        while "batch_failures" not in client.stats() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.stats()["batch_failures"] >= 1

        switches, cpu = _thread_stat("abx-client-flush")
        started = time.monotonic()
        answers = [client.assign("e", f"after-{index}") for index in range(20_000)]
        elapsed = time.monotonic() - started
        switches_after, cpu_after = _thread_stat("abx-client-flush")

        assert {(a.reason, a.source) for a in answers} == {("hashed", "local")}
        # The flusher wakes every flush_interval (0.5 s) or for a retry, not per queued item
        # (an earlier version woke for each of the 20,000: thousands of switches).
        assert switches_after - switches <= 2 * (elapsed / 0.5) + 10
        assert cpu_after - cpu < 50e6  # under 50 ms of CPU in all
        stats = client.stats()
        assert stats["exposures_queued"] == 1000 and stats["exposures_dropped"] > 19_000
        # A refused stream is not followed by a poll that must fail the same way.
        assert stats["stream_failures"] >= 1 and "poll_failures" not in stats


def test_the_memory_of_exposed_units_keeps_the_newest(server: _Server) -> None:
    with Client(server.url, None, close_timeout=0.5, memory_size=100, timeout=0.5) as client:
        assert client.wait_ready(5)
        server.stop()
        for index in range(150):
            client.assign("e", f"u{index}")
        queued = client.stats()["exposures_queued"]
        client.assign("e", "u149")  # remembered: not queued again
        assert client.stats()["exposures_queued"] == queued
        client.assign("e", "u0")  # forgotten (the oldest of 150 beyond 100): queued again
        assert client.stats()["exposures_queued"] == queued + 1


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads Linux's /proc")
def test_events_tracked_before_any_snapshot_do_not_spin_the_flusher() -> None:
    # Nothing listens: no snapshot ever comes, so events cannot be sent (they name their
    # experiments from it) and wait in the queue.
    with Client(
        "http://127.0.0.1:9", None, batch_size=50, timeout=0.2, close_timeout=0.2
    ) as client:
        client.track("u0", "m", 1.0)  # starts the threads
        switches, _ = _thread_stat("abx-client-flush")
        started = time.monotonic()
        for index in range(20_000):
            client.track(f"u{index}", "m", 1.0)
        elapsed = time.monotonic() - started
        switches_after, _ = _thread_stat("abx-client-flush")
        assert switches_after - switches <= 2 * (elapsed / 0.5) + 10
        assert client.stats()["events_queued"] == 10_000  # max_queue; the rest dropped, counted
        assert client.stats()["events_dropped"] == 10_001


def test_assigning_leaves_the_garbage_collector_nothing_to_walk(server: _Server) -> None:
    # With the memory and the queue full, each call adds an entry and drops one. Tracked
    # entries (tuple keys, nested attribute dicts) then pile up in the young generation, whose
    # count hardly moves, until one collection walks them all: milliseconds in one call
    # (abx_client/_memory.py). Counted, not timed: objects the collector tracks.
    with Client(
        server.url, None, close_timeout=0.5, memory_size=10_000, max_queue=500, timeout=0.5
    ) as client:
        assert client.wait_ready(5)
        server.stop()
        for index in range(12_000):
            client.assign("e", f"warm-{index}", {"country": "US", "platform": "ios"})
        deadline = time.monotonic() + 10  # the flusher holds its failed batch, takes no more
        while "batch_failures" not in client.stats() and time.monotonic() < deadline:
            time.sleep(0.05)
        gc.collect()
        gc.disable()
        try:
            before = len(gc.get_objects())
            for index in range(20_000):
                client.assign("e", f"u{index}", {"country": "US", "platform": "ios", "x": [1]})
            grown = len(gc.get_objects()) - before
        finally:
            gc.enable()
        # Before: a tracked key per remembered unit (10,000) and a tracked dict per queued
        # exposure (500); the SDK's threads may add a few.
        assert grown < 2_000
        (item,) = [i for i in client._exposures.take(500) if i["unit"] == "u19999"]
        assert not gc.is_tracked(item)
        body = _exposure_body(item)
        assert body["attributes"] == {"country": "US", "platform": "ios"}
        assert {k: body[k] for k in ("experiment", "unit", "seed", "variant")} == {
            "experiment": "e",
            "unit": "u19999",
            "seed": "e.v1",
            "variant": body["variant"],
        }


def test_the_sdks_requests_leave_no_reference_cycles() -> None:
    # httpx gives every response a cycle (response.stream refers back to it) of ~46 objects,
    # which only a collection frees, in whatever thread triggers it: often the application's
    # (client._released). Counted, not timed: what the collector finds unreachable.
    server = _Server(handler=_Accepting)
    try:
        with Client(server.url, None, stream=False, batch_size=10, flush_interval=60) as client:
            assert client.wait_ready(5)
            gc.collect()
            gc.disable()
            try:
                for batch in range(20):
                    for index in range(10):
                        client.assign("e", f"u{batch}-{index}")
                    assert client.flush(5)
                unreachable = gc.collect()
            finally:
                gc.enable()
            stats = client.stats()
    finally:
        server.stop()
    assert stats["exposures_sent"] == 200 and stats["batches_sent"] >= 20
    assert "batch_failures" not in stats
    # Before: at least 20 x 46 (one cycle a batch, more with polls); the server's own
    # threads, in this process too, may leave a few.
    assert unreachable < 200


def test_the_unit_memory_keeps_the_newest_within_its_size() -> None:
    memory = UnitMemory(5_000, threading.Lock())
    for index in range(20_000):
        memory.put(f"k{index}", "e", "a")
        memory.put(f"k{index}", "f", "b")  # a second experiment: the same unit's entry
    assert len(memory) <= 5_000
    assert memory.get("k0", "e") is None
    # A shard (at most 512 units) forgets its own oldest first: the newest 500 are all kept,
    # and almost all of the newest 5,000.
    newest = range(19_500, 20_000)
    assert all((memory.get(f"k{i}", "e"), memory.get(f"k{i}", "f")) == ("a", "b") for i in newest)
    assert sum(memory.get(f"k{index}", "e") == "a" for index in range(15_000, 20_000)) > 4_500
    assert memory.get("k19999", "g") is None
    small = UnitMemory(100, threading.Lock())  # one shard: exactly the newest 100
    for index in range(150):
        small.put(f"k{index}", "e", "a")
    assert [small.get(f"k{index}", "e") for index in (49, 50, 149)] == [None, "a", "a"]
    assert memory_key("ab", "c") != memory_key("a", "bc")


def test_a_stale_snapshot_gives_new_units_the_control_until_the_server_is_heard_again() -> None:
    # The server publishes a settle time of 0.6 s; no stream, so the SDK polls (every 0.2 s).
    snapshot = {**SNAPSHOT, "allocation_settle_seconds": 0.6}
    server = _Server(snapshot=snapshot)
    guarded = Client(server.url, None, stale_policy="control", close_timeout=0.2, timeout=0.5)
    available = Client(server.url, None, close_timeout=0.2, timeout=0.5)
    try:
        assert guarded.wait_ready(5) and available.wait_ready(5)
        time.sleep(1.0)  # longer than the settle time, but polls keep renewing the lease
        assert not guarded.stale
        assert guarded.assign("e", "known").reason == "hashed"
        server.stop()
        assert _wait(lambda: guarded.stale and available.stale)
        stale = guarded.assign("e", "new", {"country": "US"})
        assert (stale.variant, stale.reason, stale.source) == ("a", "sdk-stale", "sdk")
        assert guarded.stats()["sdk-stale"] == 1
        assert guarded.assign("e", "known").reason == "hashed"  # its exposure is queued already
        queued = guarded.stats()["exposures_queued"]
        guarded.assign("e", "new-2")
        assert guarded.stats()["exposures_queued"] == queued  # no exposure for sdk-stale
        assert available.assign("e", "new").reason == "hashed"  # "serve": availability first

        server = _Server(server.port, snapshot)  # back on the same port: heard, lease renewed
        assert _wait(lambda: not guarded.stale)
        assert guarded.assign("e", "new").reason == "hashed"
    finally:
        guarded.close()
        available.close()
        server.stop()
    with pytest.raises(ValueError, match="stale_policy"):
        Client(server.url, None, stale_policy="refuse")  # type: ignore[arg-type]


def test_a_server_that_publishes_no_settle_time_never_makes_the_snapshot_stale(
    server: _Server,
) -> None:
    with Client(server.url, None, stale_policy="control", close_timeout=0.2) as client:
        assert client.wait_ready(5)
        server.stop()
        time.sleep(0.5)
        assert not client.stale and client.assign("e", "u").reason == "hashed"


def _wait(condition: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_an_unknown_stale_policy_is_refused_at_construction() -> None:
    with pytest.raises(ValueError, match="stale_policy must be 'serve' or 'control'"):
        Client("http://127.0.0.1:9", "k", stale_policy="later")  # type: ignore[arg-type]
