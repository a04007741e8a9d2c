"""A variant's model served elsewhere, over the Open Inference Protocol (KServe v2 REST).

``model: {endpoint: http://host:8000/v2/models/churn}`` names a model on Triton, KServe,
MLServer or ``abx infer --bind``. abx keeps everything but the run: assignment, input checks
(against the signature the server's metadata gives, before anything is sent), the latency
budget, fallback to the control, the ``predictions`` log and the statistics. The model's
identity in the log is a digest of the endpoint and the version the server reports (and the
file checksum ``abx infer`` adds to its metadata), since abx never sees the file.

The metadata is read when the catalog is built; an endpoint that does not answer then is a
load error (its variant is answered by the fallback) until the next reload. One keep-alive
connection per thread; a bearer token from the variable ``token_env`` names, if any.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from service.inference.oip import DATATYPES, NAMES  # the protocol's tensor types, once
from service.inference.remote import RemoteFailure
from service.inference.signature import TensorSpec
from service.inference.wire import TransportError


class EndpointConnection:
    """HTTP/1.1 keep-alive connections to one server, one per thread."""

    def __init__(self, url: str, token: str | None) -> None:
        parts = urlsplit(url)
        self.url = url
        self.scheme = parts.scheme
        self.netloc = parts.netloc
        self.path = parts.path
        self._headers = {"Content-Type": "application/json"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._local = threading.local()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = (
                http.client.HTTPSConnection
                if self.scheme == "https"
                else http.client.HTTPConnection
            )
            connection = kind(self.netloc, timeout=timeout)
            self._local.connection = connection
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def request(self, method: str, suffix: str, body: Any, timeout: float) -> Any:
        """The JSON answer; TransportError, TimeoutError or RemoteFailure otherwise."""
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        for attempt in (0, 1):
            connection = self._connection(timeout)
            try:
                connection.request(method, self.path + suffix, data, self._headers)
                response = connection.getresponse()
                payload = response.read()
                break
            except TimeoutError:
                self.close()
                raise TimeoutError(f"{self.url} did not answer in time") from None
            except (OSError, http.client.HTTPException) as error:
                self.close()  # a kept-alive connection the server closed: once more, fresh
                if attempt:
                    raise TransportError(f"{self.url}: {error}") from None
        try:
            answer = json.loads(payload)
        except ValueError:
            answer = {"error": payload[:200].decode(errors="replace")}
        if response.status != 200:
            detail = answer.get("error") if isinstance(answer, dict) else answer
            raise RemoteFailure("error", f"{self.url}: {response.status} {detail}")
        return answer

    def close(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            connection.close()


def _spec(item: Mapping[str, Any]) -> TensorSpec:
    dtype = DATATYPES.get(str(item.get("datatype")))
    if dtype is None:
        raise ValueError(f"input {item.get('name')!r} has datatype {item.get('datatype')}")
    shape = tuple(d if isinstance(d, int) and d > 0 else None for d in item.get("shape", []))
    return TensorSpec(str(item["name"]), dtype, shape)


@dataclass(frozen=True)
class EndpointModel:
    """What the catalog needs of a model (as ``LoadedModel``), for one served elsewhere."""

    name: str
    version: str
    sha256: str
    path: Path
    provider: str
    inputs: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]
    connection: EndpointConnection = field(repr=False)
    default_timeout: float = 1.0
    timings_ms: dict[str, dict[int, float]] = field(default_factory=dict)

    @cached_property
    def _outputs(self) -> list[dict[str, str]]:
        return [{"name": name} for name in self.output_names]

    def call(
        self, feeds: Mapping[str, np.ndarray], timeout: float
    ) -> tuple[dict[str, np.ndarray], str]:
        body = {
            "inputs": [
                {"name": name, "datatype": NAMES[value.dtype], "shape": list(value.shape),
                 "data": value.ravel().tolist()}
                for name, value in feeds.items()
            ],
            "outputs": self._outputs,
            # The budget as a deadline for the server (Triton's request timeout, in
            # microseconds): rows that would answer too late are not run at all.
            "parameters": {"timeout": max(1, int(timeout * 1e6))},
        }  # fmt: skip
        answer = self.connection.request("POST", "/infer", body, timeout)
        try:
            outputs = {
                str(item["name"]): np.asarray(
                    item["data"], dtype=DATATYPES.get(item["datatype"], np.float64)
                ).reshape(item["shape"])
                for item in answer["outputs"]
            }
        except (KeyError, TypeError, ValueError) as error:
            raise RemoteFailure(
                "error", f"{self.connection.url}: malformed answer: {error}"
            ) from None
        if set(outputs) != set(self.output_names):
            raise RemoteFailure("error", f"{self.connection.url}: outputs {sorted(outputs)}")
        return outputs, self.provider

    def run(self, feeds: Mapping[str, np.ndarray], options: Any = None) -> dict[str, np.ndarray]:
        """As ``LoadedModel.run`` (shadows, the last-resort path): the default timeout."""
        return self.call(feeds, self.default_timeout)[0]


@dataclass(frozen=True)
class EndpointRunner:
    """The ``remote`` of a variant whose model is an endpoint (as ``ProcessModel``)."""

    model: EndpointModel

    def run(
        self, feeds: Mapping[str, np.ndarray], budget: float | None
    ) -> tuple[dict[str, np.ndarray], str]:
        return self.model.call(feeds, budget if budget is not None else self.model.default_timeout)


def load_endpoint(url: str, token_env: str | None, timeout: float) -> EndpointModel:
    """Read the model's metadata (its inputs, outputs and version) from the server."""
    token = os.environ.get(token_env) if token_env else None
    connection = EndpointConnection(url, token)
    try:
        meta = connection.request("GET", "", None, min(timeout * 5, 5.0))
    finally:
        connection.close()
    inputs = tuple(_spec(item) for item in meta.get("inputs", []))
    outputs = tuple(str(item["name"]) for item in meta.get("outputs", []))
    if not inputs or not outputs:
        raise ValueError(f"{url}: the metadata names no inputs or outputs")
    versions = meta.get("versions") or [""]
    version = str(versions[-1])
    file_sha = str((meta.get("parameters") or {}).get("sha256", ""))
    digest = hashlib.sha256(f"{url}\n{version}\n{file_sha}".encode()).hexdigest()
    return EndpointModel(
        name=str(meta.get("name", urlsplit(url).path.rsplit("/", 1)[-1])),
        version=version,
        sha256=digest,
        path=Path(urlsplit(url).path),
        provider=f"oip:{urlsplit(url).netloc}",
        inputs=inputs,
        output_names=outputs,
        connection=connection,
        default_timeout=timeout,
    )
