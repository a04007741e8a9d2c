"""A bounded in-memory queue of items waiting to be sent in batches."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Literal

QueueFull = Literal["drop-oldest", "drop-newest"]


class BatchQueue:
    """Thread-safe; when full, ``policy`` says which item is dropped (and counted)."""

    def __init__(self, max_items: int, policy: QueueFull) -> None:
        if policy not in ("drop-oldest", "drop-newest"):
            raise ValueError(f"queue_full must be 'drop-oldest' or 'drop-newest', not {policy!r}")
        self._items: deque[Any] = deque()
        self._max_items = max(1, max_items)
        self._policy = policy
        self._lock = threading.Lock()
        self.dropped = 0

    def put(self, item: Any) -> bool:
        """Queue the item; False if the queue was full and an item was dropped."""
        with self._lock:
            if len(self._items) < self._max_items:
                self._items.append(item)
                return True
            self.dropped += 1
            if self._policy == "drop-oldest":
                self._items.popleft()
                self._items.append(item)
            return False

    def take(self, limit: int) -> list[Any]:
        with self._lock:
            count = min(limit, len(self._items))
            return [self._items.popleft() for _ in range(count)]

    def put_back(self, items: list[Any]) -> None:
        """Return items taken but not sent to the front, as far as room allows."""
        with self._lock:
            room = self._max_items - len(self._items)
            self.dropped += max(0, len(items) - room)
            for item in reversed(items[: max(0, room)]):
                self._items.appendleft(item)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)
