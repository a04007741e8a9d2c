"""One lifecycle for the background threads of a serving process.

Writers, the rollup, state sync, hot reload, micro-batching and shadow runs each own one
daemon thread. They start it, stop it and join it the same way: ``start()`` once,
``close()`` sets the stop flag, wakes the thread where it waits (``_wake``) and joins it
for a bounded time. ``PeriodicThread`` is the common case of a tick every N seconds whose
failures are logged and retried at the next tick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class BackgroundThread:
    """A daemon thread running ``_run`` until ``close``."""

    def __init__(self, name: str, join_timeout: float = 5.0) -> None:
        self._thread_name = name
        self._join_timeout = join_timeout
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
            self._thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Ask the thread to stop, wake it, and wait for it (bounded)."""
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(self._join_timeout if timeout is None else timeout)

    def _wake(self) -> None:
        """Interrupt the thread's wait (for threads that wait on more than the stop flag)."""

    def _run(self) -> None:
        raise NotImplementedError


class PeriodicThread(BackgroundThread):
    """Calls ``tick`` (or ``action``) every ``interval`` seconds until closed; a failing tick
    is logged."""

    def __init__(
        self,
        name: str,
        interval: float,
        action: Callable[[], object] | None = None,
        join_timeout: float = 5.0,
    ) -> None:
        super().__init__(name, join_timeout)
        self._interval = interval
        self._action = action

    def tick(self) -> None:
        if self._action is None:
            raise NotImplementedError
        self._action()

    def _run(self) -> None:
        while not self._stopping.wait(self._interval):
            try:
                self.tick()
            except Exception:  # the thread must outlive any one failure
                log.exception(
                    "%s failed; it runs again in %.1f s", self._thread_name, self._interval
                )
