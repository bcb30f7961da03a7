"""The only reader of wall time (and of this process's CPU time). Everything that needs 'now'
takes a Clock, so tests can move time by hand instead of sleeping."""

from __future__ import annotations

import time


class Clock:
    """Wall time for records and expiry; monotonic time for durations."""

    def now(self) -> float:
        return time.time()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    def cpu_time(self) -> float:
        """CPU seconds this process has used, all threads (a system call, not the vDSO)."""
        return time.process_time()


class FakeClock(Clock):
    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01T00:00:00Z
        self._now = start
        self._mono = 1000.0
        self._cpu = 0.0

    def now(self) -> float:
        return self._now

    def now_ms(self) -> int:
        return int(self._now * 1000)

    def monotonic(self) -> float:
        return self._mono

    def cpu_time(self) -> float:
        return self._cpu

    def use_cpu(self, seconds: float) -> None:
        assert seconds >= 0
        self._cpu += seconds

    def advance(self, seconds: float) -> None:
        assert seconds >= 0
        self._now += seconds
        self._mono += seconds
