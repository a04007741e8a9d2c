"""The inference process's local transport: length-prefixed frames over a Unix socket.

Why a Unix domain socket and not shared memory: a request is a few hundred bytes (a row of
20 floats) to a few hundred kilobytes (a batch for the heavy MLP), so copying it twice through
the kernel costs microseconds; what a round trip costs is waking the other process, and shared
memory needs the same wake-up (a futex, a semaphore or a pipe) plus a ring buffer and its
recovery when either side dies mid-write. A socket gives the wake-up, the framing, back
pressure and death detection (EOF, ECONNREFUSED) for free, and works the same from every
gunicorn thread. ``benchmarks/transport.py`` measures the round trip (README: figures).

A frame is ``<u32 length><u16 header length><JSON header><raw array bytes...>``; the header
names each array's dtype and shape, and the arrays follow in that order, C-contiguous. Only
numpy, json and the standard library: ``benchmarks/gpu_serving.py`` runs it on a bare GPU host.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

PREFIX = struct.Struct("<IH")
MAX_FRAME_BYTES = 256 * 1024 * 1024
ALLOWED_DTYPES = frozenset({"<f4", "<f8", "<i8", "<i4", "|b1"})
"""The element types abx feeds models (``signature.ORT_TYPES``); anything else is refused."""


class TransportError(ConnectionError):
    """The inference process cannot be reached, or hung up mid-request."""


class FrameError(ValueError):
    """A frame that does not follow the format (refused, never half-read)."""


def encode(header: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> bytes:
    specs = []
    buffers = []
    for name, value in arrays.items():
        array = np.ascontiguousarray(value)
        specs.append([name, array.dtype.str, list(array.shape)])
        buffers.append(array.tobytes())
    head = json.dumps({**header, "arrays": specs}, separators=(",", ":")).encode()
    body = b"".join(buffers)
    return PREFIX.pack(2 + len(head) + len(body), len(head)) + head + body


def decode(frame: memoryview) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The header and the arrays of one frame (without its length prefix)."""
    try:
        (head_length,) = struct.unpack_from("<H", frame)
        header = json.loads(bytes(frame[2 : 2 + head_length]))
        offset = 2 + head_length
        arrays = {}
        for name, dtype, shape in header.pop("arrays", []):
            if dtype not in ALLOWED_DTYPES or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise FrameError(f"array {name!r}: dtype {dtype} shape {shape} not accepted")
            count = int(np.prod(shape, dtype=np.int64))
            array = np.frombuffer(frame, dtype=dtype, count=count, offset=offset)
            arrays[str(name)] = array.reshape(shape)
            offset += array.nbytes
    except (ValueError, TypeError, struct.error) as error:  # json, numpy and struct refusals
        raise FrameError(f"malformed frame: {error}") from None
    if offset != len(frame):
        raise FrameError(f"malformed frame: {len(frame) - offset} bytes after the arrays")
    if not isinstance(header, dict):
        raise FrameError("malformed frame: the header is not an object")
    return header, arrays


FIRST_READ_BYTES = 8192
"""The first read's size: a single-row request or answer arrives whole in one system call."""


def read_frame(sock: socket.socket) -> memoryview | None:
    """The next frame without its prefix; None at a clean end of stream.

    The first read may take more than the prefix because each side sends one frame and then
    waits for the other's: nothing follows a frame on the wire until it is answered. Each
    frame gets a buffer of its own, since the arrays decoded from it are views of it.
    """
    buffer = bytearray(FIRST_READ_BYTES)
    view = memoryview(buffer)
    got = sock.recv_into(view)
    if got == 0:
        return None
    while got < 4:
        count = sock.recv_into(view[got:])
        if count == 0:
            raise TransportError("the other side closed the connection")
        got += count
    (length,) = struct.unpack_from("<I", buffer)
    if not 2 <= length <= MAX_FRAME_BYTES:
        raise FrameError(f"frame of {length} bytes refused")
    total = 4 + length
    if got > total:
        raise FrameError("bytes after a frame before its answer")
    if total > len(buffer):
        buffer = buffer[:got] + bytearray(total - got)
        view = memoryview(buffer)
    while got < total:
        count = sock.recv_into(view[got:total])
        if count == 0:
            raise TransportError("the other side closed the connection")
        got += count
    return view[4:total]


class InferenceClient:
    """One connection per thread to an inference process; safe to share across threads.

    A call on a connection that the process closed (it restarted) is retried once on a new
    one: a run has no side effects. ``call`` raises ``TransportError`` when the process is
    down and ``TimeoutError`` when it does not answer in time (that connection is dropped,
    since its answer may still come).
    """

    def __init__(self, path: str, connect_timeout: float = 0.05) -> None:
        self.path = path
        self._connect_timeout = connect_timeout
        self._local = threading.local()
        self._open: set[socket.socket] = set()
        """Every thread's connection, for ``close_all``."""
        self._open_lock = threading.Lock()

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self._connect_timeout)
        try:
            sock.connect(self.path)
        except OSError as error:
            sock.close()
            raise TransportError(f"inference process at {self.path}: {error}") from None
        self._local.sock = sock
        with self._open_lock:
            self._open.add(sock)
        return sock

    def close(self) -> None:
        """Close this thread's connection."""
        sock = getattr(self._local, "sock", None)
        self._local.sock = None
        if sock is not None:
            with self._open_lock:
                self._open.discard(sock)
            sock.close()

    def close_all(self) -> None:
        """Close every thread's connection (at shutdown: a thread still calling fails over
        to a fresh connection, as after a restart of the process)."""
        with self._open_lock:
            socks, self._open = list(self._open), set()
        for sock in socks:
            sock.close()

    def call(
        self, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray], timeout: float
    ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        frame = encode(header, arrays)
        sock = getattr(self._local, "sock", None)
        for fresh in (sock is None, True):
            if sock is None:
                sock = self._connect()
            if sock.gettimeout() != timeout:
                sock.settimeout(max(timeout, 1e-4))
            try:
                sock.sendall(frame)
                reply = read_frame(sock)
                if reply is None:
                    raise TransportError("the inference process closed the connection")
                return decode(reply)
            except TimeoutError:
                self.close()
                raise TimeoutError("the inference process did not answer in time") from None
            except (OSError, FrameError) as error:
                self.close()
                sock = None
                if fresh:
                    raise TransportError(f"inference process at {self.path}: {error}") from None
        raise AssertionError("unreachable")
