"""The balance watch: what happens when an organization's balance changes. It runs inside
every wallet change (`Book.watch`), synchronously, so it only decides; anything slow
(sending an alert, charging a card) is started as a task.

- average daily spend per organization (`SpendWindow`), for the alerts' projection;
- auto top-up, when a change takes the balance below the organization's threshold;
- low-balance alerts, once per downward crossing of each threshold, delivered by email
  and signed webhook in the background. The armed state is stored with the profile, so a
  restart neither repeats nor forgets an alert.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from collections.abc import Callable
from typing import Any

from farebox.billing.alerts import Alerts, SpendWindow
from farebox.billing.notify import Notifier
from farebox.billing.profiles import Profiles
from farebox.billing.topup import AutoTopUp
from farebox.clock import Clock

log = logging.getLogger("farebox.alerts")
DAY_MS = 86_400_000


class BalanceWatch:
    def __init__(self, *, profiles: Profiles, topup: AutoTopUp, clock: Clock, org_name: Callable[[int], str],
                 spend_days: int = 7,
                 recipients: Callable[[int, tuple[str, ...]], tuple[str, ...]] | None = None) -> None:
        self.profiles, self.topup, self.clock, self.org_name = profiles, topup, clock, org_name
        # Alert recipients are members: addresses are checked again when an alert goes out, so
        # a member deleted or disabled since the thresholds were saved gets nothing.
        self.recipients = recipients or (lambda org_id, emails: emails)
        self.alerts = Alerts(profiles.thresholds)
        self.spend: dict[int, SpendWindow] = {}
        self.spend_days = spend_days
        self.notifier: Notifier | None = None   # set once the server's HTTP session exists
        self._orgs: dict[str, int] = {}         # wallet account -> org id, parsed once
        self._tasks: set[asyncio.Task[Any]] = set()

    def load(self, conn: sqlite3.Connection, now_ms: int) -> None:
        """Average spend from the last days' charges, and the stored armed state."""
        since = (now_ms // DAY_MS - self.spend_days) * DAY_MS
        for org_id, day, total in conn.execute(
                "SELECT org_id, created_at / ? AS day, SUM(amount) FROM entries"
                " WHERE kind = 'charge' AND created_at >= ? GROUP BY org_id, day", (DAY_MS, since)):
            self._window(org_id).add(total, day * DAY_MS)
        self.alerts.restore({p.org_id: p.alerts_disarmed for p in self.profiles.by_org.values()
                             if p.alerts_disarmed})

    def _window(self, org_id: int) -> SpendWindow:
        window = self.spend.get(org_id)
        if window is None:
            window = self.spend[org_id] = SpendWindow(self.spend_days)
        return window

    def __call__(self, account: str, before: int, after: int, charged: int) -> None:
        org_id = self._orgs.get(account)
        if org_id is None:
            parts = account.split(":")
            # Only the organization's own wallet: alerts and auto top-up watch the credit not
            # allocated to workspace pools (a pool is refilled by a transfer, not a purchase).
            org_id = self._orgs[account] = int(parts[1]) if len(parts) == 3 else -1
        if org_id < 0:
            return
        now = self.clock.now_ms()
        if charged > 0:
            self._window(org_id).add(charged, now)
        elif charged < 0:   # a charge undone because its commit failed
            self._window(org_id).remove(-charged, now)
        if after < before:
            self.topup.observe(org_id, after)
        if not self.profiles.thresholds(org_id):
            return
        disarmed = self.alerts.disarmed(org_id)
        fired = self.alerts.observe(org_id, self.org_name(org_id), before, after, at_ms=now,
                                    spend=self._window(org_id))
        state = self.alerts.disarmed(org_id)
        if state != disarmed:
            self._start(self.profiles.update(org_id, alerts_disarmed=state))
        for alert in fired:
            log.info("organization %s: balance %s crossed below %s", org_id, after, alert.threshold.name)
            emails = self.recipients(org_id, alert.threshold.emails)
            if emails != alert.threshold.emails:
                alert = dataclasses.replace(alert, threshold=dataclasses.replace(alert.threshold, emails=emails))
            if self.notifier is not None:   # it logs what it could not deliver
                self._start(self.notifier.deliver(alert))

    async def notify(self, org_id: int, kind: str, data: dict[str, Any], subject: str, text: str) -> None:
        """An account event (e.g. auto top-up disabled) to every alert recipient of the
        organization and its billing email."""
        profile = self.profiles.get(org_id)
        members = {e for t in profile.alerts for e in self.recipients(org_id, t.emails)}
        emails = sorted(members | ({profile.email} if profile.email else set()))
        webhooks = sorted({w for t in profile.alerts for w in t.webhooks})
        if self.notifier is None or not (emails or webhooks):
            log.warning("organization %s: %s, and no one to tell", org_id, kind)
            return
        await self.notifier.send_event(kind, {"org": {"id": org_id, "name": self.org_name(org_id)}, **data},
                                       emails, webhooks, subject=subject, text=text)

    def _start(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("balance watch task failed: %r", task.exception())

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)
