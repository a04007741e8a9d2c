"""Stop onnxruntime runs that pass their deadline, from one thread for the whole process.

A run over budget is stopped through ``RunOptions.terminate`` so that it frees its core. Its
own module (standard library and onnxruntime only): the worker's runner and the inference
process's host both arm it.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time

import onnxruntime as ort

IDLE_POLL_SECONDS = 0.05
"""How often an idle watchdog looks at its heap: arming a run that ends later than the
watchdog's next look wakes nobody (a wake-up per request cost a thread switch each)."""


class Watchdog:
    """Sets ``terminate`` on the run options of runs that pass their deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, ort.RunOptions, list[bool]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._next_look = math.inf
        """When the loop next looks at the heap (monotonic), whatever it waits for."""
        threading.Thread(target=self._loop, name="abx-model-watchdog", daemon=True).start()

    def arm(self, options: ort.RunOptions, budget: float) -> list[bool]:
        active = [True]
        entry = (time.monotonic() + budget, next(self._order), options, active)
        with self._wake:
            heapq.heappush(self._heap, entry)
            if entry[0] < self._next_look:
                self._wake.notify()
        return active

    def _loop(self) -> None:
        with self._wake:
            while True:
                while self._heap and not self._heap[0][3][0]:
                    heapq.heappop(self._heap)
                now = time.monotonic()
                if not self._heap:
                    self._next_look = now + IDLE_POLL_SECONDS
                    self._wake.wait(IDLE_POLL_SECONDS)
                    continue
                deadline, _, options, active = self._heap[0]
                if deadline > now:
                    self._next_look = deadline
                    self._wake.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
                if active[0]:
                    options.terminate = True
