"""Spending per key in UTC calendar windows: day, week (from Monday) and month.

Windows roll over lazily when read or added to, using the clock passed in, so a key's
`usage_daily` drops to zero at midnight UTC without any timer.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

PERIODS = ("daily", "weekly", "monthly")


def period_start(now: float, period: str) -> int:
    """Unix seconds at which the UTC day, week (Monday) or month containing `now` began."""
    day = dt.datetime.fromtimestamp(now, dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        start = day
    elif period == "weekly":
        start = day - dt.timedelta(days=day.weekday())
    elif period == "monthly":
        start = day.replace(day=1)
    else:  # pragma: no cover - callers validate
        raise ValueError(period)
    return int(start.timestamp())


def period_end(start: int, period: str) -> int:
    """Unix seconds at which the window that began at `start` ends."""
    day = dt.datetime.fromtimestamp(start, dt.UTC)
    if period == "daily":
        end = day + dt.timedelta(days=1)
    elif period == "weekly":
        end = day + dt.timedelta(days=7)
    else:
        end = (day.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    return int(end.timestamp())


@dataclass(slots=True)
class Window:
    start: int = -1
    amount: int = 0
    end: int = -1     # when `start`'s window ends: until then no calendar arithmetic is needed


@dataclass(slots=True)
class KeyUsage:
    total: int = 0
    windows: dict[str, Window] = field(default_factory=lambda: {p: Window() for p in PERIODS})

    def _roll(self, period: str, now: float) -> Window:
        window = self.windows[period]
        if window.start <= now < window.end:
            return window   # the common case, on every charge: still the same window
        start = period_start(now, period)
        if window.start != start:
            window.start, window.amount = start, 0
        window.end = period_end(start, period)
        return window

    def add(self, amount: int, now: float) -> None:
        self.total += amount
        for period in PERIODS:
            self._roll(period, now).amount += amount

    def remove(self, amount: int, added_at: float) -> None:
        """Take back an amount added at `added_at`: from the total, and from each window
        only if that window is still the one the amount went into."""
        self.total -= amount
        for period in PERIODS:
            window = self.windows[period]
            if window.start <= added_at < window.end:
                window.amount -= amount

    def in_period(self, period: str | None, now: float) -> int:
        """Spending counted against a limit that resets per `period` (None = lifetime)."""
        return self.total if period is None else self._roll(period, now).amount

    def seed(self, total: int, per_period: dict[str, int], now: float) -> None:
        """Load sums computed from stored entries at start-up."""
        self.total = total
        for period in PERIODS:
            window = self._roll(period, now)
            window.amount = per_period.get(period, 0)
