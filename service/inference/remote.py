"""A variant's model served by the inference process, as a worker calls it.

The worker still holds a CPU session of the same file: when the process is down, slow or
failing, the assigned variant falls back to the control as for any failing model, and the
control's own run falls back to the worker's session, so a dead inference process never
fails a request (``runner.py``).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.inference.wire import InferenceClient, TransportError

SLACK_SECONDS = 0.002
"""Added to a budget for the socket's own wait: the process answers a timeout itself first."""


class RemoteFailure(Exception):
    """The process answered, with a failure; ``reason`` is the fallback cause."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True)
class ProcessModel:
    client: InferenceClient = field(repr=False)
    path: str
    """Relative to the models root, which the process shares with the workers."""
    sha256: str
    default_timeout: float
    """Seconds to wait when the experiment sets no latency budget."""
    provider: list[str] = field(default_factory=lambda: ["unknown"])
    """The provider the process last reported (a coalesced batch's requests share it)."""

    def run_batch(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A worker's coalesced batch (``MicroBatcher``'s run): waits the default timeout."""
        return self.run(feeds, None)[0]

    def run_until(self, feeds: Mapping[str, np.ndarray], deadline: float) -> dict[str, np.ndarray]:
        """A coalesced batch whose requests all have budgets (``MicroBatcher``'s ``run_until``):
        the process gets what is left until the latest of them, and runs none of it later."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the latency budget passed before the rows were sent")
        return self.run(feeds, remaining)[0]

    def run(
        self, feeds: Mapping[str, np.ndarray], budget: float | None
    ) -> tuple[dict[str, np.ndarray], str]:
        """Outputs and the provider that computed them; TransportError, TimeoutError or
        RemoteFailure otherwise."""
        timeout = budget if budget is not None else self.default_timeout
        header = {"op": "run", "model": self.sha256, "path": self.path, "timeout": timeout}
        reply, outputs = self.client.call(header, feeds, timeout + SLACK_SECONDS)
        if reply.get("ok"):
            self.provider[0] = provider = str(reply.get("provider"))
            return outputs, provider
        reason = str(reply.get("reason"))
        if reason == "timeout":
            raise TimeoutError(reply.get("detail"))
        raise RemoteFailure("error" if reason != "load-error" else reason, str(reply.get("detail")))

    def describe(self, timeout: float = 30.0) -> dict[str, Any]:
        """Load the model in the process now (before traffic); its provider and timings."""
        try:
            reply, _ = self.client.call(
                {"op": "load", "model": self.sha256, "path": self.path}, {}, timeout
            )
        except (TransportError, TimeoutError) as error:
            return {"ok": False, "reason": "unreachable", "detail": str(error)}
        return reply
