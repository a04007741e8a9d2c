"""``AsyncClient``: the same client for asyncio applications.

Assignment is local and CPU-only, so it runs on the event loop; the snapshot follower and
the batches run on the client's threads as in ``Client``. What waits on the network awaits:
the first snapshot (at most ``ready_timeout``), a moved-range unit's server answer, predict.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any

import httpx

from abx_client._snapshot import Assignment, evaluate
from abx_client.client import (
    Client,
    Prediction,
    RequestRejected,
    Unit,
    _problem,
    _released,
    _unit_text,
)


class AsyncClient:
    def __init__(self, url: str, token: str | None = None, **options: Any) -> None:
        self._client = Client(url, token, **options)
        self._http: httpx.AsyncClient | None = None

    @property
    def ready(self) -> bool:
        return self._client.ready

    @property
    def version(self) -> str | None:
        return self._client.version

    def stats(self) -> dict[str, int]:
        return self._client.stats()

    async def wait_ready(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self._client.wait_ready, timeout)

    async def assign(
        self,
        experiment: str,
        unit: Unit,
        attributes: Mapping[str, Any] | None = None,
        *,
        default: str | None = None,
    ) -> Assignment:
        client = self._client
        if client._snapshot is None or not client._started:
            client._start()
            remaining = client._created + client._ready_timeout - time.monotonic()
            if remaining > 0 and client._snapshot is None:
                await asyncio.to_thread(client._ready.wait, remaining)
        snapshot = client._snapshot
        if snapshot is not None:
            compiled = snapshot.experiments.get(experiment)
            unit_id = unit if isinstance(unit, str) else _unit_text(unit)
            if compiled is not None and evaluate(compiled, unit_id, attributes or {}) is None:
                # Only the server knows: wait for it off the loop (batched with other callers).
                return await asyncio.to_thread(
                    client.assign, experiment, unit, attributes, default=default
                )
        return client.assign(experiment, unit, attributes, default=default)

    def track(
        self,
        unit: Unit,
        metric: str,
        value: float | bool,
        properties: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> str:
        return self._client.track(unit, metric, value, properties, **options)

    async def predict(
        self,
        experiment: str,
        unit: Unit,
        attributes: Mapping[str, Any] | None = None,
        inputs: Mapping[str, Any] | None = None,
        *,
        default: Any = None,
        timeout: float | None = None,
    ) -> Prediction:
        client = self._client
        breaker = client._predict_breaker
        if not breaker.allow():
            return client._predict_default(experiment, unit, attributes, default, "circuit-open")
        if self._http is None:
            self._http = httpx.AsyncClient(headers=client._headers)
        body = {"experiment": experiment, "unit": unit, "attributes": dict(attributes or {}),
                "inputs": dict(inputs or {})}  # fmt: skip
        try:
            response = _released(
                await self._http.post(
                    client.url + "/v1/predict",
                    json=body,
                    timeout=timeout or client._predict_timeout,
                )
            )
        except httpx.HTTPError as error:
            breaker.failure()
            return client._predict_default(
                experiment, unit, attributes, default, type(error).__name__
            )
        if response.status_code == 429 or response.status_code >= 500:
            breaker.failure()
            return client._predict_default(
                experiment, unit, attributes, default, f"status {response.status_code}"
            )
        breaker.success()
        if response.status_code >= 400:
            raise RequestRejected(response.status_code, _problem(response))
        answer = response.json()
        return Prediction(experiment, answer["variant"], answer["reason"], answer["outputs"],
                          True, bool(answer.get("fallback", False)))  # fmt: skip

    async def flush(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self._client.flush, timeout)

    async def aclose(self) -> None:
        await asyncio.to_thread(self._client.close)
        if self._http is not None:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
