"""KeyRates: optional per-key requests-per-minute and tokens-per-minute limits."""

from __future__ import annotations

import orjson
import pytest

from farebox.api.errors import error_body, error_headers
from farebox.clock import FakeClock
from farebox.errors import RateLimited
from farebox.limits import KeyRates, MemoryLimiter

MIDNIGHT_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, where FakeClock starts
MINUTE_MS = 60_000
KEY = "3f9a" * 16


def refusal(rates: KeyRates, rpm: int | None, tpm: int | None, now_ms: int, key: str = KEY) -> RateLimited:
    with pytest.raises(RateLimited) as caught:
        rates.check(key, rpm, tpm, now_ms)
    return caught.value


def test_requests_per_minute_then_the_exact_429() -> None:
    clock = FakeClock()
    rates = KeyRates(MemoryLimiter())
    clock.advance(20.5)  # 00:00:20.5
    for _ in range(3):
        rates.check(KEY, 3, None, clock.now_ms())
    error = refusal(rates, 3, None, clock.now_ms())
    assert error.status == 429
    assert orjson.loads(error_body(error)) == {"error": {
        "code": 429,
        "message": "Rate limit exceeded: key requests per minute (3)",
        "metadata": {
            "headers": {"X-RateLimit-Limit": "3", "X-RateLimit-Remaining": "0",
                        "X-RateLimit-Reset": str(MIDNIGHT_MS + MINUTE_MS)},
            "limit_source": "key",
            "provider_name": None,
            "error_type": "rate_limit_exceeded",
        },
    }}
    assert {k.decode(): v.decode() for k, v in error_headers(error)} == {
        "x-ratelimit-limit": "3", "x-ratelimit-remaining": "0",
        "x-ratelimit-reset": str(MIDNIGHT_MS + MINUTE_MS), "retry-after": "40"}  # 39.5 s rounded up
    clock.advance(39.5)  # 00:01:00: a new minute
    rates.check(KEY, 3, None, clock.now_ms())


def test_tokens_per_minute_refuses_once_the_minute_has_used_them() -> None:
    clock = FakeClock()
    rates = KeyRates(MemoryLimiter())
    rates.check(KEY, None, 1000, clock.now_ms())
    rates.used(KEY, 600, clock.now_ms())
    rates.check(KEY, None, 1000, clock.now_ms())  # 600 < 1000: allowed
    rates.used(KEY, 399, clock.now_ms())
    rates.check(KEY, None, 1000, clock.now_ms())  # 999 < 1000: allowed, even if it will overshoot
    rates.used(KEY, 5000, clock.now_ms())
    error = refusal(rates, None, 1000, clock.now_ms())
    assert error.message == "Rate limit exceeded: key tokens per minute (1000)"
    assert error.metadata == {
        "headers": {"X-RateLimit-Limit": "1000", "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(MIDNIGHT_MS + MINUTE_MS)},
        "limit_source": "key",
        "provider_name": None,
    }
    assert error.headers["Retry-After"] == "60"
    clock.advance(60)  # the tokens of the last minute no longer count
    rates.check(KEY, None, 1000, clock.now_ms())


def test_a_request_refused_for_tokens_does_not_count_as_a_request() -> None:
    rates = KeyRates(MemoryLimiter())
    now = MIDNIGHT_MS
    rates.check(KEY, 2, 100, now)
    rates.used(KEY, 100, now)
    for _ in range(5):
        assert refusal(rates, 2, 100, now).message.endswith("key tokens per minute (100)")
    # With the token limit lifted, the second of two requests is still available.
    rates.check(KEY, 2, None, now)
    assert refusal(rates, 2, None, now).message == "Rate limit exceeded: key requests per minute (2)"


def test_no_limits_means_no_counting() -> None:
    limiter = MemoryLimiter()
    rates = KeyRates(limiter)
    for _ in range(1000):
        rates.check(KEY, None, None, MIDNIGHT_MS)
    assert limiter.counters == 0


def test_keys_are_limited_apart() -> None:
    rates = KeyRates(MemoryLimiter())
    rates.check("a", 1, None, MIDNIGHT_MS)
    rates.check("b", 1, None, MIDNIGHT_MS)
    rates.used("a", 50, MIDNIGHT_MS)
    refusal(rates, 1, None, MIDNIGHT_MS, key="a")
    refusal(rates, None, 50, MIDNIGHT_MS, key="a")
    rates.check("b", None, 50, MIDNIGHT_MS)  # b used no tokens


def test_used_ignores_nothing_used() -> None:
    limiter = MemoryLimiter()
    rates = KeyRates(limiter)
    rates.used(KEY, 0, MIDNIGHT_MS)
    assert limiter.counters == 0
