"""Billing profiles: what Farebox keeps per organization to take its payments and watch its
balance. The Stripe customer and saved card (from a Checkout that saved it), the auto top-up
terms, and the low-balance alert thresholds with their armed state.

Profiles live in memory (the balance watch reads them on every charge) and are written
through the group-commit writer; the row is the whole profile, replaced on each change.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from dataclasses import dataclass, field
from typing import Any

import orjson

from farebox.billing.alerts import Threshold
from farebox.clock import Clock
from farebox.store.writer import GroupWriter


@dataclass(slots=True)
class Profile:
    org_id: int
    email: str | None = None
    stripe_customer: str | None = None
    payment_method: str | None = None
    card_label: str | None = None            # "visa •••• 4242", printed on invoices
    topup_enabled: bool = False
    topup_threshold: int | None = None       # nano-dollars: a charge taking the balance below it tops up
    topup_amount: int | None = None          # nano-dollars of credits each top-up buys
    topup_disabled_reason: str | None = None  # why Farebox turned auto top-up off (repeated failures)
    alerts: tuple[Threshold, ...] = ()
    alerts_disarmed: dict[str, int] = field(default_factory=dict)

    def row(self, now_ms: int) -> tuple[Any, ...]:
        alerts = [{"name": t.name, "below": t.below_nanos, "emails": list(t.emails), "webhooks": list(t.webhooks)}
                  for t in self.alerts]
        return (self.org_id, self.email, self.stripe_customer, self.payment_method, self.card_label,
                int(self.topup_enabled), self.topup_threshold, self.topup_amount, self.topup_disabled_reason,
                orjson.dumps(alerts).decode(), orjson.dumps(self.alerts_disarmed).decode(), now_ms)


_COLUMNS = ("org_id, email, stripe_customer, payment_method, card_label, topup_enabled, topup_threshold,"
            " topup_amount, topup_disabled_reason, alerts, alerts_disarmed, updated_at")


def _from_row(row: tuple[Any, ...]) -> Profile:
    (org_id, email, customer, method, label, enabled, threshold, amount, reason, alerts, disarmed, _) = row
    thresholds = tuple(Threshold(a["name"], a["below"], tuple(a["emails"]), tuple(a["webhooks"]))
                       for a in orjson.loads(alerts))
    return Profile(org_id, email, customer, method, label, bool(enabled), threshold, amount, reason, thresholds,
                   orjson.loads(disarmed))


def save_row(conn: sqlite3.Connection, row: tuple[Any, ...]) -> None:
    conn.execute(f"INSERT OR REPLACE INTO billing_profiles ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", row)


class Profiles:
    def __init__(self, writer: GroupWriter, clock: Clock) -> None:
        self.writer, self.clock = writer, clock
        self.by_org: dict[int, Profile] = {}

    def load(self, conn: sqlite3.Connection) -> None:
        self.by_org = {p.org_id: p for p in map(_from_row, conn.execute(f"SELECT {_COLUMNS} FROM billing_profiles"))}

    def get(self, org_id: int) -> Profile:
        """The organization's profile; a blank one (not yet stored) when it has none."""
        return self.by_org.get(org_id) or Profile(org_id)

    async def update(self, org_id: int, **changes: Any) -> Profile:
        """Apply `changes` in memory at once (the watch sees them from the next charge) and
        store the whole profile."""
        profile = dataclasses.replace(self.get(org_id), **changes)
        self.by_org[org_id] = profile
        await self.writer.submit(lambda conn, row=profile.row(self.clock.now_ms()): save_row(conn, row))
        return profile

    def thresholds(self, org_id: int) -> tuple[Threshold, ...]:
        profile = self.by_org.get(org_id)
        return profile.alerts if profile is not None else ()
