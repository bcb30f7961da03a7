"""Auto top-up: when a charge takes an organization's balance below its threshold, buy its
top-up amount with the card it saved at Checkout, off-session.

Exactly one top-up runs per organization at a time, however many requests cross the
threshold together: `observe` runs synchronously inside every wallet change on the event
loop, so its check of `running` and the start of the task cannot interleave with another
request's. A top-up is a row (`topups`) before it is a charge, so a restart resumes it
instead of starting a second one.

Idempotency keys are `topup:<installation>:<id>:<key_seq>`. After an unknown outcome (Stripe unreachable,
a 5xx) the retry reuses the key, so Stripe charges at most once; after a decline, which
Stripe saves under its key, the retry takes the next one. After `auto_topup_attempts`
failed attempts (waiting `auto_topup_retry_s`, doubled each time) auto top-up is turned
off and the organization is told.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

from farebox.billing.payments import Payments, metadata, terms_of
from farebox.billing.profiles import Profiles
from farebox.billing.purchases import Pricing, Quote, quote
from farebox.billing.stripe import StripeError
from farebox.clock import Clock
from farebox.errors import FareboxError
from farebox.money import usd_text
from farebox.settings import Settings
from farebox.store.writer import GroupWriter

log = logging.getLogger("farebox.topup")


class AutoTopUp:
    def __init__(self, *, settings: Settings, pricing: Pricing, payments: Payments, profiles: Profiles,
                 writer: GroupWriter, clock: Clock, notify: Any) -> None:
        self.settings, self.pricing, self.payments, self.profiles = settings, pricing, payments, profiles
        self.writer, self.clock = writer, clock
        self.notify = notify   # async (org_id, kind, data, subject, text) -> None
        self.running: dict[int, asyncio.Task[None]] = {}
        self._pending: list[tuple[int, tuple[Any, ...]]] = []

    def observe(self, org_id: int, after: int) -> None:
        """Called on every change of an organization's balance."""
        profile = self.profiles.by_org.get(org_id)
        if profile is None or not profile.topup_enabled or org_id in self.running:
            return
        assert profile.topup_threshold is not None
        if after >= profile.topup_threshold:
            return
        self.running[org_id] = asyncio.get_running_loop().create_task(self._run(org_id, None))

    async def wait(self) -> None:
        """Until every running top-up has finished (shutdown, tests)."""
        while self.running:
            await asyncio.gather(*self.running.values(), return_exceptions=True)

    async def stop(self) -> None:
        for task in list(self.running.values()):
            task.cancel()
        await asyncio.gather(*self.running.values(), return_exceptions=True)

    def load(self, conn: sqlite3.Connection) -> None:
        """Top-ups a restart interrupted, to carry on with at `resume`."""
        self._pending = [(org_id, (topup_id, Quote("card", credits, fee, bonus, tax), attempts, key_seq))
                         for topup_id, org_id, credits, fee, bonus, tax, attempts, key_seq in conn.execute(
                             "SELECT id, org_id, credits, fee, bonus, tax, attempts, key_seq FROM topups"
                             " WHERE status = 'pending' ORDER BY id")]

    def resume(self) -> None:
        """Carry on with the interrupted top-ups. Synchronous, before the server takes requests:
        a charge crossing the threshold meanwhile must find the organization's top-up running,
        not start a second one."""
        for org_id, resumed in self._pending:
            if org_id not in self.running:
                self.running[org_id] = asyncio.get_running_loop().create_task(self._run(org_id, resumed))
        self._pending = []

    async def _run(self, org_id: int, resumed: tuple[Any, ...] | None) -> None:
        try:
            await self._topup(org_id, resumed)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("auto top-up of organization %s failed unexpectedly", org_id)
        finally:
            self.running.pop(org_id, None)

    async def _topup(self, org_id: int, resumed: tuple[Any, ...] | None) -> None:
        profile = self.profiles.get(org_id)
        now = self.clock.now_ms()
        if resumed is None:
            assert profile.topup_amount is not None
            q = quote(self.pricing, profile.topup_amount, "card")
            topup_id = await self.writer.submit(lambda conn: _insert(conn, org_id, q, now))
            attempts, key_seq = 0, 0
        else:
            topup_id, q, attempts, key_seq = resumed
        stripe = self.payments.stripe
        if stripe is None or not profile.stripe_customer or not profile.payment_method:
            await self._give_up(org_id, topup_id, attempts, "no card is saved for off-session payments "
                                "(buy credits once through Checkout with save_card)")
            return
        purchase_id = f"topup-{topup_id}"
        error = ""
        wait = self.settings.auto_topup_retry_s * 2 ** max(attempts - 1, 0)
        while attempts < self.settings.auto_topup_attempts:
            if attempts:
                await asyncio.sleep(wait)
                wait *= 2
            attempts += 1
            try:
                intent = await stripe.charge_off_session(
                    customer=profile.stripe_customer, payment_method=profile.payment_method,
                    amount_cents=q.charged_cents, description=f"Farebox auto top-up {purchase_id}",
                    metadata=metadata(self.payments.install, org_id, purchase_id, "topup", q),
                    idempotency_key=f"topup:{self.payments.install}:{topup_id}:{key_seq}")
            except StripeError as e:
                error = str(e)
                if not e.retryable:
                    key_seq += 1   # Stripe saved the decline under the old key
                log.warning("auto top-up %s of organization %s: attempt %d failed: %s", topup_id, org_id,
                            attempts, error)
                await self.writer.submit(lambda conn, a=attempts, k=key_seq, err=error: conn.execute(
                    "UPDATE topups SET attempts = ?, key_seq = ?, error = ?, updated_at = ? WHERE id = ?",
                    (a, k, err, self.clock.now_ms(), topup_id)))
                continue
            await self._paid(org_id, topup_id, q, intent["id"], attempts)
            return
        await self._give_up(org_id, topup_id, attempts, error)

    async def _paid(self, org_id: int, topup_id: int, q: Quote, intent_id: str, attempts: int) -> None:
        await self.payments.credit(org_id, f"topup-{topup_id}", q, method_label="card (auto top-up)",
                                   external_reference=intent_id)
        await self.writer.submit(lambda conn: conn.execute(
            "UPDATE topups SET status = 'paid', attempts = MAX(attempts, ?), payment_intent = ?, error = NULL,"
            " updated_at = ? WHERE id = ?", (attempts, intent_id, self.clock.now_ms(), topup_id)))

    async def paid_event(self, intent: dict[str, Any]) -> str:
        """A `payment_intent.succeeded` for a top-up: credit it if the task that charged did not
        get to (a crash between Stripe's answer and the ledger)."""
        org_id, purchase_id, q = terms_of(intent.get("metadata") or {})
        if intent.get("amount") != q.charged_cents or not purchase_id.startswith("topup-"):
            return "ignored: not a top-up as quoted"
        topup_id = int(purchase_id.removeprefix("topup-"))
        new = await self.payments.credit(org_id, purchase_id, q, method_label="card (auto top-up)",
                                         external_reference=intent.get("id"))
        await self.writer.submit(lambda conn: conn.execute(
            "UPDATE topups SET status = 'paid', payment_intent = ?, updated_at = ? WHERE id = ? AND org_id = ?",
            (intent.get("id"), self.clock.now_ms(), topup_id, org_id)))
        return "credited" if new else "already credited"

    async def _give_up(self, org_id: int, topup_id: int, attempts: int, error: str) -> None:
        reason = f"auto top-up failed {attempts} time(s); last error: {error}"
        await self.writer.submit(lambda conn: conn.execute(
            "UPDATE topups SET status = 'failed', attempts = ?, error = ?, updated_at = ? WHERE id = ?",
            (attempts, error, self.clock.now_ms(), topup_id)))
        profile = await self.profiles.update(org_id, topup_enabled=False, topup_disabled_reason=reason)
        log.error("organization %s: %s; auto top-up is now disabled", org_id, reason)
        amount = usd_text(profile.topup_amount or 0)
        try:
            await self.notify(org_id, "auto_topup.failed",
                              {"topup_id": topup_id, "amount": amount, "attempts": attempts, "error": error},
                              "Farebox: auto top-up failed and is now disabled",
                              f"Auto top-up of ${amount} failed {attempts} time(s) and has been disabled.\n"
                              f"Last error: {error}\n\nCheck the saved card, then turn auto top-up on again.\n")
        except FareboxError as e:
            log.warning("could not alert organization %s: %s", org_id, e)


def _insert(conn: sqlite3.Connection, org_id: int, q: Quote, now: int) -> int:
    cursor = conn.execute("INSERT INTO topups (org_id, credits, fee, bonus, tax, status, created_at, updated_at)"
                          " VALUES (?, ?, ?, ?, ?, 'pending', ?, ?)", (org_id, q.credits, q.fee, q.bonus, q.tax, now, now))
    assert cursor.lastrowid is not None
    return cursor.lastrowid
