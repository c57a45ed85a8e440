"""A least-recently-used cache bounded in entries and in bytes, safe to share between threads."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Callable, Generic, Hashable, Optional, TypeVar

V = TypeVar("V")


class LRUCache(Generic[V]):
    """At most ``max_entries`` values and ``max_bytes`` of them (``size(value)`` bytes each); the least
    recently used go first. A value larger than ``max_bytes`` is returned by ``put`` but not kept."""

    def __init__(self, max_entries: int, max_bytes: int, size: Callable[[V], int]):
        for name, value in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.max_entries, self.max_bytes, self._size = max_entries, max_bytes, size
        self._entries: "OrderedDict[Hashable, tuple]" = OrderedDict()  # key -> (value, bytes)
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def get(self, key: Hashable) -> Optional[V]:
        with self._lock:
            hit = self._entries.get(key)
            if hit is None:
                return None
            self._entries.move_to_end(key)
            return hit[0]

    def put(self, key: Hashable, value: V) -> V:
        nbytes = int(self._size(value))
        if nbytes > self.max_bytes:
            return value
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (value, nbytes)
            self._bytes += nbytes
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, (_, n) = self._entries.popitem(last=False)
                self._bytes -= n
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
