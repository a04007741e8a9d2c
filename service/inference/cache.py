"""Opt-in prediction cache: outputs by model SHA-256 and input content, bounded and expiring.

Keyed on the model file's digest, so a new model (a new checksum) never serves
an old model's answers, and on a digest of the converted inputs (name, dtype,
shape and bytes), so equal inputs hit whatever JSON spelling they came in.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

import numpy as np

Outputs = dict[str, np.ndarray]


def input_digest(feeds: Mapping[str, np.ndarray]) -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(feeds):
        array = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.digest()


class PredictionCache:
    def __init__(
        self,
        max_entries: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        spec: object = None,
    ) -> None:
        self.spec = spec
        """The configuration it was built from: a reload keeps the cache while it is unchanged."""
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[tuple[str, bytes], tuple[float, Outputs]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, model_sha256: str, digest: bytes) -> Outputs | None:
        key = (model_sha256, digest)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] <= self._clock():
                if entry is not None:
                    del self._entries[key]
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1]

    def put(self, model_sha256: str, digest: bytes, outputs: Outputs) -> None:
        with self._lock:
            self._entries[(model_sha256, digest)] = (self._clock() + self._ttl, outputs)
            self._entries.move_to_end((model_sha256, digest))
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
