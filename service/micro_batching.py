"""Dynamic micro-batching: concurrent requests for one model share one ``run`` call.

A request's rows join a queue; one thread per model takes the first waiting
request, keeps collecting until ``max_rows`` rows are queued or ``max_wait``
has passed since that first request arrived, runs the concatenated batch once
and hands each request its own slice of every output. A heavy model pays its
weights' memory traffic once per batch instead of once per request.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

Feeds = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]


@dataclass
class PendingRun:
    """One request's part of a batch; ``wait`` returns its outputs or raises its error."""

    feeds: Feeds
    rows: int
    done: threading.Event = field(default_factory=threading.Event)
    outputs: Outputs | None = None
    error: BaseException | None = None

    def wait(self, timeout: float | None) -> Outputs:
        if not self.done.wait(timeout):
            raise TimeoutError("the batched run did not finish within the latency budget")
        if self.error is not None:
            raise self.error
        assert self.outputs is not None
        return self.outputs


class MicroBatcher:
    def __init__(
        self, run: Callable[[Feeds], Outputs], max_rows: int, max_wait: float, name: str = ""
    ) -> None:
        self._run = run
        self._max_rows = max_rows
        self._max_wait = max_wait
        self._queue: deque[PendingRun] = deque()
        self._queued_rows = 0
        self._ready = threading.Condition()
        self._closed = False
        self.batches = 0
        self.rows = 0
        self._thread = threading.Thread(target=self._loop, name=f"abx-batch-{name}", daemon=True)
        self._thread.start()

    def submit(self, feeds: Feeds, rows: int) -> PendingRun:
        pending = PendingRun(feeds, rows)
        with self._ready:
            if not self._closed:
                self._queue.append(pending)
                self._queued_rows += rows
                # Wake the batch thread only to start a batch or to run a full one: a wake-up
                # per request would cost a GIL hand-off each.
                if len(self._queue) == 1 or self._queued_rows >= self._max_rows:
                    self._ready.notify()
                return pending
        self._run_batch([pending])  # replaced by a reload while this request was in flight
        return pending

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        self._thread.join(5)

    def _take(self) -> list[PendingRun]:
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            if not self._queue:
                return []
            deadline = time.monotonic() + self._max_wait
            while self._queued_rows < self._max_rows and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._ready.wait(remaining)
            taken: list[PendingRun] = []
            rows = 0
            while self._queue and (not taken or rows + self._queue[0].rows <= self._max_rows):
                pending = self._queue.popleft()
                taken.append(pending)
                rows += pending.rows
            self._queued_rows -= rows
            return taken

    def _loop(self) -> None:
        while True:
            taken = self._take()
            if not taken:
                return
            self._run_batch(taken)

    def _run_batch(self, taken: list[PendingRun]) -> None:
        try:
            if len(taken) == 1:
                results = [self._run(taken[0].feeds)]
            else:
                feeds = {
                    name: np.concatenate([p.feeds[name] for p in taken]) for name in taken[0].feeds
                }
                outputs = self._run(feeds)
                bounds = np.cumsum([0, *(p.rows for p in taken)])
                results = [
                    {name: value[start:end] for name, value in outputs.items()}
                    for start, end in itertools.pairwise(bounds)
                ]
            for pending, result in zip(taken, results, strict=True):
                pending.outputs = result
        except Exception as error:  # every request of the batch gets the model's failure
            for pending in taken:
                pending.error = error
        self.batches += 1
        self.rows += sum(p.rows for p in taken)
        for pending in taken:
            pending.done.set()
