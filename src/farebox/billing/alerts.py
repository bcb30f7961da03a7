"""Low-balance alerts: which thresholds a balance change crosses, how fast an organization
spends, when its balance runs out, and what the alert says. Pure: no I/O, no wall time,
integer nano-dollars and integer milliseconds throughout (delivery is `billing.notify`).

A threshold is *armed* while the balance was last seen at or above it. It fires when a
balance change goes from at-or-above to below it while armed, and re-arms once a change
leaves the balance at or above it again. The crossing test alone fires once per downward
crossing when changes arrive in order; the armed state additionally absorbs duplicated or
racing observations (two charges that both report the same `before`), and it is what can
be persisted (`snapshot`/`restore`) so a restart neither forgets nor repeats an alert.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from farebox.money import usd_text

DAY_MS = 86_400_000
_EPOCH_DATE = date(1970, 1, 1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LAST_MS = ((date.max - _EPOCH_DATE).days + 1) * DAY_MS - 1  # the last millisecond `date` can name


def utc_date(at_ms: int) -> date:
    """The UTC calendar day of a Unix time in milliseconds, by integer division (no floats)."""
    return _EPOCH_DATE + timedelta(days=at_ms // DAY_MS)


def iso_utc(at_ms: int) -> str:
    """`2026-01-01T00:00:00.000Z` for a Unix time in milliseconds."""
    return (_EPOCH + timedelta(milliseconds=at_ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_id(*parts: Any) -> str:
    """A stable id for an event from what identifies it: the same parts give the same id on
    every attempt and after a restart, so receivers can drop duplicates by it."""
    digest = hashlib.sha256(orjson.dumps(list(parts), option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"evt_{digest[:32]}"


def one_line(text: str) -> str:
    """Whitespace (newlines included) collapsed to single spaces: for subjects and headers,
    where a newline from an organization's name must not start a new header."""
    return " ".join(text.split())


@dataclass(frozen=True, slots=True)
class Threshold:
    name: str              # "warning", "urgent"; unique per organization: the armed state is keyed by it
    below_nanos: int
    emails: tuple[str, ...] = ()
    webhooks: tuple[str, ...] = ()   # URLs

    def __post_init__(self) -> None:
        assert self.name and self.name == one_line(self.name), self.name
        assert type(self.below_nanos) is int and self.below_nanos >= 0, self.below_nanos
        assert isinstance(self.emails, tuple) and isinstance(self.webhooks, tuple)


@dataclass(frozen=True, slots=True)
class Alert:
    org_id: int
    org_name: str
    threshold: Threshold
    balance_nanos: int
    avg_daily_spend_nanos: int
    runs_out_on: date | None   # None: no recent spend, so no projection
    at_ms: int

    @property
    def id(self) -> str:
        return event_id("balance.low", self.org_id, self.threshold.name, self.threshold.below_nanos,
                        self.balance_nanos, self.at_ms)

    def subject(self) -> str:
        return one_line(f"Farebox {self.threshold.name}: {self.org_name} balance is {dollars(self.balance_nanos)}, "
                        f"below {dollars(self.threshold.below_nanos)}")

    def text(self) -> str:
        if self.runs_out_on is None:
            projection = "Projected run-out date: none, no recent spend."
        else:
            projection = f"Projected run-out date: {self.runs_out_on.isoformat()} (UTC) at the average daily spend."
        return (
            f"Organization: {one_line(self.org_name)}\n"
            f"Threshold: {self.threshold.name} (below {dollars(self.threshold.below_nanos)})\n"
            f"Balance: {dollars(self.balance_nanos)}\n"
            f"Average daily spend: {dollars(self.avg_daily_spend_nanos)}\n"
            f"{projection}\n"
            f"\n"
            f"Add credits, or set up auto top-up, so requests keep being served when the balance reaches zero.\n"
        )

    def payload(self) -> dict[str, Any]:
        """The webhook body. Amounts are exact decimal USD strings: a JSON float would round them."""
        return {
            "id": self.id,
            "type": "balance.low",
            "created_at": iso_utc(self.at_ms),
            "org": {"id": self.org_id, "name": self.org_name},
            "threshold": {"name": self.threshold.name, "below": usd_text(self.threshold.below_nanos)},
            "balance": usd_text(self.balance_nanos),
            "avg_daily_spend": usd_text(self.avg_daily_spend_nanos),
            "runs_out_on": None if self.runs_out_on is None else self.runs_out_on.isoformat(),
        }


def dollars(nanos: int) -> str:
    """Exact USD for people: at least cents ("$20.00", "$19.5" -> "$19.50"), every further
    digit kept ("$0.000012345"), sign in front ("-$1.25")."""
    sign, text = ("-", usd_text(-nanos)) if nanos < 0 else ("", usd_text(nanos))
    whole, _, fraction = text.partition(".")
    return f"{sign}${whole}.{fraction.ljust(2, '0')}"


class SpendWindow:
    """Average daily spend over the last N days (default 7) from per-UTC-day totals kept in a
    bounded ring; `add(amount_nanos, at_ms)` on every charge (O(1)); `average_daily(at_ms)` in
    integer nano-dollars (floor); `runs_out_on(balance, at_ms)` the UTC date the balance reaches
    zero at that average, or None when the average is 0.

    The window is the N UTC days ending with the day of `at_ms`, today's partial day included.
    An organization with less history than that (counted from its first `add`) is averaged over
    the days it has existed: dividing a two-day-old organization's spend by 7 would promise it
    three times the runway it has."""

    def __init__(self, days: int = 7) -> None:
        assert days >= 1, days
        self.days = days
        self._day: list[int | None] = [None] * days   # ring slot -> the UTC day number it holds
        self._total = [0] * days
        self._first_day: int | None = None

    def add(self, amount_nanos: int, at_ms: int) -> None:
        assert amount_nanos >= 0, amount_nanos
        day = at_ms // DAY_MS
        slot = day % self.days
        held = self._day[slot]
        if held is None or held < day:       # the slot's day left the window: it becomes this day
            self._day[slot], self._total[slot] = day, amount_nanos
        elif held == day:
            self._total[slot] += amount_nanos
        # else: a newer day holds the slot, so `day` is older than the window and counts for nothing.
        self._first_day = day if self._first_day is None else min(self._first_day, day)

    def remove(self, amount_nanos: int, at_ms: int) -> None:
        """Take back a charge `add` counted that was undone (its commit failed). Only from the
        day it was counted in, while that day is still in the window."""
        assert amount_nanos >= 0, amount_nanos
        day = at_ms // DAY_MS
        slot = day % self.days
        if self._day[slot] == day:
            self._total[slot] = max(self._total[slot] - amount_nanos, 0)

    def average_daily(self, at_ms: int) -> int:
        if self._first_day is None:
            return 0
        today = at_ms // DAY_MS
        total = sum(t for d, t in zip(self._day, self._total, strict=True)
                    if d is not None and today - self.days < d <= today)
        span = max(1, min(self.days, today - self._first_day + 1))
        return total // span

    def runs_out_on(self, balance_nanos: int, at_ms: int) -> date | None:
        average = self.average_daily(at_ms)
        if average == 0:
            return None
        # The instant the balance reaches zero (ceil to the millisecond), then its UTC date: adding
        # ceil(balance / average) whole days to today's date would be a day late for most times of day.
        ms_left = -(-max(balance_nanos, 0) * DAY_MS // average)
        return utc_date(min(at_ms + ms_left, _LAST_MS))  # past year 9999 "not before then" is the truth


class Alerts:
    """Per organization: which thresholds are armed. A threshold fires once when the balance goes from
    >= below to < below (a downward crossing), and re-arms when the balance is back at or above it.

    Thresholds are re-read through `thresholds_for` on every change, so they may change at runtime.
    A threshold that appears (or is lowered, or an organization first observed) while the balance is
    already below it does not fire: only a change from at-or-above to below is a crossing, so it fires
    the next time the balance rises to it and falls under it again."""

    def __init__(self, thresholds_for: Callable[[int], tuple[Threshold, ...]]) -> None:
        self._thresholds_for = thresholds_for
        # org -> {threshold name: its level} for thresholds the balance was last seen below. The level
        # is kept because a threshold moved under the same name must be judged at its new level.
        self._disarmed: dict[int, dict[str, int]] = {}

    def observe(self, org_id: int, org_name: str, before_nanos: int, after_nanos: int, *, at_ms: int,
                spend: SpendWindow) -> list[Alert]:
        """Call on every balance change, credits included (a top-up is what re-arms). Returns the
        alerts this change fires, most urgent (lowest threshold) first."""
        thresholds = self._thresholds_for(org_id)
        assert len({t.name for t in thresholds}) == len(thresholds), f"duplicate threshold names: {thresholds}"
        disarmed = self._disarmed.get(org_id, {})
        fired = sorted((t for t in thresholds
                        if before_nanos >= t.below_nanos > after_nanos and disarmed.get(t.name) != t.below_nanos),
                       key=lambda t: t.below_nanos)
        below = {t.name: t.below_nanos for t in thresholds if after_nanos < t.below_nanos}
        if below:
            self._disarmed[org_id] = below
        else:
            self._disarmed.pop(org_id, None)   # all armed: nothing to remember, so memory stays bounded
        if not fired:
            return []
        average = spend.average_daily(at_ms)
        runs_out_on = spend.runs_out_on(after_nanos, at_ms)
        return [Alert(org_id, org_name, t, after_nanos, average, runs_out_on, at_ms) for t in fired]

    def disarmed(self, org_id: int) -> dict[str, int]:
        """One organization's part of `snapshot`: {disarmed threshold name: its level}, a copy."""
        return dict(self._disarmed.get(org_id, {}))

    def snapshot(self) -> dict[int, dict[str, int]]:
        """org -> {disarmed threshold name: the level it was disarmed at}; a copy, for persisting."""
        return {org: dict(names) for org, names in self._disarmed.items()}

    def restore(self, snapshot: dict[int, dict[str, int]]) -> None:
        """Replace the armed state with one `snapshot` returned."""
        self._disarmed = {org: dict(names) for org, names in snapshot.items() if names}
