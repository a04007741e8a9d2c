"""Rate-limit counters in a memory-mapped file: one count per window, shared by every
gunicorn worker on the host (what ``limits``' in-memory storage is not).

A ``limits`` storage (scheme ``abx+file://``, the fixed-window strategy) over a fixed table
of slots in ``$ABX_DATA_DIR/access/rate-limits.bin``. Each operation takes the file's lock
(``fcntl``, plus a thread lock, since ``fcntl`` locks belong to the process), probes at most
``PROBES`` slots from the key's hash, and works on one slot: microseconds, no server. Every
process that opens the same file shares the counts, workers and servers on the host alike;
replicas on other hosts do not: they need ``ABX_REDIS_URL``. When every probed slot holds a
live window, the one ending soonest is reused, so a table far too small for the traffic
forgets counts rather than growing: ``SLOTS`` (65,536) bounds the live windows.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any

from limits.storage import Storage

SLOTS = 65_536
PROBES = 32
_SLOT = struct.Struct("<16sdq")  # key digest, window end (unix time), count
_MAGIC = b"abx-rate-limits\x01"


class SharedFileStorage(Storage):
    STORAGE_SCHEME = ["abx+file"]  # noqa: RUF012  (limits declares it a list)

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any):
        super().__init__(uri, wrap_exceptions=wrap_exceptions)
        path = Path((uri or "").removeprefix("abx+file://"))
        path.parent.mkdir(parents=True, exist_ok=True)
        self._size = len(_MAGIC) + SLOTS * _SLOT.size
        self._descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._thread_lock = threading.Lock()
        with self:
            if os.fstat(self._descriptor).st_size != self._size:
                os.ftruncate(self._descriptor, 0)
                os.ftruncate(self._descriptor, self._size)
                os.pwrite(self._descriptor, _MAGIC, 0)
        self._map = mmap.mmap(self._descriptor, self._size)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return OSError

    def __enter__(self) -> None:
        """Hold the table: this thread against the process's others, the process against
        every other process that opened the file."""
        self._thread_lock.acquire()
        try:
            fcntl.flock(self._descriptor, fcntl.LOCK_EX)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        self._thread_lock.release()

    def _find(self, digest: bytes, now: float) -> tuple[int, float, int, bool]:
        """(offset, window end, count, found) of the key's slot, or of the slot to reuse."""
        start = int.from_bytes(digest[:8], "little") % SLOTS
        reuse: tuple[int, float, int] | None = None
        for step in range(PROBES):
            offset = len(_MAGIC) + ((start + step) % SLOTS) * _SLOT.size
            stored, ends, count = _SLOT.unpack_from(self._map, offset)
            if stored == digest:
                return offset, ends, count, ends > now
            if ends <= now:  # free or expired
                if reuse is None or reuse[1] > 0:
                    reuse = (offset, 0.0, 0)
            elif reuse is None or ends < reuse[1]:
                reuse = (offset, ends, count)
        assert reuse is not None
        return reuse[0], 0.0, 0, False

    def _slot(self, key: str) -> tuple[bytes, float]:
        return hashlib.blake2b(key.encode(), digest_size=16).digest(), time.time()

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        digest, now = self._slot(key)
        with self:
            offset, ends, count, live = self._find(digest, now)
            if live:
                count += amount
            else:
                ends, count = now + expiry, amount
            _SLOT.pack_into(self._map, offset, digest, ends, count)
            return count

    def get(self, key: str) -> int:
        digest, now = self._slot(key)
        with self:
            _, _, count, live = self._find(digest, now)
            return count if live else 0

    def get_expiry(self, key: str) -> float:
        digest, now = self._slot(key)
        with self:
            _, ends, _, live = self._find(digest, now)
            return ends if live else now

    def check(self) -> bool:
        return not self._map.closed

    def reset(self) -> int | None:
        with self:
            self._map[len(_MAGIC) :] = bytes(SLOTS * _SLOT.size)
        return None

    def clear(self, key: str) -> None:
        digest, now = self._slot(key)
        with self:
            offset, _, _, live = self._find(digest, now)
            if live:
                _SLOT.pack_into(self._map, offset, bytes(16), 0.0, 0)
