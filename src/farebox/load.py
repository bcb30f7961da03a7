"""Whether this process has CPU to spare, for choices that trade CPU for latency.

The relay's one such choice: a stream's first token is sent on its own (`Sink.flush`) rather
than in the same send as whatever arrived with it, so the client does not wait while the
rest of the upstream's read is relayed and, when the stream ended in it, the charge is
journaled. That is one more send per stream when the first token did not arrive alone.
While the process is idle the send costs nothing that anyone waits for: on the bench's VM
the first write left 0.3-0.5 ms sooner after the upstream's read (perf trace), and the time
to first token the client saw fell by 0.05-0.1 ms. Under full load it cost 44 µs of CPU a
stream (-12% in the SSE throughput scenario), and the first token's wait is then the queue,
not the cork. See docs/performance.md.
"""

from __future__ import annotations

from farebox.clock import Clock

WINDOW_S = 0.1   # CPU use is measured over at least this much wall time
BUSY_AT = 0.5    # CPU seconds per wall second (all threads) from which the process is busy


class CpuLoad:
    """This process's CPU time over the wall time since it last looked, looked at no more
    often than every `window_s`: one monotonic read per question, one CPU-time read (a
    system call) per window. Idle until the first window has passed."""

    __slots__ = ("_at", "_busy", "_cpu", "busy_at", "clock", "window_s")

    def __init__(self, clock: Clock, window_s: float = WINDOW_S, busy_at: float = BUSY_AT) -> None:
        assert window_s > 0 and busy_at > 0
        self.clock = clock
        self.window_s = window_s
        self.busy_at = busy_at
        self._at = clock.monotonic()
        self._cpu = clock.cpu_time()
        self._busy = False

    def busy(self) -> bool:
        now = self.clock.monotonic()
        elapsed = now - self._at
        if elapsed >= self.window_s:
            cpu = self.clock.cpu_time()
            self._busy = cpu - self._cpu >= self.busy_at * elapsed
            self._at, self._cpu = now, cpu
        return self._busy
