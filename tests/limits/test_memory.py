"""MemoryLimiter: fixed windows aligned to the epoch minute and the UTC day, exact resets,
all-or-nothing hits, after-the-fact counts, and memory that only holds live windows."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farebox.clock import FakeClock
from farebox.limits import Decision, MemoryLimiter, window_bounds

MIDNIGHT_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, where FakeClock starts
MINUTE_MS = 60_000
DAY_MS = 86_400_000


def test_window_bounds_are_aligned_to_the_epoch_minute_and_the_utc_day() -> None:
    now = MIDNIGHT_MS + 5 * 3_600_000 + 7 * MINUTE_MS + 12_345  # 05:07:12.345
    assert window_bounds("minute", now) == (MIDNIGHT_MS + 307 * MINUTE_MS, MIDNIGHT_MS + 308 * MINUTE_MS)
    assert window_bounds("day", now) == (MIDNIGHT_MS, MIDNIGHT_MS + DAY_MS)
    # The end is exclusive: the first millisecond of the next window belongs to it.
    assert window_bounds("minute", MIDNIGHT_MS + MINUTE_MS)[0] == MIDNIGHT_MS + MINUTE_MS
    assert window_bounds("day", MIDNIGHT_MS - 1) == (MIDNIGHT_MS - DAY_MS, MIDNIGHT_MS)
    with pytest.raises(ValueError, match="unknown rate-limit window 'hour'"):
        window_bounds("hour", now)


def test_minute_window_counts_until_the_epoch_minute_ends() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter()
    clock.advance(30)  # 00:00:30
    first = limiter.hit("k", 3, "minute", clock.now_ms())
    assert first == Decision(True, 3, 2, MIDNIGHT_MS + MINUTE_MS)
    assert limiter.hit("k", 3, "minute", clock.now_ms()).remaining == 1
    clock.advance(29.5)  # 00:00:59.5, same window
    assert limiter.hit("k", 3, "minute", clock.now_ms()) == Decision(True, 3, 0, MIDNIGHT_MS + MINUTE_MS)
    assert limiter.hit("k", 3, "minute", clock.now_ms()) == Decision(False, 3, 0, MIDNIGHT_MS + MINUTE_MS)
    # One millisecond before the boundary is still the old window; the boundary itself is new.
    assert not limiter.hit("k", 3, "minute", MIDNIGHT_MS + MINUTE_MS - 1).allowed
    clock.advance(0.5)  # 00:01:00.000
    assert limiter.hit("k", 3, "minute", clock.now_ms()) == Decision(True, 3, 2, MIDNIGHT_MS + 2 * MINUTE_MS)


def test_day_window_runs_from_utc_midnight_to_midnight() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter()
    clock.advance(23 * 3600 + 59 * 60)  # 23:59
    assert limiter.hit("k", 2, "day", clock.now_ms()) == Decision(True, 2, 1, MIDNIGHT_MS + DAY_MS)
    assert limiter.hit("k", 2, "day", MIDNIGHT_MS + 1) == Decision(True, 2, 0, MIDNIGHT_MS + DAY_MS)
    assert limiter.hit("k", 2, "day", MIDNIGHT_MS + DAY_MS - 1) == Decision(False, 2, 0, MIDNIGHT_MS + DAY_MS)
    clock.advance(60)  # 00:00 the next day
    assert clock.now_ms() == MIDNIGHT_MS + DAY_MS
    assert limiter.hit("k", 2, "day", clock.now_ms()) == Decision(True, 2, 1, MIDNIGHT_MS + 2 * DAY_MS)


def test_a_refused_hit_counts_nothing() -> None:
    limiter = MemoryLimiter()
    now = MIDNIGHT_MS
    assert limiter.hit("k", 5, "minute", now, cost=3).allowed
    refused = limiter.hit("k", 5, "minute", now, cost=3)
    assert refused == Decision(False, 5, 2, MIDNIGHT_MS + MINUTE_MS)
    # The refused 3 were not counted: exactly the 2 left still fit.
    assert limiter.hit("k", 5, "minute", now, cost=2) == Decision(True, 5, 0, MIDNIGHT_MS + MINUTE_MS)
    assert not limiter.hit("k", 5, "minute", now).allowed


def test_keys_and_windows_are_separate_counters() -> None:
    limiter = MemoryLimiter()
    now = MIDNIGHT_MS
    assert limiter.hit("a", 1, "minute", now).allowed
    assert not limiter.hit("a", 1, "minute", now).allowed
    assert limiter.hit("b", 1, "minute", now).allowed
    assert limiter.hit("a", 1, "day", now).allowed  # same key, other window
    assert limiter.counters == 3


def test_add_counts_after_the_fact_past_the_limit() -> None:
    limiter = MemoryLimiter()
    now = MIDNIGHT_MS + 10_000
    assert limiter.add("tokens", "minute", now, 700) == 700
    assert limiter.peek("tokens", 1000, "minute", now) == Decision(True, 1000, 300, MIDNIGHT_MS + MINUTE_MS)
    assert limiter.add("tokens", "minute", now, 700) == 1400  # may exceed the limit
    assert limiter.peek("tokens", 1000, "minute", now) == Decision(False, 1000, 0, MIDNIGHT_MS + MINUTE_MS)
    assert not limiter.hit("tokens", 1000, "minute", now).allowed
    # A negative amount gives units back, never below zero.
    assert limiter.add("tokens", "minute", now, -1000) == 400
    assert limiter.add("tokens", "minute", now, -1000) == 0
    assert limiter.add("tokens", "minute", now + MINUTE_MS, 5) == 5  # the next minute starts at 0


def test_peek_changes_nothing() -> None:
    limiter = MemoryLimiter()
    now = MIDNIGHT_MS
    assert limiter.peek("k", 2, "minute", now) == Decision(True, 2, 2, MIDNIGHT_MS + MINUTE_MS)
    assert limiter.counters == 0  # peeking at an unknown counter does not create it
    limiter.hit("k", 2, "minute", now)
    limiter.hit("k", 2, "minute", now)
    for _ in range(3):
        assert limiter.peek("k", 2, "minute", now) == Decision(False, 2, 0, MIDNIGHT_MS + MINUTE_MS)
    # A different limit reads the same counter: the key and window name it, not the limit.
    assert limiter.peek("k", 3, "minute", now) == Decision(True, 3, 1, MIDNIGHT_MS + MINUTE_MS)


def test_limit_zero_refuses_and_negative_values_are_errors() -> None:
    limiter = MemoryLimiter()
    assert limiter.hit("k", 0, "minute", MIDNIGHT_MS) == Decision(False, 0, 0, MIDNIGHT_MS + MINUTE_MS)
    with pytest.raises(ValueError):
        limiter.hit("k", -1, "minute", MIDNIGHT_MS)
    with pytest.raises(ValueError):
        limiter.hit("k", 5, "minute", MIDNIGHT_MS, cost=-1)
    with pytest.raises(ValueError):
        limiter.add("k", "week", MIDNIGHT_MS, 1)


def test_memory_holds_only_live_windows() -> None:
    clock = FakeClock()
    limiter = MemoryLimiter()
    # Three days of traffic, minute by minute, from ten different keys each minute.
    for minute in range(3 * 24 * 60):
        for k in range(10):
            limiter.hit(f"key-{minute}-{k}", 5, "minute", clock.now_ms())
        limiter.hit("steady", 10**9, "day", clock.now_ms())
        # Never more than this minute's ten counters plus the day's one.
        assert limiter.counters <= 11
        clock.advance(60)
    # A day counter is dropped once its day has ended, too.
    assert limiter.peek("steady", 10**9, "day", clock.now_ms()).remaining == 10**9
    assert limiter.counters == 0


def test_a_clock_that_steps_back_does_not_resurrect_or_leak() -> None:
    limiter = MemoryLimiter()
    later = MIDNIGHT_MS + 10 * MINUTE_MS
    limiter.hit("k", 5, "minute", later)
    limiter.hit("k", 5, "minute", MIDNIGHT_MS)  # an earlier minute (clock stepped back)
    assert limiter.counters == 2
    limiter.peek("k", 5, "minute", later + MINUTE_MS)
    assert limiter.counters == 0


@settings(max_examples=300, deadline=None)
@given(
    limit=st.integers(min_value=0, max_value=50),
    hits=st.lists(st.tuples(st.integers(min_value=0, max_value=59_999), st.integers(min_value=0, max_value=7)),
                  max_size=200),
)
def test_allowed_hits_never_exceed_the_limit(limit: int, hits: list[tuple[int, int]]) -> None:
    """Any sequence of hits of any cost at any instants of one window: the allowed costs sum to at
    most the limit, a hit is refused only when it would not fit, and `remaining` tells the truth."""
    limiter = MemoryLimiter()
    start = MIDNIGHT_MS + 42 * MINUTE_MS
    counted = 0
    for offset, cost in hits:
        decision = limiter.hit("k", limit, "minute", start + offset, cost=cost)
        assert decision.allowed == (counted + cost <= limit)
        if decision.allowed:
            counted += cost
        assert decision.remaining == limit - counted
        assert decision.reset_ms == start + MINUTE_MS
    assert counted <= limit
