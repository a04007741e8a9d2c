"""A circuit breaker: after ``failures`` failures in a row, calls are refused for
``reset_seconds``; then one trial call decides whether it closes again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class CircuitBreaker:
    def __init__(
        self, failures: int, reset_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._threshold = max(1, failures)
        self._reset_seconds = reset_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """True if a call may go out now (closed, or the one trial of a half-open breaker)."""
        if self._opened_at is None:
            return True
        with self._lock:
            if self._opened_at is None:
                return True
            if self._trial or self._clock() - self._opened_at < self._reset_seconds:
                return False
            self._trial = True
            return True

    def success(self) -> None:
        if self._failures or self._opened_at is not None:
            with self._lock:
                self._failures, self._opened_at, self._trial = 0, None, False

    def trip(self) -> None:
        """Open now: another part of the client saw the server away."""
        with self._lock:
            self._failures = max(self._failures, self._threshold)
            self._opened_at, self._trial = self._clock(), False

    def failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._trial = False
            if self._failures >= self._threshold or self._opened_at is not None:
                self._opened_at = self._clock()
