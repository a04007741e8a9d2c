"""The client: local assignment from a followed snapshot, batched exposures and events, predict.

Three daemon threads do all network work, so the application's calls never wait on it
(beyond the first snapshot, at most ``ready_timeout``, and a moved-range unit's server answer,
at most ``fallback_timeout``):

* the follower keeps the snapshot current: ``GET /v1/sdk/stream`` (server-sent events), else
  conditional polls of ``GET /v1/sdk/config``; the last snapshot stays in force meanwhile;
* the flusher sends queued exposures (``POST /v1/sdk/exposures``) and events
  (``POST /v1/events``) in batches, retrying a failed batch with the same id and backoff;
* the fallback sends the assignments only the server can answer to ``/v1/assign/batch``,
  many callers' units in one request.

Fork-safe: in a child process (gunicorn ``--preload``) the threads and connections are made
anew on first use, the parent's queues are not inherited (the parent sends them), and the
snapshot is kept, so a child is ready at once.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import math
import os
import random
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from abx_client._breaker import CircuitBreaker
from abx_client._memory import UnitMemory
from abx_client._queue import BatchQueue, QueueFull
from abx_client._snapshot import (
    Assignment,
    CompiledExperiment,
    Snapshot,
    evaluate,
    from_stored,
)
from abx_client._version import __version__

Unit = str | int
StalePolicy = Literal["serve", "control"]
log = logging.getLogger("abx_client")
MIN_POLL_SECONDS = 0.1
CLIENT_NAME = f"abx-client-python/{__version__}"
"""Sent with every exposure batch: the server's SRM drill-down names SDK versions."""


@dataclass(frozen=True)
class Prediction:
    """``outputs`` from the server's model, or the caller's default (``from_server`` False)."""

    experiment: str
    variant: str | None
    reason: str
    outputs: Any
    from_server: bool
    fallback: bool = False
    """The server's own fallback: the variant's model failed and the control's answered."""
    error: str | None = None
    """Why the default was returned (timeout, server error, circuit open)."""


class RequestRejected(Exception):
    """The server refused the request itself (a 4xx other than 429): a caller's mistake."""

    def __init__(self, status: int, problem: Mapping[str, Any]) -> None:
        super().__init__(f"{status}: {problem.get('detail', problem)}")
        self.status = status
        self.problem = problem


@dataclass
class _Waiting:
    experiment: str
    unit: str
    attributes: Mapping[str, Any]
    done: threading.Event = field(default_factory=threading.Event)
    answer: Mapping[str, Any] | None = None


@dataclass
class _Batch:
    batch_id: str
    items: list[Any]
    attempts: int = 0
    retry_at: float = 0.0
    body: bytes | None = None
    """The request body, encoded once: a retry sends the same bytes without encoding again."""


_CLIENTS: weakref.WeakSet[Client] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for client in list(_CLIENTS):
        client._forget_parent()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_at_exit(reference: weakref.ref[Client]) -> None:
    client = reference()
    if client is not None:
        client.close()


class Client:
    """An abx client for threaded (WSGI) applications; see docs/sdk.md."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        ready_timeout: float = 1.0,
        timeout: float = 2.0,
        fallback_timeout: float = 0.25,
        predict_timeout: float = 1.0,
        stream: bool = True,
        poll_interval: float = 5.0,
        flush_interval: float = 0.5,
        batch_size: int = 500,
        max_queue: int = 10_000,
        queue_full: QueueFull = "drop-oldest",
        max_backoff: float = 30.0,
        breaker_failures: int = 5,
        breaker_reset_seconds: float = 10.0,
        close_timeout: float = 5.0,
        memory_size: int = 100_000,
        stale_policy: StalePolicy = "serve",
    ) -> None:
        if stale_policy not in ("serve", "control"):
            raise ValueError(f"stale_policy must be 'serve' or 'control', not {stale_policy!r}")
        self.url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._ready_timeout = ready_timeout
        self._timeout = timeout
        self._fallback_timeout = fallback_timeout
        self._predict_timeout = predict_timeout
        self._use_stream = stream
        self._poll_interval = poll_interval
        self._flush_interval = flush_interval
        self._batch_size = max(1, min(batch_size, 1000))
        self._max_backoff = max_backoff
        self._close_timeout = close_timeout
        self._memory_size = memory_size
        self._max_queue, self._queue_full = max_queue, queue_full
        self._breaker_settings = (breaker_failures, breaker_reset_seconds)
        self._stale_control = stale_policy == "control"
        self._snapshot: Snapshot | None = None
        self._heard_at = -math.inf
        """When the follower last heard from the server (monotonic): a snapshot, a 304, any
        line of the stream. The snapshot's lease runs ``settle_seconds`` from then."""
        self._ready = threading.Event()
        self._created = time.monotonic()
        self._closed = False
        self._set_up_process()
        _CLIENTS.add(self)
        atexit.register(_close_at_exit, weakref.ref(self))

    # --- per-process state ------------------------------------------------------------

    def _set_up_process(self) -> None:
        """Everything that must not cross a fork: locks, queues, connections, threads."""
        # The application's calls take only locks that the background threads never hold
        # (``_calls_lock`` for counters and memories, the queues' own): a background thread that
        # holds a lock while it waits for the GIL or a CPU would stall the application.
        self._lock = threading.Lock()
        self._calls_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._call_counts: Counter[str] = Counter()
        self._exposures = BatchQueue(self._max_queue, self._queue_full)
        self._events = BatchQueue(self._max_queue, self._queue_full)
        self._pending: dict[str, _Batch | None] = {"exposures": None, "events": None}
        self._backoff: dict[str, float] = {"exposures": 0.0, "events": 0.0}
        self._exposed = UnitMemory(self._memory_size, self._calls_lock)
        self._stored = UnitMemory(self._memory_size, self._calls_lock)
        self._waiting: list[_Waiting] = []
        self._waiting_ready = threading.Condition(threading.Lock())
        self._wake_flusher = threading.Event()
        self._flush_now = False
        self._stopping = threading.Event()
        self._fallback_breaker = CircuitBreaker(*self._breaker_settings)
        self._predict_breaker = CircuitBreaker(*self._breaker_settings)
        self._http_client: httpx.Client | None = None
        self._stream_response: httpx.Response | None = None
        self._threads: list[threading.Thread] = []
        self._started = False

    def _forget_parent(self) -> None:
        self._set_up_process()
        if self._snapshot is not None:
            self._ready.set()

    def _start(self) -> None:
        with self._lock:
            if self._started or self._closed:
                return
            self._started = True
            for target, name in (
                (self._follow, "abx-client-follow"),
                (self._flush_loop, "abx-client-flush"),
                (self._fallback_loop, "abx-client-fallback"),
            ):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    def _http(self) -> httpx.Client:
        client = self._http_client
        if client is None:
            with self._lock:
                if self._http_client is None:
                    self._http_client = httpx.Client(headers=self._headers, timeout=self._timeout)
                client = self._http_client
        return client

    def _count(self, what: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[what] += amount

    def _count_call(self, what: str) -> None:
        """Count on the application's path, under a lock the background threads never take."""
        with self._calls_lock:
            self._call_counts[what] += 1

    # --- the application's calls ------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._snapshot is not None

    @property
    def version(self) -> str | None:
        """The version (ETag) of the snapshot in force, None before the first."""
        snapshot = self._snapshot
        return snapshot.version if snapshot is not None else None

    @property
    def stale(self) -> bool:
        """True once the server has not been heard from for longer than the snapshot's
        settle time: a weight change this SDK has not seen may have taken effect."""
        snapshot = self._snapshot
        settle = snapshot.settle_seconds if snapshot is not None else None
        return settle is not None and time.monotonic() - self._heard_at > settle

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Wait for the first snapshot (at most ``timeout``); True once there is one."""
        if not self._started:
            self._start()
        return self._ready.wait(timeout)

    def stats(self) -> dict[str, int]:
        """Counters: ``sdk-not-ready``, ``server``, ``sdk-server-unavailable``, ``sdk-stale``,
        ``exposures_dropped``, ``events_dropped``, ``batches_sent``, ``batch_failures``,
        ``predict_default``... (only those that happened)."""
        with self._lock:
            counts = dict(self._counts)
        with self._calls_lock:
            counts.update(self._call_counts)
        counts["exposures_dropped"] = counts.get("exposures_rejected", 0) + self._exposures.dropped
        counts["events_dropped"] = counts.get("events_rejected", 0) + self._events.dropped
        counts["exposures_queued"] = len(self._exposures)
        counts["events_queued"] = len(self._events)
        return counts

    def assign(
        self,
        experiment: str,
        unit: Unit,
        attributes: Mapping[str, Any] | None = None,
        *,
        default: str | None = None,
    ) -> Assignment:
        """The unit's variant, as ``/v1/assign`` would answer; never raises for the server's
        sake. Before any snapshot (after ``ready_timeout``) the answer is ``default`` (your
        control) with reason ``sdk-not-ready``."""
        snapshot = self._snapshot
        if snapshot is None or not self._started:
            snapshot = self._await_snapshot()
            if snapshot is None:
                self._count_call("sdk-not-ready")
                return Assignment(experiment, default, "sdk-not-ready", source="sdk")
        compiled = snapshot.experiments.get(experiment)
        if compiled is None:
            self._count_call("unknown-experiment")
            return Assignment(experiment, default, "unknown-experiment", source="sdk")
        unit_id = unit if isinstance(unit, str) else _unit_text(unit)
        answer = evaluate(compiled, unit_id, attributes or {})
        if answer is None:
            return self._ask_server(compiled, unit_id, attributes or {})
        if answer.in_experiment:
            if self._stale_control:
                refused = self._refuse_stale(snapshot, compiled, unit_id, answer)
                if refused is not None:
                    self._count_call("sdk-stale")
                    return refused
            self._expose(compiled, unit_id, answer.variant, attributes)
        if compiled.holdout is not None and answer.holdout_group is not None:
            # The unit reached the holdout's check: an exposure of the holdout, in its group.
            holdout = compiled.holdout
            self._expose_holdout(
                holdout.key, holdout.seed, holdout.memory_prefix, unit_id, answer.holdout_group
            )
        return answer

    def track(
        self,
        unit: Unit,
        metric: str,
        value: float | bool,
        properties: Mapping[str, Any] | None = None,
        *,
        experiment: str | None = None,
        timestamp: float | None = None,
        event_id: str | None = None,
    ) -> str:
        """Queue an outcome; returns its event id (new unless given: a retry keeps its id).

        Without ``experiment`` the event goes to every experiment whose metrics declare
        ``metric`` (decided when it is sent, from the snapshot then in force).
        """
        if not self._started:
            self._start()
        event_id = event_id or uuid.uuid4().hex
        event: dict[str, Any] = {
            "event_id": event_id,
            "unit": unit if isinstance(unit, str) else _unit_text(unit),
            "metric": metric,
            "value": value,
            "timestamp": time.time() if timestamp is None else timestamp,
        }
        if properties:
            event["properties"] = dict(properties)
        if experiment is not None:
            event["experiment"] = experiment
        self._events.put(event)
        self._wake_if_due("events", self._events)
        return event_id

    def predict(
        self,
        experiment: str,
        unit: Unit,
        attributes: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
        *,
        default: Any = None,
        timeout: float | None = None,
    ) -> Prediction:
        """The variant's model output from ``/v1/predict``; when the server is slow, failing
        or its circuit is open, ``default`` instead: a value, or a callable given the local
        assignment (e.g. to run the control's model in-process)."""
        if not self._predict_breaker.allow():
            return self._predict_default(experiment, unit, attributes, default, "circuit-open")
        body = {
            "experiment": experiment,
            "unit": unit,
            "attributes": dict(attributes or {}),
            "inputs": dict(inputs or {}),
        }
        try:
            response = _released(
                self._http().post(
                    self.url + "/v1/predict", json=body, timeout=timeout or self._predict_timeout
                )
            )
        except httpx.HTTPError as error:
            self._predict_breaker.failure()
            return self._predict_default(
                experiment, unit, attributes, default, type(error).__name__
            )
        if response.status_code == 429 or response.status_code >= 500:
            self._predict_breaker.failure()
            return self._predict_default(
                experiment, unit, attributes, default, f"status {response.status_code}"
            )
        if response.status_code >= 400:
            self._predict_breaker.success()  # the server answered: our request was wrong
            raise RequestRejected(response.status_code, _problem(response))
        self._predict_breaker.success()
        answer = response.json()
        return Prediction(
            experiment,
            answer["variant"],
            answer["reason"],
            answer["outputs"],
            True,
            bool(answer.get("fallback", False)),
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Send everything queued now (at most ``timeout``); True if nothing is left."""
        deadline = time.monotonic() + (self._close_timeout if timeout is None else timeout)
        while time.monotonic() < deadline:
            sent = self._flush_once(force=True)
            if not self._has_work():
                return True
            if not sent:
                time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return not self._has_work()

    def close(self) -> None:
        """Flush what is queued (at most ``close_timeout``), then stop. Called at exit too."""
        if self._closed:
            return
        if self._started:
            self.flush(self._close_timeout)
        self._closed = True
        self._stopping.set()
        self._wake_flusher.set()
        with self._waiting_ready:
            self._waiting_ready.notify_all()
        response = self._stream_response
        if response is not None:
            with contextlib.suppress(Exception):  # the follower may be reading it
                response.close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(0.5)
        if self._http_client is not None:
            self._http_client.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- assignment internals ---------------------------------------------------------

    def _await_snapshot(self) -> Snapshot | None:
        if not self._started:
            self._start()
        remaining = self._created + self._ready_timeout - time.monotonic()
        if remaining > 0:
            self._ready.wait(remaining)
        return self._snapshot

    def _refuse_stale(
        self, snapshot: Snapshot, compiled: CompiledExperiment, unit: str, answer: Assignment
    ) -> Assignment | None:
        """The control (reason ``sdk-stale``) when ``stale_policy="control"`` withholds this
        hashed answer: the lease has run out (``stale``) and the unit is new to this process.
        A unit whose exposure this process already queued keeps its answer: repeating it adds
        no second variant."""
        settle = snapshot.settle_seconds
        if settle is None or time.monotonic() - self._heard_at <= settle:
            return None
        if self._exposed.get(unit, compiled.memory_prefix) == answer.variant:
            return None
        return compiled.answers.stale if compiled.answers is not None else None

    def _expose(
        self, compiled: CompiledExperiment, unit: str, variant: str | None,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """Queue the first assignment and exposure once per unit and process (as the server's
        sticky store does); a full queue drops per ``queue_full``, counted. The experiment's
        segment attributes (only those, only plain values) go with it.

        The queued item holds only strings and numbers, segment attributes flattened into it
        (``_ATTRIBUTE`` + name; ``_exposure_body`` nests them again when the batch is sent): a
        dict of such values is one the garbage collector does not track, so a full queue of
        them adds nothing to its collections (see ``_memory.py``)."""
        memory = self._exposed
        entry = memory.shards[hash(unit) % memory.count].get(unit)
        if variant is None or (entry is not None and entry.get(compiled.memory_prefix) == variant):
            return
        item: dict[str, Any] = {"experiment": compiled.key, "unit": unit, "seed": compiled.seed,
                                "variant": variant, "exposed_at": time.time()}  # fmt: skip
        if compiled.segments:
            given = attributes or {}
            for name in compiled.segments:
                value = given.get(name)
                if _plain(value):
                    item[_ATTRIBUTE + name] = value
        self._exposures.put(item)
        memory.put(unit, compiled.memory_prefix, variant)
        self._wake_if_due("exposures", self._exposures)

    def _wake_if_due(self, kind: str, queue: BatchQueue) -> None:
        """Wake the flusher when a full batch waits and the flusher is idle.

        Not while a batch of this kind waits out its backoff (the server is failing), nor for
        events before the first snapshot (they cannot be sent yet): a wake per queued item
        would then spin the flusher against the application for the GIL.
        """
        if (
            len(queue) >= self._batch_size
            and self._pending[kind] is None
            and (kind == "exposures" or self._snapshot is not None)
            and not self._wake_flusher.is_set()
        ):
            self._wake_flusher.set()

    def _expose_holdout(
        self, holdout: str, seed: str, memory_prefix: str, unit: str, group: str
    ) -> None:
        """Queue the unit's exposure of a holdout (its group as the variant), once per process."""
        if self._exposed.get(unit, memory_prefix) == group:
            return
        self._exposures.put({"experiment": holdout, "unit": unit, "seed": seed,
                             "variant": group, "exposed_at": time.time()})  # fmt: skip
        self._exposed.put(unit, memory_prefix, group)
        self._wake_if_due("exposures", self._exposures)

    def _ask_server(
        self, compiled: CompiledExperiment, unit: str, attributes: Mapping[str, Any]
    ) -> Assignment:
        stored = self._stored.get(unit, compiled.memory_prefix)
        if stored is not None:
            return from_stored(compiled, stored)
        unavailable = Assignment(
            compiled.key, compiled.control, "sdk-server-unavailable", source="sdk"
        )
        if not self._fallback_breaker.allow():
            self._count_call("sdk-server-unavailable")
            return unavailable
        waiting = _Waiting(compiled.key, unit, attributes)
        with self._waiting_ready:
            self._waiting.append(waiting)
            self._waiting_ready.notify()
        if not waiting.done.wait(self._fallback_timeout) or waiting.answer is None:
            self._count_call("sdk-server-unavailable")
            return unavailable
        answer = waiting.answer
        self._count_call("server")
        if answer["reason"] in ("sticky", "hashed"):
            self._stored.put(unit, compiled.memory_prefix, answer["variant"])
        holdout = answer.get("holdout")
        group = (
            None if holdout is None else ("holdout" if answer["reason"] == "holdout" else "rest")
        )
        return Assignment(compiled.key, answer["variant"], answer["reason"],
                          answer["in_experiment"], "server", holdout, group)  # fmt: skip

    def _fallback_loop(self) -> None:
        while not self._stopping.is_set():
            with self._waiting_ready:
                while not self._waiting and not self._stopping.is_set():
                    self._waiting_ready.wait()
                batch, self._waiting = self._waiting[:1000], self._waiting[1000:]
            if not batch:
                continue
            body = {"items": [{"experiment": w.experiment, "unit": w.unit,
                               "attributes": dict(w.attributes)} for w in batch]}  # fmt: skip
            try:
                response = _released(
                    self._http().post(
                        self.url + "/v1/assign/batch", json=body, timeout=self._fallback_timeout
                    )
                )
                response.raise_for_status()
                answers = response.json()["assignments"]
                self._fallback_breaker.success()
            except Exception:
                self._fallback_breaker.failure()
                answers = [None] * len(batch)
            for waiting, answer in zip(batch, answers, strict=True):
                waiting.answer = answer
                waiting.done.set()

    # --- snapshot following -----------------------------------------------------------

    def _install(self, document: Mapping[str, Any]) -> None:
        snapshot = Snapshot.from_json(document)
        self._heard_at = time.monotonic()
        current = self._snapshot
        if current is None or current.version != snapshot.version:
            self._snapshot = snapshot
            self._count("snapshots")
            # First assignments reach the server before weights move: now, even if a batch
            # is waiting out its backoff.
            self._flush_now = True
            self._wake_flusher.set()
        self._ready.set()

    def _poll(self, client: httpx.Client) -> None:
        headers = {"If-None-Match": f'"{self.version}"'} if self.version else {}
        response = _released(client.get(self.url + "/v1/sdk/config", headers=headers))
        if response.status_code == 304:
            self._heard_at = time.monotonic()
            return
        response.raise_for_status()
        self._install(response.json())

    def _stream(self, client: httpx.Client) -> None:
        """Read one stream until the server ends it; raise if it cannot be opened."""
        headers = {"Accept": "text/event-stream"}
        if self.version:
            headers["Last-Event-ID"] = self.version
        timeout = httpx.Timeout(self._timeout, read=30.0)
        with client.stream(
            "GET", self.url + "/v1/sdk/stream", headers=headers, timeout=timeout
        ) as response:
            try:
                response.raise_for_status()
                self._stream_response = response
                event, data = "message", list[str]()
                for line in response.iter_lines():
                    if self._stopping.is_set():
                        return
                    # Any line renews the lease: the server sends a keep-alive well within
                    # the settle time while nothing changes.
                    self._heard_at = time.monotonic()
                    if not line:
                        if event == "config" and data:
                            self._install(json.loads("\n".join(data)))
                        event, data = "message", []
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif line.startswith("event:"):
                        event = line[6:].strip()
            finally:
                self._stream_response = None
                response.close()
                _released(response)

    def _follow(self) -> None:
        client = httpx.Client(headers=self._headers, timeout=self._timeout)
        failures = 0
        try:
            while not self._stopping.is_set():
                if self._use_stream:
                    try:
                        self._stream(client)
                        failures = 0
                        continue
                    except Exception as error:
                        if self._stopping.is_set():
                            return
                        self._count("stream_failures")
                        if isinstance(error, httpx.ConnectError):
                            # Nothing listens: a poll now would fail the same way. One
                            # attempt per backoff keeps a dead server from costing CPU.
                            failures += 1
                            self._unreachable(error, failures)
                            self._stopping.wait(_backoff(failures, self._poll_every()))
                            continue
                        log.info("abx stream unavailable (%s): polling %s", _why(error), self.url)
                try:
                    self._poll(client)
                    failures = 0
                    self._fallback_breaker.success()
                except Exception as error:
                    failures += 1
                    self._count("poll_failures")
                    self._unreachable(error, failures)
                every = self._poll_every()
                wait = every if failures == 0 else _backoff(failures, every)
                if not self._use_stream or failures:
                    self._stopping.wait(wait)
                else:
                    self._stopping.wait(min(wait, 1.0))
        finally:
            client.close()

    def _unreachable(self, error: Exception, failures: int) -> None:
        if failures == 1:
            log.warning("abx server unreachable (%s): keeping snapshot %s",
                        _why(error), self.version)  # fmt: skip
        if isinstance(error, httpx.ConnectError):
            # Nothing listens: moved-range units get the control at once rather than each
            # waiting for a fallback request to fail. (A slow answer is no such proof: a
            # loaded server still answers the fallback.)
            self._fallback_breaker.trip()

    def _poll_every(self) -> float:
        """``poll_interval``, but at least three polls within the server's settle time.

        A weight change applies ``allocation_settle_seconds`` after it is announced. A polling
        SDK must hear of it before then (to stop assigning the moved ranges locally) and
        send the first assignments it made there under the old weights (``_install`` wakes
        the flusher), or the server could give one of those units a second variant.
        """
        snapshot = self._snapshot
        settle = snapshot.settle_seconds if snapshot is not None else None
        if settle is None:
            return self._poll_interval
        return max(MIN_POLL_SECONDS, min(self._poll_interval, settle / 3))

    # --- batches ----------------------------------------------------------------------

    def _has_work(self) -> bool:
        return bool(len(self._exposures) or self._pending["exposures"]
                    or (self._snapshot is not None and
                        (len(self._events) or self._pending["events"])))  # fmt: skip

    def _flush_loop(self) -> None:
        while not self._stopping.is_set():
            self._wake_flusher.wait(self._flush_interval)
            self._wake_flusher.clear()
            if self._stopping.is_set():
                return
            force, self._flush_now = self._flush_now, False
            try:
                self._flush_once(force=force)
            except Exception:
                self._count("flush_errors")

    def _flush_once(self, force: bool) -> bool:
        with self._send_lock:
            return self._flush_locked(force)

    def _flush_locked(self, force: bool) -> bool:
        sent = False
        for kind in ("exposures", "events"):
            while True:
                batch = self._next_batch(kind)
                if batch is None or (batch.retry_at > time.monotonic() and not force):
                    break
                if not self._send(kind, batch):
                    break
                sent = True
        return sent

    def _next_batch(self, kind: str) -> _Batch | None:
        batch = self._pending[kind]
        if batch is not None:
            return batch
        if kind == "exposures":
            items = self._exposures.take(self._batch_size)
        else:
            snapshot = self._snapshot
            if snapshot is None:
                return None  # events name their experiments from the snapshot
            items = self._expand(snapshot, self._events.take(self._batch_size))
        if not items:
            return None
        batch = _Batch(uuid.uuid4().hex, items)
        self._pending[kind] = batch
        return batch

    def _expand(self, snapshot: Snapshot, tracked: list[dict[str, Any]]) -> list[dict[str, Any]]:
        events = []
        for event in tracked:
            if "experiment" in event:
                events.append(event)
                continue
            targets = [k for k, e in snapshot.experiments.items() if event["metric"] in e.metrics]
            targets += [k for k, m in snapshot.holdout_metrics.items() if event["metric"] in m]
            if not targets:
                self._count("events_unmatched")
            events.extend({**event, "experiment": key} for key in targets)
        return events

    def _send(self, kind: str, batch: _Batch) -> bool:
        path = "/v1/sdk/exposures" if kind == "exposures" else "/v1/events"
        if batch.body is None:
            if kind == "exposures":
                body = {"batch_id": batch.batch_id, "client": CLIENT_NAME,
                        "exposures": [_exposure_body(item) for item in batch.items]}  # fmt: skip
            else:
                body = {"events": [{**e, "timestamp": _iso(e["timestamp"])} for e in batch.items]}
            batch.body = json.dumps(body, separators=(",", ":")).encode()
        try:
            response = _released(
                self._http().post(self.url + path, content=batch.body, headers=_JSON_HEADERS)
            )
        except httpx.HTTPError:
            return self._retry_later(kind, batch)
        if response.status_code == 429 or response.status_code >= 500:
            return self._retry_later(kind, batch)
        self._pending[kind] = None
        self._backoff[kind] = 0.0
        if response.status_code >= 400:
            self._count(f"{kind}_rejected", len(batch.items))
            log.error("abx refused a batch of %d %s (%s): dropped", len(batch.items), kind,
                      _problem(response).get("detail", response.status_code))  # fmt: skip
            return True
        self._count("batches_sent")
        self._count(f"{kind}_sent", len(batch.items))
        return True

    def _retry_later(self, kind: str, batch: _Batch) -> bool:
        batch.attempts += 1
        if batch.attempts == 1:
            log.warning(
                "abx batch of %d %s not sent: retrying with backoff", len(batch.items), kind
            )
        batch.retry_at = time.monotonic() + _backoff(batch.attempts, self._max_backoff)
        self._count("batch_failures")
        return False

    def _predict_default(
        self,
        experiment: str,
        unit: Unit,
        attributes: Mapping[str, Any] | None,
        default: Any,
        error: str,
    ) -> Prediction:
        self._count_call("predict_default")
        assignment = self.assign(experiment, unit, attributes)
        value = default(assignment) if callable(default) else default
        return Prediction(
            experiment, assignment.variant, assignment.reason, value, False, error=error
        )


_JSON_HEADERS = {"Content-Type": "application/json"}
_NO_STREAM = httpx.ByteStream(b"")


def _released(response: httpx.Response) -> httpx.Response:
    """``response`` (read and closed) without the reference cycle httpx gives every response.

    httpx's ``response.stream`` (a ``BoundSyncStream``) refers back to the response, so each
    request leaves a cycle of ~46 objects (request, headers, URL, pool request, events) that
    only the garbage collector frees, in whichever thread's allocation next triggers a young
    collection: the application's thread then pays for the SDK's batches and polls. The body
    is in ``response.content`` by now (a stream's response is closed); replacing the spent
    stream breaks the cycle, and reference counting frees it all where the response is
    dropped (encode/httpx#3733 would remove the cycle in httpx itself).
    """
    response.stream = _NO_STREAM
    return response


def _why(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:200]


def _unit_text(unit: Any) -> str:
    if isinstance(unit, bool) or not isinstance(unit, int):
        raise TypeError(f"a unit id is a string or an integer, not {type(unit).__name__}")
    return str(unit)


_ATTRIBUTE = "attributes."
"""A queued exposure's segment attribute ``name`` is its key ``_ATTRIBUTE + name``."""


def _exposure_body(item: Mapping[str, Any]) -> dict[str, Any]:
    """A queued exposure as the server reads it: segment attributes nested again."""
    body: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for name, value in item.items():
        if name.startswith(_ATTRIBUTE):
            attributes[name[len(_ATTRIBUTE) :]] = value
        else:
            body[name] = value
    if attributes:
        body["attributes"] = attributes
    return body


def _backoff(attempt: int, ceiling: float) -> float:
    """Exponential from 0.5 s, capped, with full jitter in its upper half."""
    base = min(ceiling, 0.5 * 2.0 ** min(attempt - 1, 16))
    return float(base * (0.5 + random.random() / 2))


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + f".{int(epoch % 1 * 1e6):06d}Z"


def _problem(response: httpx.Response) -> Mapping[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"detail": response.text[:500]}
    return body if isinstance(body, dict) else {"detail": body}


def _plain(value: Any) -> bool:
    """A value JSON carries as is (no NaN): the server records only such segment values."""
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str | int | bool)
