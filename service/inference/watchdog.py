"""Stop onnxruntime runs that pass their deadline, from one thread for the whole process.

A run over budget is stopped through ``RunOptions.terminate`` so that it frees its core. Its
own module (standard library and onnxruntime only): the worker's runner and the inference
process's host both arm it.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time

import onnxruntime as ort


class Watchdog:
    """Sets ``terminate`` on the run options of runs that pass their deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, ort.RunOptions, list[bool]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        threading.Thread(target=self._loop, name="abx-model-watchdog", daemon=True).start()

    def arm(self, options: ort.RunOptions, budget: float) -> list[bool]:
        active = [True]
        entry = (time.monotonic() + budget, next(self._order), options, active)
        with self._wake:
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:
                self._wake.notify()
        return active

    def _loop(self) -> None:
        with self._wake:
            while True:
                while self._heap and not self._heap[0][3][0]:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._wake.wait()
                    continue
                deadline, _, options, active = self._heap[0]
                remaining = deadline - time.monotonic()
                if remaining > 0:
                    self._wake.wait(remaining)
                    continue
                heapq.heappop(self._heap)
                if active[0]:
                    options.terminate = True
