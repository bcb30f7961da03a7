"""The limiter interface: fixed-window counters named by a key and a window.

A counter is fully described by (key, window, window start), so an implementation can keep
it anywhere: a dict now, a Redis key `<key>:<window>:<start>` with PEXPIREAT at the window's
end later (one Lua script per `hit`, which is why `hit` both decides and counts).

Windows are fixed and aligned to the epoch, not sliding: "minute" starts on the epoch minute
and "day" at 00:00 UTC (Unix time has no leap seconds, so every UTC day is 86,400,000 ms).
That is what OpenRouter does (its daily limit resets at 00:00 UTC) and it makes the reset
time a client is told exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Window name -> length in milliseconds.
WINDOWS: dict[str, int] = {"minute": 60_000, "day": 86_400_000}


def window_bounds(window: str, now_ms: int) -> tuple[int, int]:
    """(start, end) in epoch milliseconds of the window that contains `now_ms`; end is exclusive."""
    try:
        length = WINDOWS[window]
    except KeyError:
        raise ValueError(f"unknown rate-limit window {window!r}; expected one of {', '.join(WINDOWS)}") from None
    start = now_ms - now_ms % length
    return start, start + length


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int  # what is left in the window after this decision, never negative
    reset_ms: int   # epoch milliseconds when the window ends and the counter starts again at 0


class Limiter(Protocol):
    """Fixed-window counters. Synchronous: the gateway calls it on its event loop."""

    def hit(self, key: str, limit: int, window: str, now_ms: int, cost: int = 1) -> Decision:
        """Atomically: if count + cost > limit, refuse and count nothing; else add cost."""
        ...

    def add(self, key: str, window: str, now_ms: int, amount: int) -> int:
        """Count after the fact (tokens once known); the count may exceed any limit. A negative
        amount gives units back (undoing a hit); the count never goes below 0. Returns the new count."""
        ...

    def peek(self, key: str, limit: int, window: str, now_ms: int) -> Decision:
        """The counter without changing it; `allowed` says whether it is still below `limit`
        (a hit of cost 1 would pass)."""
        ...
