"""Dynamic micro-batching: concurrent requests for one model share one ``run`` call.

A request's rows join a queue; one thread per model takes the waiting requests,
keeps collecting until ``max_rows`` rows are queued or ``max_wait`` has passed
since the oldest of them arrived, runs the concatenated batch once and hands
each request the batch's outputs with its row range. A heavy model pays its
weights' memory traffic once per batch instead of once per request.

With ``max_wait`` 0 (the default) batching is continuous: an idle model runs a
request at once, and whatever queues while it runs becomes the next batch, so
batches grow with the load and a lone request waits for nobody. A positive
``max_wait`` trades that much latency for fewer, larger runs when the model idles.

Each request waits on a lock of its own (an ``Event`` would add a condition and
a second lock to every wake-up) and slices its rows itself. The batch thread
wakes only a batch's first request; each woken request wakes the next. A wake-up
costs a few microseconds with the GIL held, so thirty of them in the batch thread
kept it from its next batch and woke thirty threads to fight over the GIL at
once; the chain spreads them out (about a fifth more throughput with 64 request
threads, benchmarks/README.md). A request that gave up (latency budget) is
skipped by the chain, which wakes the one after it.

A request may carry a deadline (its latency budget, as a ``time.monotonic()``
instant). Rows whose deadline passed while they queued are never run: the batch
thread drops them when it takes the next batch and answers them ``TimeoutError``
(the caller falls back), so a burst of late requests cannot push the timely ones
behind it past their own budgets. With ``run_until``, a batch whose requests all
carry deadlines is run until the latest of them: once every request in it is late
the run itself may be cut (the inference process's watchdog stops it).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from service.background import BackgroundThread

Feeds = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


def _locked() -> threading.Lock:
    lock = threading.Lock()
    lock.acquire()
    return lock


@dataclass(eq=False)
class PendingRun:
    """One request's part of a batch; ``wait`` returns its outputs or raises its error."""

    feeds: Feeds
    rows: int
    handoff: threading.Lock
    """The batcher's: guards the chain of wake-ups against requests that give up."""
    arrived: float = field(default_factory=time.monotonic)
    batch: Outputs | None = None
    start: int = 0
    """This request's first row in ``batch``."""
    error: BaseException | None = None
    after: PendingRun | None = None
    """The request of the same batch that this one wakes once it is awake itself."""
    abandoned: bool = False
    deadline: float | None = None
    """When the request's budget ends (``time.monotonic()``); None: no budget."""
    _done: threading.Lock = field(default_factory=_locked)

    def wait(self, timeout: float | None) -> Outputs:
        if not self._done.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            with self.handoff:
                answered = self._done.acquire(blocking=False)  # woken just after the timeout
                self.abandoned = not answered
            if not answered:
                raise TimeoutError("the batched run did not finish within the latency budget")
        self._done.release()  # a second ``wait`` returns at once
        with self.handoff:
            following, self.after = self.after, None
            wake_chain(following)
        if self.error is not None:
            raise self.error
        assert self.batch is not None
        end = self.start + self.rows
        return {name: value[self.start : end] for name, value in self.batch.items()}


def wake_chain(first: PendingRun | None) -> None:
    """Wake ``first``, or, past requests that gave up, the first still waiting (hold handoff)."""
    pending = first
    while pending is not None:
        pending._done.release()
        if not pending.abandoned:
            return
        skipped, pending = pending, pending.after
        skipped.after = None  # a later ``wait`` of the skipped one must not wake it again


RECENT = 4096
"""Requests whose queue-and-run time ``stats`` summarises."""


class MicroBatcher(BackgroundThread):
    def __init__(
        self,
        run: Callable[[Feeds], Outputs],
        max_rows: int,
        max_wait: float,
        name: str = "",
        observe_rows: Callable[[float], None] | None = None,
        run_until: Callable[[Feeds, float], Outputs] | None = None,
    ) -> None:
        """``observe_rows`` gets each batch's size (a histogram's ``observe``): no metrics
        import here, so the inference process runs on a host with only numpy and onnxruntime.
        ``run_until(feeds, deadline)``: the run for a batch whose every request has a
        deadline, given the latest of them (it may stop the run then)."""
        super().__init__(f"abx-batch-{name}")
        self._observe_rows = observe_rows
        self._run_model = run
        self._run_until = run_until
        self._max_rows = max_rows
        self._max_wait = max_wait
        self._queue: deque[PendingRun] = deque()
        self._queued_rows = 0
        self._busy = False
        """A run is under way (the batch thread's, or one ``run_if_idle`` runs inline)."""
        self._ready = threading.Condition()
        self._handoff = threading.Lock()
        self.batches = 0
        self.rows = 0
        self.expired = 0
        """Requests dropped unrun because their deadline passed while they queued."""
        self.cut = 0
        """Batches stopped (``run_until``) because every request in them passed its deadline."""
        self._recent: deque[float] = deque(maxlen=RECENT)
        """Seconds from submit to answer, newest last."""
        self.start()

    def submit(self, feeds: Feeds, rows: int, deadline: float | None = None) -> PendingRun:
        """Queue the rows; ``deadline`` (``time.monotonic()``): run them only before it."""
        pending = PendingRun(feeds, rows, self._handoff, deadline=deadline)
        with self._ready:
            if not self.stopping:
                self._queue.append(pending)
                self._queued_rows += rows
                # Wake the batch thread only to start a batch or to run a full one: a wake-up
                # per request would cost a GIL hand-off each.
                if len(self._queue) == 1 or self._queued_rows >= self._max_rows:
                    self._ready.notify()
                return pending
        self._run_batch([pending])  # replaced by a reload while this request was in flight
        return pending

    def run_if_idle(
        self, feeds: Feeds, rows: int, run: Callable[[Feeds], Outputs] | None = None
    ) -> Outputs | None:
        """Run at once in the caller's thread when nothing is queued or running; else None.

        A lone request then pays no hand-off to the batch thread and back (two thread
        switches); what arrives while it runs queues and becomes the next batch, as with the
        batch thread. Only for ``max_wait`` 0. ``run``: the model's run to use (with run
        options that a watchdog may terminate), default the batcher's.
        """
        with self._ready:
            if self._queue or self._busy or self.stopping or self._max_wait > 0:
                return None
            self._busy = True
        started = time.monotonic()
        try:
            return (run or self._run_model)(feeds)
        finally:
            with self._ready:
                self._busy = False
                self.batches += 1
                self.rows += rows
                self._recent.append(time.monotonic() - started)
                if self._queue:
                    self._ready.notify()
            if self._observe_rows is not None:
                self._observe_rows(rows)

    def stats(self) -> dict[str, Any]:
        """Batch sizes and what batching cost the recent requests, for tuning ``max_*``."""
        recent = sorted(self._recent)
        waited = {
            f"answer_{name}_ms": round(recent[min(len(recent) - 1, int(q * len(recent)))] * 1000, 3)
            for name, q in (("p50", 0.5), ("p99", 0.99))
            if recent
        }
        mean = self.rows / self.batches if self.batches else 0.0
        return {
            "running": self._busy,
            "batches": self.batches,
            "rows": self.rows,
            "mean_rows": round(mean, 2),
            "expired": self.expired,
            "cut": self.cut,
            **waited,
        }

    def _wake(self) -> None:
        with self._ready:
            self._ready.notify()

    def _take(self) -> tuple[list[PendingRun], list[PendingRun]]:
        """The next batch, and the requests dropped from it because their deadline passed (one
        that gave up without a deadline still runs: asked again, it is answered)."""
        with self._ready:
            while (not self._queue or self._busy) and not self.stopping:
                self._ready.wait()
            if not self._queue:
                return [], []
            deadline = self._queue[0].arrived + self._max_wait
            while self._queued_rows < self._max_rows and not self.stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            taken: list[PendingRun] = []
            late: list[PendingRun] = []
            rows = 0
            now = time.monotonic()
            while self._queue and (not taken or rows + self._queue[0].rows <= self._max_rows):
                pending = self._queue.popleft()
                self._queued_rows -= pending.rows
                if pending.deadline is not None and pending.deadline <= now:
                    late.append(pending)
                    continue
                taken.append(pending)
                rows += pending.rows
            self._busy = bool(taken)
            self.expired += len(late)
            return taken, late

    def _run(self) -> None:
        while True:
            taken, late = self._take()
            if late:
                self._answer_late(late)
            if not taken:
                if self.stopping and not self._queue:
                    return
                continue
            try:
                self._run_batch(taken)
            finally:
                with self._ready:
                    self._busy = False

    def _answer_late(self, late: list[PendingRun]) -> None:
        """Wake each late request with a TimeoutError (one that gave up already wakes nobody)."""
        with self._handoff:
            for pending in late:
                pending.error = TimeoutError(
                    "the latency budget passed while the rows waited for a batch; not run"
                )
                pending._done.release()

    def _run_batch(self, taken: list[PendingRun]) -> None:
        deadlines = [p.deadline for p in taken if p.deadline is not None]
        whole = self._run_until is not None and len(deadlines) == len(taken)
        until = max(deadlines) if whole else None  # no budget in the batch: run it out
        try:
            if len(taken) == 1:
                feeds = taken[0].feeds
            else:
                names = taken[0].feeds
                feeds = {n: np.concatenate([p.feeds[n] for p in taken]) for n in names}
            if until is not None and self._run_until is not None:
                batch = self._run_until(feeds, until)
            else:
                batch = self._run_model(feeds)
            start = 0
            for pending in taken:
                pending.batch, pending.start = batch, start
                start += pending.rows
        except Exception as error:  # every request of the batch gets the model's failure
            self.cut += until is not None and isinstance(error, TimeoutError)
            for pending in taken:
                pending.error = error
        self.batches += 1
        rows = sum(p.rows for p in taken)
        self.rows += rows
        if self._observe_rows is not None:
            self._observe_rows(rows)
        answered = time.monotonic()
        self._recent.extend([answered - p.arrived for p in taken])  # one step: stats() may read
        for before, after in pairwise(taken):
            before.after = after
        with self._handoff:
            wake_chain(taken[0])
