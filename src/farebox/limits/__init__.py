"""Request rate limits: a limiter interface (counters per key and window), its in-memory
implementation, and the two policies built on it (the free tier and per-key rates)."""

from farebox.limits.base import WINDOWS, Decision, Limiter, window_bounds
from farebox.limits.free import FreeTier
from farebox.limits.keys import KeyRates
from farebox.limits.memory import MemoryLimiter
from farebox.limits.refusal import rate_headers, rate_limited, retry_after_s

__all__ = [
    "WINDOWS",
    "Decision",
    "FreeTier",
    "KeyRates",
    "Limiter",
    "MemoryLimiter",
    "rate_headers",
    "rate_limited",
    "retry_after_s",
    "window_bounds",
]
