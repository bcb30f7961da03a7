"""The payment rail: how money enters (Stripe Checkout, payments an operator records) and
how it leaves again (refunds of card purchases).

Checkout: a purchase is quoted, a Checkout Session is created with the quote in its
metadata, and the credit arrives when Stripe's signed `checkout.session.completed` event
does. The purchase id is ours (`co-...`), chosen before the Session exists, so the event,
a resent event and a replayed request all name the same purchase and credit it once.

Refunds: within the refund window, what a card purchase's credit lot has left (whole
cents) goes back to the card; its bonus lot is forfeited; the fee is kept. The ledger moves
first (so a concurrent request cannot spend what is being refunded), then Stripe is asked
with an idempotency key per purchase; a refusal for good puts the credit back.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import Any

from farebox.billing import invoices
from farebox.billing.profiles import Profiles
from farebox.billing.purchases import CENT, Pricing, Quote, quote
from farebox.billing.stripe import Stripe, StripeError, WebhookSignatureError, verify_webhook
from farebox.clock import Clock
from farebox.errors import BadRequest, FareboxError, NotFound, PaymentRefused, ServiceUnavailable
from farebox.ledger.entries import wallet
from farebox.ledger.ledger import Ledger, RefundTerms
from farebox.settings import Settings
from farebox.store.sqlite import Store
from farebox.store.writer import GroupWriter
from farebox.tenancy.records import Organization

log = logging.getLogger("farebox.payments")
DAY_MS = 86_400_000
RETRIES = 3          # immediate tries of a Stripe call whose outcome is unknown, before leaving it pending
RETRY_WAIT_S = 0.25  # between them, doubled each time


def metadata(install: str, org_id: int, purchase_id: str, kind: str, q: Quote) -> dict[str, str]:
    """What a Session or PaymentIntent carries so its event can be credited without asking
    anything else: Stripe signs the event, and the terms are the ones quoted. `install` is
    this database's identity: an event of another Farebox on the same Stripe account is
    not ours to credit."""
    return {"farebox_install": install, "farebox_org": str(org_id), "farebox_purchase": purchase_id,
            "farebox_kind": kind, "credits": str(q.credits), "fee": str(q.fee), "bonus": str(q.bonus),
            "tax": str(q.tax)}


def terms_of(meta: dict[str, Any]) -> tuple[int, str, Quote]:
    try:
        q = Quote("card", int(meta["credits"]), int(meta["fee"]), int(meta["bonus"]), int(meta.get("tax", "0")))
        return int(meta["farebox_org"]), str(meta["farebox_purchase"]), q
    except (KeyError, TypeError, ValueError) as e:
        raise BadRequest(f"The event's metadata does not name a Farebox purchase: {e!r}") from None


class Payments:
    def __init__(self, *, settings: Settings, pricing: Pricing, ledger: Ledger, profiles: Profiles, store: Store,
                 writer: GroupWriter, clock: Clock, org_name: Any, new_id: Any, stripe: Stripe | None,
                 install: str) -> None:
        self.install = install        # this database's identity, in metadata and idempotency keys
        self.settings, self.pricing, self.ledger, self.profiles = settings, pricing, ledger, profiles
        self.store, self.writer, self.clock, self.stripe = store, writer, clock, stripe
        self.org_name = org_name      # org id -> its name (for invoices)
        self.new_id = new_id          # () -> a fresh random id
        self.topup: Any = None        # the AutoTopUp, for the events of its charges

    def expiry(self) -> int | None:
        days = self.settings.purchase_expiry_days
        return self.clock.now_ms() + days * DAY_MS if days else None

    def _stripe(self) -> Stripe:
        if self.stripe is None:
            raise PaymentRefused("Card payments are not configured on this Farebox (set stripe_secret_key)")
        return self.stripe

    # -- crediting a paid purchase ---------------------------------------------------------
    async def credit(self, org_id: int, purchase_id: str, q: Quote, *, method_label: str,
                     external_reference: str | None) -> bool:
        """Credit a paid quote with its invoice; idempotent on `purchase_id`."""
        profile = self.profiles.get(org_id)
        now = self.clock.now_ms()
        invoice = invoices.issue(self.settings, self.pricing, q, buyer_name=self.org_name(org_id),
                                 buyer_email=profile.email, payment_method=method_label, purchase_id=purchase_id,
                                 issued_at_ms=now)
        new, _ = await self.ledger.purchase(org_id, purchase_id, method=q.method, credits=q.credits, fee=q.fee,
                                            bonus=q.bonus, tax=q.tax, expires_at_ms=self.expiry(),
                                            external_reference=external_reference, invoice=invoice)
        return new

    async def record_manual(self, org: Organization, credits: int, method: str, reference: str) -> tuple[bool, Quote]:
        """A bank transfer or crypto payment received outside Stripe, recorded by the operator."""
        if method not in ("bank", "crypto"):
            raise BadRequest("method must be bank or crypto (card purchases go through Stripe)", field="method")
        q = quote(self.pricing, credits, method)
        new = await self.credit(org.id, f"manual:{reference}", q, method_label=invoices.METHOD_NAMES[method],
                                external_reference=reference)
        return new, q

    # -- Checkout --------------------------------------------------------------------------
    async def checkout(self, org: Organization, credits: int, *, save_card: bool, success_url: str,
                       cancel_url: str) -> dict[str, Any]:
        stripe = self._stripe()
        q = quote(self.pricing, credits, "card")
        purchase_id = f"co-{self.new_id()}"
        profile = self.profiles.get(org.id)
        meta = metadata(self.install, org.id, purchase_id, "checkout", q)
        try:
            session = await stripe.create_checkout_session(
                amount_cents=q.charged_cents, customer=profile.stripe_customer, client_reference_id=purchase_id,
                description=f"Farebox credits for {org.name}", success_url=success_url, cancel_url=cancel_url,
                metadata=meta, save_payment_method=save_card,
                idempotency_key=f"checkout:{self.install}:{purchase_id}")
        except StripeError as e:
            raise ServiceUnavailable(f"Stripe could not start the checkout: {e}") from None
        return {"purchase_id": purchase_id, "checkout_id": session["id"], "url": session["url"], "quote": q}

    # -- webhooks --------------------------------------------------------------------------
    async def webhook(self, payload: bytes, signature: str | None) -> dict[str, Any]:
        """Verify and act on one Stripe event. Returns what was done; raises BadRequest for a
        forged or stale signature (Stripe shows the endpoint's failures; nothing moved)."""
        secret = self.settings.stripe_webhook_secret
        if not secret:
            raise PaymentRefused("Stripe webhooks are not configured on this Farebox (set stripe_webhook_secret)")
        try:
            event = verify_webhook(payload, signature, secret, now=self.clock.now())
        except WebhookSignatureError as e:
            raise BadRequest(f"Stripe signature verification failed: {e}") from None
        event_id, kind = event.get("id"), event.get("type")
        if not isinstance(event_id, str) or not isinstance(kind, str):
            raise BadRequest("Not a Stripe event: no id or type")
        if await self.store.read(_seen, event_id):
            return {"received": True, "event": event_id, "replayed": True}
        obj = (event.get("data") or {}).get("object") or {}
        action = "ignored"
        if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
            pass   # not an object we create (or malformed): nothing of ours to credit
        elif obj["metadata"].get("farebox_install") != self.install:
            action = "ignored: not this installation's"
        elif kind in ("checkout.session.completed", "checkout.session.async_payment_succeeded"):
            action = await self._checkout_paid(obj)
        elif kind == "payment_intent.succeeded" and obj["metadata"].get("farebox_kind") == "topup":
            assert self.topup is not None
            action = await self.topup.paid_event(obj)
        await self.writer.submit(lambda conn: conn.execute(
            "INSERT OR IGNORE INTO stripe_events (id, type, received_at) VALUES (?, ?, ?)",
            (event_id, kind, self.clock.now_ms())))
        return {"received": True, "event": event_id, "replayed": False, "action": action}

    async def _checkout_paid(self, session: dict[str, Any]) -> str:
        meta = session.get("metadata") or {}
        if meta.get("farebox_kind") != "checkout" or session.get("payment_status") != "paid":
            return "ignored"   # another integration's Session, or one paid asynchronously later
        org_id, purchase_id, q = terms_of(meta)
        if session.get("amount_total") != q.charged_cents:
            # We wrote both; a mismatch means the Session was not ours as quoted. Credit nothing.
            log.error("checkout %s paid %s cents, its quote says %s", session.get("id"),
                      session.get("amount_total"), q.charged_cents)
            return "ignored: amount does not match the quote"
        intent_id = session.get("payment_intent")
        email = (session.get("customer_details") or {}).get("email")
        customer = session.get("customer")
        changes: dict[str, Any] = {}
        if email:
            changes["email"] = email
        if customer and isinstance(intent_id, str) and self.stripe is not None:
            intent = await self.stripe.retrieve_payment_intent(intent_id)
            if intent.get("setup_future_usage") == "off_session" and intent.get("payment_method"):
                changes.update(stripe_customer=customer, payment_method=intent["payment_method"], card_label="card")
        if changes:
            await self.profiles.update(org_id, **changes)
        new = await self.credit(org_id, purchase_id, q, method_label="card (Stripe Checkout)",
                                external_reference=intent_id if isinstance(intent_id, str) else session.get("id"))
        return "credited" if new else "already credited"

    # -- refunds ---------------------------------------------------------------------------
    async def refund(self, org: Organization, purchase_id: str) -> RefundTerms:
        row = await self.store.read(_purchase, purchase_id, org.id)
        if row is None:
            raise NotFound(f"Purchase {purchase_id} not found")
        method, created_at, payment_intent = row
        if method == "crypto":
            raise BadRequest("Crypto purchases are never refunded")
        if method != "card" or not payment_intent:
            raise BadRequest("Only card purchases are refunded here; an operator refunds a bank transfer by hand")
        prior = self.ledger.refunds.get(purchase_id)
        if prior is None and self.clock.now_ms() - created_at > self.settings.refund_window_hours * 3_600_000:
            raise BadRequest(f"The refund window ({self.settings.refund_window_hours:g} hours after the purchase) "
                             f"has passed")
        stripe = self._stripe()
        expires = self._expiry_of(org.id, purchase_id)
        now = self.clock.now_ms()
        _, terms = await self.ledger.refund(org.id, purchase_id, unit=CENT, record=lambda conn, t: conn.execute(
            "INSERT INTO refunds (purchase_id, org_id, amount, forfeited, status, created_at, updated_at)"
            " VALUES (?, ?, ?, ?, 'pending', ?, ?)", (t.purchase_id, t.org_id, t.amount, t.forfeited, now, now)))
        if terms.status != "pending":
            return terms
        return await self._pay_back(stripe, terms, payment_intent, expires)

    def _expiry_of(self, org_id: int, purchase_id: str) -> int | None:
        """The expiry of a purchase's credit lot: a refund that fails restores it with the same."""
        lots = self.ledger.book.lots.get(wallet(org_id))
        lot = next((lot for lot in lots.by_id.values() if lot.purchase == purchase_id and lot.kind == "purchase"),
                   None) if lots else None
        return lot.expires_at_ms if lot is not None else None

    async def _pay_back(self, stripe: Stripe, terms: RefundTerms, payment_intent: str,
                        expires_at_ms: int | None) -> RefundTerms:
        wait = RETRY_WAIT_S
        for attempt in range(RETRIES):
            try:
                refund = await stripe.refund(payment_intent=payment_intent, amount_cents=terms.amount // CENT,
                                             metadata={"farebox_install": self.install,
                                                       "farebox_purchase": terms.purchase_id},
                                             idempotency_key=f"refund:{self.install}:{terms.purchase_id}")
            except StripeError as e:
                if e.retryable and attempt + 1 < RETRIES:
                    await asyncio.sleep(wait)
                    wait *= 2
                    continue
                if e.retryable:
                    await self._mark(terms, "pending", None, str(e))
                    return terms   # resumed at the next start, with the same idempotency key
                await self.ledger.restore_refund(terms, expires_at_ms, lambda conn, e=e: _set_refund(
                    conn, terms.purchase_id, "failed", None, str(e), self.clock.now_ms()))
                raise PaymentRefused(f"Stripe refused the refund; the credit is back in the balance: {e}") from None
            return await self._mark(terms, "succeeded", refund.get("id"), None)
        raise AssertionError("unreachable")

    async def _mark(self, terms: RefundTerms, status: str, refund_id: str | None, error: str | None) -> RefundTerms:
        now = self.clock.now_ms()
        await self.writer.submit(lambda conn: _set_refund(conn, terms.purchase_id, status, refund_id, error, now))
        done = RefundTerms(terms.purchase_id, terms.org_id, terms.amount, terms.forfeited, status)
        self.ledger.refunds[terms.purchase_id] = done
        return done

    async def resume(self) -> None:
        """Ask Stripe again for refunds a crash or an outage left pending (same idempotency key,
        so Stripe pays each at most once)."""
        if self.stripe is None:
            return
        pending = await self.store.read(lambda conn: conn.execute(
            "SELECT r.purchase_id, p.external_reference FROM refunds r JOIN purchases p ON p.id = r.purchase_id"
            " WHERE r.status = 'pending'").fetchall())
        for purchase_id, intent in pending:
            terms = self.ledger.refunds[purchase_id]
            try:
                await self._pay_back(self.stripe, terms, intent, self._expiry_of(terms.org_id, purchase_id))
            except FareboxError as e:
                log.warning("pending refund of %s: %s", purchase_id, e)


def _seen(conn: sqlite3.Connection, event_id: str) -> bool:
    return conn.execute("SELECT 1 FROM stripe_events WHERE id = ?", (event_id,)).fetchone() is not None


def _purchase(conn: sqlite3.Connection, purchase_id: str, org_id: int) -> tuple[str, int, str | None] | None:
    return conn.execute("SELECT method, created_at, external_reference FROM purchases WHERE id = ? AND org_id = ?",
                        (purchase_id, org_id)).fetchone()


def _set_refund(conn: sqlite3.Connection, purchase_id: str, status: str, refund_id: str | None, error: str | None,
                now_ms: int) -> None:
    conn.execute("UPDATE refunds SET status = ?, stripe_refund = COALESCE(?, stripe_refund), error = ?,"
                 " updated_at = ? WHERE purchase_id = ?", (status, refund_id, error, now_ms, purchase_id))

