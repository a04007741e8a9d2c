"""The Open Inference Protocol (KServe v2, REST) over the inference process's models.

``abx infer --bind HOST:PORT`` serves ``/v2/health/live``, ``/v2/health/ready``, ``/v2``,
``/v2/models/<stem>``, ``/v2/models/<stem>/ready`` and ``POST /v2/models/<stem>/infer``, a
model named by its file's stem. Rows go through the same checks and the same micro-batcher as
the workers' (``host.py``), so remote and local callers share batches. With ``--bind`` every
``*.onnx`` file at the top of the models folder is served and reloaded when it changes
(``folder.py``): the metadata shows the version serving, and ``parameters.reload_error`` while
a newer file of that name failed to load.

A request's ``parameters.timeout`` (microseconds, Triton's convention; at most the server's
own limit) is its deadline, counted from its arrival: rows still queued then are not run and
the request is answered 503, as is one whose run passed it.

Security: everything but the two health probes needs ``Authorization: Bearer
<ABX_INFERENCE_TOKEN>`` when a token is set (compared in constant time), and a bind off the
loopback interface without a token is refused: the models and their answers are not for
whoever can reach the port. Bodies are capped (``MAX_BODY_BYTES``), connections too (one thread
each, ``max_connections``), and a connection silent for ``read_timeout_seconds`` is closed.
Standard library only.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from service.inference.host import BadInput, ModelHost

MAX_BODY_BYTES = 64 * 1024 * 1024
DATATYPES: dict[str, Any] = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
    "BOOL": np.bool_,
}
NAMES = {np.dtype(value): name for name, value in DATATYPES.items()}
MODEL_PATH = re.compile(r"^/v2/models/([A-Za-z0-9_.-]+)(/ready|/infer)?$")
"""A model's routes; ``folder.NAME`` serves only the stems this can name."""


class ProtocolError(ValueError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def tensor_from_json(item: Any) -> tuple[str, np.ndarray]:
    """One ``inputs`` entry as an array (its flat or nested ``data`` in its ``shape``)."""
    if not isinstance(item, dict):
        raise ProtocolError(400, "each input is an object with name, shape, datatype, data")
    name, shape, datatype = item.get("name"), item.get("shape"), item.get("datatype")
    if not isinstance(name, str) or datatype not in DATATYPES:
        raise ProtocolError(
            400, f"input {name!r}: datatype {datatype!r} not one of {sorted(DATATYPES)}"
        )
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ProtocolError(400, f"input {name!r}: shape must be a list of sizes")
    try:
        array = np.asarray(item.get("data"), dtype=DATATYPES[datatype])
    except (ValueError, TypeError) as error:
        raise ProtocolError(400, f"input {name!r}: data: {error}") from None
    if array.size != int(np.prod(shape, dtype=np.int64)):
        raise ProtocolError(400, f"input {name!r}: {array.size} values for shape {shape}")
    return name, array.reshape(shape)


def tensor_to_json(name: str, array: np.ndarray) -> dict[str, Any]:
    datatype = NAMES.get(array.dtype)
    if datatype is None:
        array, datatype = array.astype(np.float64), "FP64"
    return {
        "name": name,
        "datatype": datatype,
        "shape": list(array.shape),
        "data": array.ravel().tolist(),
    }


def _missing(host: ModelHost, name: str) -> str:
    problem = host.problems.get(name)
    return f"no model {name!r}" + (f" (its file did not load: {problem})" if problem else "")


def metadata(host: ModelHost, name: str) -> dict[str, Any]:
    """The serving version's metadata; ``parameters.reload_error`` while a newer file of that
    name failed to load (the version named here serves on)."""
    hosted = host.by_name(name)
    if hosted is None:
        raise ProtocolError(404, _missing(host, name))
    model = hosted.model
    outputs = [
        {
            "name": o.name,
            "datatype": NAMES.get(np.dtype(_ort_numpy(o.type)), "FP32"),
            "shape": _dims(o.shape),
        }
        for o in model.session.get_outputs()
    ]
    parameters = {"sha256": model.sha256, "provider": model.provider}
    if (problem := host.problems.get(name)) is not None:
        parameters["reload_error"] = problem
    return {
        "name": name,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {
                "name": s.name,
                "datatype": NAMES[np.dtype(s.dtype)],
                "shape": [-1 if d is None else d for d in s.shape],
            }
            for s in model.inputs
        ],
        "outputs": outputs,
        "parameters": parameters,
    }


def _dims(shape: Any) -> list[int]:
    return [d if isinstance(d, int) and d > 0 else -1 for d in (shape or [])]


def _ort_numpy(type_name: str) -> Any:
    from service.inference.signature import ORT_TYPES

    return ORT_TYPES.get(type_name, np.float32)


def request_timeout(body: dict[str, Any], longest: float | None) -> float | None:
    """Seconds the request may take: ``parameters.timeout`` (microseconds, as Triton's clients
    send it), at most the server's ``longest``."""
    parameters = body.get("parameters")
    given = parameters.get("timeout") if isinstance(parameters, dict) else None
    if given is None:
        return longest
    if isinstance(given, bool) or not isinstance(given, int | float) or not given > 0:
        raise ProtocolError(400, f"parameters.timeout is microseconds above 0, not {given!r}")
    seconds = float(given) / 1e6
    return seconds if longest is None else min(seconds, longest)


def infer(
    host: ModelHost, name: str, body: Any, timeout: float | None, received: float | None = None
) -> dict[str, Any]:
    """Run one request; rows still queued ``timeout`` seconds after ``received`` never run."""
    hosted = host.by_name(name)
    if hosted is None:
        raise ProtocolError(404, _missing(host, name))
    if not isinstance(body, dict) or not isinstance(body.get("inputs"), list):
        raise ProtocolError(400, "the body is an object with an 'inputs' list")
    timeout = request_timeout(body, timeout)
    feeds = dict(tensor_from_json(item) for item in body["inputs"])
    wanted = body.get("outputs")
    names = list(hosted.model.output_names)
    if wanted is not None:
        if not isinstance(wanted, list) or not all(isinstance(o, dict) for o in wanted):
            raise ProtocolError(400, "'outputs' is a list of objects with a name")
        asked = [o.get("name") for o in wanted]
        unknown = [n for n in asked if n not in names]
        if unknown:
            raise ProtocolError(400, f"unknown outputs {unknown}; the model has {names}")
        names = asked
    try:
        outputs = host.run(hosted, feeds, timeout, received)
    except BadInput as error:
        raise ProtocolError(400, str(error)) from None
    except TimeoutError as error:
        raise ProtocolError(503, str(error)) from None
    except Exception as error:  # the model failed on valid input
        raise ProtocolError(500, f"the model failed: {error}") from None
    answer: dict[str, Any] = {
        "model_name": name,
        "model_version": hosted.model.version,
        "outputs": [tensor_to_json(n, outputs[n]) for n in names],
        "parameters": {"provider": hosted.model.provider, "sha256": hosted.model.sha256},
    }
    if isinstance(body.get("id"), str):
        answer["id"] = body["id"]
    return answer


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: OipServer

    def setup(self) -> None:
        super().setup()
        # A timeout on every read: a client that sends its headers or body slowly, or keeps an
        # idle connection open, loses it after this long (handle_one_request closes on it).
        self.connection.settimeout(self.server.read_timeout_seconds)

    def log_message(self, format: str, *args: Any) -> None:
        return

    def _send(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def _handle(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        host = self.server.host
        declared = self.headers.get("Content-Length") or "0"
        if not declared.isdigit():  # also refuses a negative length, which would read to EOF
            self.close_connection = True
            return self._send(
                400, {"error": f"Content-Length must be a byte count, not {declared!r}"}
            )
        length = int(declared)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return self._send(413, {"error": f"bodies are limited to {MAX_BODY_BYTES} bytes"})
        raw = self.rfile.read(length) if length else b""
        received = time.monotonic()
        try:
            if method == "GET" and path == "/v2/health/live":
                return self._send(200, {"live": True})
            if method == "GET" and path == "/v2/health/ready":
                return self._send(200, {"ready": True})
            if not self._authorized():
                return self._send(401, {"error": "a valid bearer token is required"})
            if method == "GET" and path == "/v2":
                return self._send(200, {"name": "abx", "version": "2", "extensions": []})
            match = MODEL_PATH.match(path)
            if match is None:
                raise ProtocolError(404, f"no route {method} {path}")
            name, action = match.groups()
            if method == "GET" and action is None:
                return self._send(200, metadata(host, name))
            if method == "GET" and action == "/ready":
                metadata(host, name)
                return self._send(200, {"name": name, "ready": True})
            if method == "POST" and action == "/infer":
                try:
                    body = json.loads(raw)
                except ValueError:
                    raise ProtocolError(400, "the body is not JSON") from None
                answer = infer(host, name, body, self.server.timeout_seconds, received)
                return self._send(200, answer)
            raise ProtocolError(405, f"{method} is not allowed on {path}")
        except ProtocolError as error:
            return self._send(error.status, {"error": str(error)})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")


_log = logging.getLogger(__name__)

BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: 45\r\n\r\n"
    b'{"error":"too many connections: retry later"}'
)


class OipServer(ThreadingHTTPServer):
    """One thread per connection, at most ``max_connections`` of them: one more is answered
    503 at once and closed, so no number of clients can make the process spawn threads
    without end (the Unix socket needs no cap: only this host's workers, as this user, reach it).
    """

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], host: ModelHost, token: str | None, timeout_seconds: float,
        max_connections: int = 64, read_timeout_seconds: float = 30.0,
    ) -> None:  # fmt: skip
        self.host = host
        self.token = token
        self.timeout_seconds = timeout_seconds
        self.read_timeout_seconds = read_timeout_seconds
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(BUSY)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client gone or silent mid-request is a line in the log, not a traceback on
        stderr (socketserver's default); anything else keeps the default."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            _log.info("oip connection dropped: %s", type(error).__name__)
            return
        super().handle_error(request, client_address)


def http_server(
    bind: str, host: ModelHost, token: str | None, timeout_seconds: float = 10.0,
    max_connections: int = 64, read_timeout_seconds: float = 30.0,
) -> OipServer:  # fmt: skip
    """The server for ``--bind``; refuses an address off the loopback without a token."""
    address, _, port = bind.rpartition(":")
    address = address.strip("[]") or "127.0.0.1"
    if not port.isdigit():
        raise ValueError(f"--bind is HOST:PORT, not {bind!r}")
    try:
        loopback = address == "localhost" or ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = False
    if not loopback and not token:
        raise ValueError(
            f"refusing to serve models on {address} without a token: set ABX_INFERENCE_TOKEN "
            "(clients send it as a bearer token), or bind to 127.0.0.1"
        )
    return OipServer((address, int(port)), host, token or None, timeout_seconds,
                     max_connections, read_timeout_seconds)  # fmt: skip
