"""Per-key spending windows: UTC day, week from Monday, month; lazy roll-over."""

from __future__ import annotations

import calendar
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from farebox.clock import FakeClock
from farebox.ledger.usage import PERIODS, KeyUsage, period_start


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> int:
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))


@pytest.mark.parametrize(("now", "period", "start"), [
    # 2026-03-01 is a Sunday.
    (utc(2026, 3, 1), "daily", utc(2026, 3, 1)),
    (utc(2026, 3, 1), "weekly", utc(2026, 2, 23)),
    (utc(2026, 3, 1), "monthly", utc(2026, 3, 1)),
    (utc(2026, 2, 28, 23, 59, 59), "daily", utc(2026, 2, 28)),
    (utc(2026, 2, 28, 23, 59, 59), "monthly", utc(2026, 2, 1)),
    # Sunday 23:59:59 is still the week that began on Monday; one second later a new week.
    (utc(2026, 3, 1, 23, 59, 59), "weekly", utc(2026, 2, 23)),
    (utc(2026, 3, 1, 23, 59, 59), "daily", utc(2026, 3, 1)),
    (utc(2026, 3, 2), "weekly", utc(2026, 3, 2)),
    (utc(2026, 3, 2, 0, 0, 1), "weekly", utc(2026, 3, 2)),
    # Year end: 2026-12-31 is a Thursday; the week runs on into 2027.
    (utc(2026, 12, 31, 23, 59, 59), "daily", utc(2026, 12, 31)),
    (utc(2026, 12, 31, 23, 59, 59), "weekly", utc(2026, 12, 28)),
    (utc(2026, 12, 31, 23, 59, 59), "monthly", utc(2026, 12, 1)),
    (utc(2027, 1, 1), "daily", utc(2027, 1, 1)),
    (utc(2027, 1, 1), "weekly", utc(2026, 12, 28)),
    (utc(2027, 1, 1), "monthly", utc(2027, 1, 1)),
    # Leap day.
    (utc(2028, 2, 29, 12), "monthly", utc(2028, 2, 1)),
    (utc(2028, 2, 29, 12), "daily", utc(2028, 2, 29)),
])
def test_period_start(now: int, period: str, start: int) -> None:
    assert period_start(now, period) == start


def test_period_start_with_fractional_seconds() -> None:
    assert period_start(utc(2026, 3, 2) - 0.001, "daily") == utc(2026, 3, 1)
    assert period_start(utc(2026, 3, 2) + 0.999, "weekly") == utc(2026, 3, 2)


@given(st.integers(min_value=utc(2000, 1, 1), max_value=utc(2100, 1, 1)))
def test_period_start_properties(now: int) -> None:
    day = period_start(now, "daily")
    assert day <= now < day + 86400 and day % 86400 == 0
    week = period_start(now, "weekly")
    assert week <= day < week + 7 * 86400
    assert calendar.weekday(*_ymd(week)) == 0  # Monday
    month = period_start(now, "monthly")
    assert month <= day and _ymd(month)[2] == 1 and _ymd(month)[:2] == _ymd(now)[:2]


def _ymd(t: int) -> tuple[int, int, int]:
    g = time.gmtime(t)
    return g.tm_year, g.tm_mon, g.tm_mday


def test_daily_window_rolls_at_midnight() -> None:
    clock = FakeClock(utc(2026, 3, 3, 23, 59, 0))  # a Tuesday
    usage = KeyUsage()
    usage.add(100, clock.now())
    assert usage.in_period("daily", clock.now()) == 100
    clock.advance(59)
    assert usage.in_period("daily", clock.now()) == 100
    clock.advance(1)  # 00:00:00
    assert usage.in_period("daily", clock.now()) == 0
    assert usage.in_period("weekly", clock.now()) == 100
    assert usage.in_period("monthly", clock.now()) == 100
    assert usage.in_period(None, clock.now()) == 100
    usage.add(5, clock.now())
    assert usage.in_period("daily", clock.now()) == 5
    assert usage.in_period("weekly", clock.now()) == 105


def test_weekly_window_rolls_on_monday() -> None:
    clock = FakeClock(utc(2026, 3, 1, 23, 0, 0))  # Sunday
    usage = KeyUsage()
    usage.add(70, clock.now())
    clock.advance(3599)
    assert usage.in_period("weekly", clock.now()) == 70
    clock.advance(1)  # Monday 00:00
    assert usage.in_period("weekly", clock.now()) == 0
    assert usage.in_period("daily", clock.now()) == 0
    assert usage.in_period("monthly", clock.now()) == 70  # still March
    assert usage.total == 70


def test_monthly_window_rolls_on_the_first() -> None:
    clock = FakeClock(utc(2026, 12, 31, 23, 59, 59))
    usage = KeyUsage()
    usage.add(3, clock.now())
    clock.advance(1)  # 2027-01-01, a Friday
    assert usage.in_period("monthly", clock.now()) == 0
    assert usage.in_period("daily", clock.now()) == 0
    assert usage.in_period("weekly", clock.now()) == 3  # the week began Monday 2026-12-28
    assert usage.in_period(None, clock.now()) == 3


def test_total_never_resets() -> None:
    clock = FakeClock(utc(2026, 1, 1))
    usage = KeyUsage()
    for day in range(120):
        usage.add(day + 1, clock.now())
        clock.advance(86400)
        for period in PERIODS:
            usage.in_period(period, clock.now())
    assert usage.total == sum(range(1, 121))
    assert usage.in_period(None, clock.now()) == usage.total
    assert usage.in_period("daily", clock.now()) == 0


def test_window_after_a_long_gap_starts_empty() -> None:
    clock = FakeClock(utc(2026, 1, 15))
    usage = KeyUsage()
    usage.add(9, clock.now())
    clock.advance(366 * 86400)  # the same calendar day-of-month a year on must not revive it
    for period in PERIODS:
        assert usage.in_period(period, clock.now()) == 0


def test_seed_loads_per_period_sums() -> None:
    clock = FakeClock(utc(2026, 3, 4, 12))
    usage = KeyUsage()
    usage.seed(1000, {"daily": 10, "weekly": 100, "monthly": 500}, clock.now())
    assert [usage.in_period(p, clock.now()) for p in (None, *PERIODS)] == [1000, 10, 100, 500]
    clock.advance(12 * 3600)  # Thursday 00:00
    assert [usage.in_period(p, clock.now()) for p in (None, *PERIODS)] == [1000, 0, 100, 500]
