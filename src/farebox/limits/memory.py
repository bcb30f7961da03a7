"""In-memory limiter: one process's counters in a dict.

Memory stays bounded by the live windows: every counter is also filed under the end of its
window, and each call first drops the windows that have ended. A counter is filed once and
dropped once, so the sweep costs amortized O(1) per call; the heap of distinct window ends
is tiny (one end per window kind in use, two when a boundary has just passed).
"""

from __future__ import annotations

import heapq
import threading

from farebox.limits.base import Decision, window_bounds

_Counter = tuple[str, str, int]  # (key, window, window start)


class MemoryLimiter:
    def __init__(self) -> None:
        self._counts: dict[_Counter, int] = {}
        self._expiring: dict[int, list[_Counter]] = {}  # window end -> counters of windows ending then
        self._ends: list[int] = []                       # min-heap of the keys of _expiring
        # The gateway calls from its event loop only; the lock makes `hit` atomic for any
        # other thread too (a CLI or test helper), at the cost of an uncontended acquire.
        self._lock = threading.Lock()

    @property
    def counters(self) -> int:
        """Number of counters held (live windows, once a call has swept the ended ones)."""
        return len(self._counts)

    def hit(self, key: str, limit: int, window: str, now_ms: int, cost: int = 1) -> Decision:
        if limit < 0 or cost < 0:
            raise ValueError(f"limit and cost must not be negative, got limit={limit} cost={cost}")
        start, end = window_bounds(window, now_ms)
        with self._lock:
            self._sweep(now_ms)
            counter = (key, window, start)
            count = self._counts.get(counter, 0)
            if count + cost > limit:
                return Decision(False, limit, max(0, limit - count), end)
            self._store(counter, end, count + cost)
            return Decision(True, limit, limit - count - cost, end)

    def add(self, key: str, window: str, now_ms: int, amount: int) -> int:
        start, end = window_bounds(window, now_ms)
        with self._lock:
            self._sweep(now_ms)
            counter = (key, window, start)
            count = max(0, self._counts.get(counter, 0) + amount)
            self._store(counter, end, count)
            return count

    def peek(self, key: str, limit: int, window: str, now_ms: int) -> Decision:
        start, end = window_bounds(window, now_ms)
        with self._lock:
            self._sweep(now_ms)
            count = self._counts.get((key, window, start), 0)
            return Decision(count < limit, limit, max(0, limit - count), end)

    def _store(self, counter: _Counter, end: int, count: int) -> None:
        if counter not in self._counts:
            bucket = self._expiring.get(end)
            if bucket is None:
                bucket = self._expiring[end] = []
                heapq.heappush(self._ends, end)
            bucket.append(counter)
        self._counts[counter] = count

    def _sweep(self, now_ms: int) -> None:
        while self._ends and self._ends[0] <= now_ms:
            for counter in self._expiring.pop(heapq.heappop(self._ends)):
                del self._counts[counter]
