"""Credits management (issue 5): buying through Stripe Checkout, packages, lots, purchases and
refunds, auto top-up and alert settings, invoices and statements, and Stripe's webhook.

Each endpoint acts on one organization: an API key's or a member's own, or, with the
management key, the one named by `organization` (query or body). Reading is open to the
organization's API keys and members; buying, refunding and changing auto top-up or alert
settings need a member with credits.write (or the operator). Alert emails go to members.
The Stripe webhook is not authenticated by a bearer: its signature is checked.
"""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from typing import TYPE_CHECKING, Any

from farebox.api.admin import quote_wire
from farebox.api.fields import usd as _usd
from farebox.api.http import Request, Response, iso, json_response
from farebox.billing import invoices
from farebox.billing.alerts import Threshold, one_line
from farebox.billing.invoice import render_html, render_pdf
from farebox.billing.purchases import quote
from farebox.billing.statement import Movement, render_csv
from farebox.errors import BadRequest, Forbidden, NotFound
from farebox.ledger.entries import wallet
from farebox.ledger.ledger import RefundTerms
from farebox.money import usd_json
from farebox.tenancy import access
from farebox.tenancy.records import Organization

if TYPE_CHECKING:
    from farebox.app import Gateway

BODY_MAX = 64 * 1024
WEBHOOK_BODY_MAX = 1024 * 1024   # Stripe events are far smaller
THRESHOLDS_MAX = 10
RECIPIENTS_MAX = 20
DAY_MS = 86_400_000
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _org(gw: Gateway, req: Request, body: dict[str, Any] | None = None, *, write: bool = False,
         whole: bool = False) -> Organization:
    """The organization the call acts on, once the caller may: reading needs `read` (an API
    key of the organization will do), `write` (money moves or billing changes) credits.write.
    `whole`: the answer shows the organization wallet's movements, which a caller limited to
    some workspaces (a key, a restricted member) may not see."""
    principal = access.resolve(gw, req, allow_keys=True)
    org = access.organization(gw, principal, req, body)
    access.require(principal, "credits.write" if write else "read")
    if whole and principal.workspaces is not None:
        raise Forbidden("This covers the whole organization's wallet; it needs a member not limited to some "
                        "workspaces", metadata={"role": principal.role})
    return org


# -- balance ---------------------------------------------------------------------------------

async def credits(gw: Gateway, req: Request) -> Response:
    """OpenRouter's shape (`total_credits`, `total_usage`), then what our users need beside it.
    total_credits - total_usage is the balance: credit that left other than by spending (a
    refund, an expiry, a forfeited bonus) is not counted as credit. Every wallet of the
    organization counts, workspace pools included: a transfer between them changes nothing here."""
    org = _org(gw, req)
    accounts = org.accounts
    usage = sum(gw.book.spent.get(a, 0) for a in accounts)
    balance = sum(gw.book.balance(a) for a in accounts)
    kinds = dict(await gw.store.read(_kinds, accounts))
    return json_response({"data": {
        "total_credits": usd_json(balance + usage), "total_usage": usd_json(usage),
        "balance": usd_json(balance), "available": usd_json(sum(gw.book.available(a) for a in accounts)),
        "purchased": usd_json(kinds.get("purchase", 0)), "bonus": usd_json(kinds.get("bonus", 0)),
        "granted": usd_json(kinds.get("grant", 0) + kinds.get("trial", 0)),
        "refunded": usd_json(kinds.get("refund", 0)),
        "forfeited": usd_json(kinds.get("forfeit", 0)), "expired": usd_json(kinds.get("expiry", 0)),
        "auto_topup": _topup_wire(gw, org.id),
    }})


def _kinds(conn: sqlite3.Connection, accounts: list[str]) -> list[tuple[str, int]]:
    """Amounts into and out of the wallets by entry kind, charges and transfers between them
    aside. A failed refund's entries put refunded credit and forfeited bonus back: they are
    netted against the refund and the forfeit, not counted as new credit."""
    marks = ", ".join("?" * len(accounts))
    return conn.execute(
        "SELECT CASE kind WHEN 'refund_failed' THEN 'refund' WHEN 'forfeit_failed' THEN 'forfeit' ELSE kind END k,"
        " SUM(CASE WHEN kind IN ('refund_failed', 'forfeit_failed') THEN -amount ELSE amount END)"
        f" FROM entries WHERE (to_account IN ({marks}) OR from_account IN ({marks}))"
        " AND kind NOT IN ('charge', 'transfer') GROUP BY k",
        (*accounts, *accounts)).fetchall()


async def packages(gw: Gateway, req: Request) -> Response:
    access.resolve(gw, req, allow_keys=True)
    p = gw.purchase_pricing
    return json_response({"data": {
        "packages": [{"amount": usd_json(pkg.amount), "bonus_percent": str(pkg.bonus_percent),
                      "bonus": usd_json(quote(p, pkg.amount, "card").bonus) if p.minimum <= pkg.amount <= p.maximum
                      else None} for pkg in p.packages],
        "fees": {method: {"percent": str(rule.percent), "minimum": usd_json(rule.minimum)}
                 for method, rule in p.fees.items()},
        "tax_percent": None if p.tax_percent is None else str(p.tax_percent),
        "minimum": usd_json(p.minimum), "maximum": usd_json(p.maximum),
        "card_payments": gw.stripe is not None,
    }})


# -- buying ----------------------------------------------------------------------------------

async def checkout(gw: Gateway, req: Request) -> Response:
    body = await req.json(BODY_MAX)
    org = _org(gw, req, body, write=True)
    credits = _usd(body.get("amount"), "amount", allow_zero=False)
    save_card = body.get("save_card", True)
    if not isinstance(save_card, bool):
        raise BadRequest("save_card must be a boolean", field="save_card")
    base = gw.settings.public_url.rstrip("/")

    def url(field: str, default: str) -> str:
        value = body.get(field)
        if value is None:
            return default if "://" in default else base + default
        if not isinstance(value, str) or not value.startswith(("https://", "http://")) or len(value) > 2000:
            raise BadRequest(f"{field} must be an http(s) URL", field=field)
        return value

    started = await gw.payments.checkout(
        org, credits, save_card=save_card, success_url=url("success_url", gw.settings.checkout_success_path),
        cancel_url=url("cancel_url", gw.settings.checkout_cancel_path))
    return json_response({"data": {"purchase_id": started["purchase_id"], "checkout_id": started["checkout_id"],
                                   "url": started["url"], **quote_wire(started["quote"])}}, 201)


async def stripe_webhook(gw: Gateway, req: Request) -> Response:
    payload = await req.body(WEBHOOK_BODY_MAX)
    return json_response(await gw.payments.webhook(payload, req.header(b"stripe-signature")))


# -- lots, purchases, refunds ------------------------------------------------------------------

async def lots(gw: Gateway, req: Request) -> Response:
    org = _org(gw, req)
    book_lots = gw.book.lots.get(wallet(org.id))
    everything = req.query("all") in ("1", "true")
    rows = sorted(book_lots.by_id.values(), key=lambda lot: lot.order()) if book_lots else []
    return json_response({"data": [
        {"id": lot.id, "kind": lot.kind, "amount": usd_json(lot.amount), "remaining": usd_json(lot.remaining),
         "created_at": iso(lot.created_at_ms), "expires_at": iso(lot.expires_at_ms), "purchase_id": lot.purchase}
        for lot in rows if everything or lot.remaining]})


async def purchases(gw: Gateway, req: Request) -> Response:
    org = _org(gw, req)
    rows = await gw.store.read(lambda conn: conn.execute(
        "SELECT p.id, p.method, p.credits, p.fee, p.bonus, p.external_reference, p.created_at, i.number"
        " FROM purchases p LEFT JOIN invoices i ON i.purchase_id = p.id WHERE p.org_id = ? ORDER BY p.created_at",
        (org.id,)).fetchall())
    window = gw.settings.refund_window_hours * 3_600_000
    now = gw.clock.now_ms()
    out = []
    for pid, method, credits_, fee, bonus, external, created, number in rows:
        refund = gw.ledger.refunds.get(pid)
        out.append({"id": pid, "method": method, "credits": usd_json(credits_), "fee": usd_json(fee),
                    "bonus": usd_json(bonus), "reference": external, "created_at": iso(created),
                    "invoice": None if number is None else invoices.number_text(gw.settings.invoice_number_prefix,
                                                                                 number),
                    "refund": None if refund is None else _refund_wire(refund),
                    "refundable": method == "card" and refund is None and now - created <= window})
    return json_response({"data": out})


def _refund_wire(t: RefundTerms) -> dict[str, Any]:
    return {"purchase_id": t.purchase_id, "amount": usd_json(t.amount), "bonus_forfeited": usd_json(t.forfeited),
            "status": t.status}


async def refund(gw: Gateway, req: Request) -> Response:
    body = await req.json(BODY_MAX)
    org = _org(gw, req, body, write=True)
    terms = await gw.payments.refund(org, req.params["purchase"])
    return json_response({"data": _refund_wire(terms)}, 202 if terms.status == "pending" else 200)


# -- auto top-up ------------------------------------------------------------------------------

def _topup_wire(gw: Gateway, org_id: int) -> dict[str, Any]:
    p = gw.profiles.get(org_id)
    return {"enabled": p.topup_enabled,
            "threshold": None if p.topup_threshold is None else usd_json(p.topup_threshold),
            "amount": None if p.topup_amount is None else usd_json(p.topup_amount),
            "card_saved": bool(p.payment_method), "disabled_reason": p.topup_disabled_reason,
            "running": org_id in gw.topup.running}


async def get_auto_topup(gw: Gateway, req: Request) -> Response:
    org = _org(gw, req)
    return json_response({"data": _topup_wire(gw, org.id)})


async def put_auto_topup(gw: Gateway, req: Request) -> Response:
    body = await req.json(BODY_MAX)
    org = _org(gw, req, body, write=True)
    profile = gw.profiles.get(org.id)
    enabled = body.get("enabled", profile.topup_enabled)
    if not isinstance(enabled, bool):
        raise BadRequest("enabled must be a boolean", field="enabled")
    threshold = _usd(body["threshold"], "threshold") if "threshold" in body else profile.topup_threshold
    amount = _usd(body["amount"], "amount", allow_zero=False) if "amount" in body else profile.topup_amount
    if enabled:
        if threshold is None or amount is None:
            raise BadRequest("Auto top-up needs a threshold and an amount", field="threshold" if threshold is None
                             else "amount")
        quote(gw.purchase_pricing, amount, "card")   # a 400 when the amount cannot be bought
        if not profile.payment_method:
            raise BadRequest("Save a card first: buy credits once through Checkout with save_card", field="enabled")
    await gw.profiles.update(org.id, topup_enabled=enabled, topup_threshold=threshold, topup_amount=amount,
                             topup_disabled_reason=None if enabled else profile.topup_disabled_reason)
    if enabled:   # already below the threshold: top up now rather than at the next charge
        gw.topup.observe(org.id, gw.book.balance(wallet(org.id)))
    return json_response({"data": _topup_wire(gw, org.id)})


async def topups(gw: Gateway, req: Request) -> Response:
    org = _org(gw, req)
    rows = await gw.store.read(lambda conn: conn.execute(
        "SELECT id, credits, fee, bonus, tax, status, attempts, payment_intent, error, created_at, updated_at"
        " FROM topups WHERE org_id = ? ORDER BY id DESC LIMIT 100", (org.id,)).fetchall())
    return json_response({"data": [
        {"id": i, "purchase_id": f"topup-{i}", "credits": usd_json(c), "fee": usd_json(f), "bonus": usd_json(b),
         "tax": usd_json(t), "status": s, "attempts": a, "payment_intent": pi, "error": e, "created_at": iso(ca),
         "updated_at": iso(ua)} for i, c, f, b, t, s, a, pi, e, ca, ua in rows]})


# -- alerts ----------------------------------------------------------------------------------

def _alerts_wire(gw: Gateway, org_id: int) -> dict[str, Any]:
    p = gw.profiles.get(org_id)
    disarmed = gw.watch.alerts.disarmed(org_id)
    return {"thresholds": [{"name": t.name, "below": usd_json(t.below_nanos), "emails": list(t.emails),
                            "webhooks": list(t.webhooks), "armed": t.name not in disarmed} for t in p.alerts]}


async def get_alerts(gw: Gateway, req: Request) -> Response:
    org = _org(gw, req)
    return json_response({"data": _alerts_wire(gw, org.id)})


async def put_alerts(gw: Gateway, req: Request) -> Response:
    """Replace the organization's thresholds: {"thresholds": [{"name", "below", "emails",
    "webhooks"}]}; an empty list turns alerts off. Every email must be an active member's."""
    body = await req.json(BODY_MAX)
    org = _org(gw, req, body, write=True)
    raw = body.get("thresholds")
    if not isinstance(raw, list) or len(raw) > THRESHOLDS_MAX:
        raise BadRequest(f"thresholds must be a list of at most {THRESHOLDS_MAX}", field="thresholds")
    thresholds = []
    for i, item in enumerate(raw):
        where = f"thresholds[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object", field=where)
        name = item.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 64 or one_line(name) != name:
            raise BadRequest(f"{where}.name must be a one-line name of at most 64 characters", field=f"{where}.name")
        emails = _member_emails(gw, org, _strings(item.get("emails", []), f"{where}.emails",
                                                  lambda s: "@" in s and one_line(s) == s), f"{where}.emails")
        hooks = _strings(item.get("webhooks", []), f"{where}.webhooks", lambda s: s.startswith(("https://", "http://")))
        thresholds.append(Threshold(name, _usd(item.get("below"), f"{where}.below"), emails, hooks))
    if len({t.name for t in thresholds}) != len(thresholds):
        raise BadRequest("threshold names must be distinct", field="thresholds")
    await gw.profiles.update(org.id, alerts=tuple(sorted(thresholds, key=lambda t: -t.below_nanos)))
    return json_response({"data": _alerts_wire(gw, org.id)})


def _member_emails(gw: Gateway, org: Organization, emails: tuple[str, ...], field: str) -> tuple[str, ...]:
    """Alert recipients are members: each email must be an active member's (kept as the
    member's lower-cased email)."""
    out = []
    for email in emails:
        member = gw.members.by_email(org.id, email)
        if member is None or member.disabled:
            raise BadRequest(f"{field}: {email} is not the email of an active member of the organization",
                             field=field)
        out.append(member.email)
    return tuple(dict.fromkeys(out))


def _strings(value: Any, field: str, valid: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > RECIPIENTS_MAX or not all(
            isinstance(v, str) and 0 < len(v) <= 500 and valid(v) for v in value):
        raise BadRequest(f"{field} must be a list of at most {RECIPIENTS_MAX} valid entries", field=field)
    return tuple(value)


# -- invoices and statements --------------------------------------------------------------------

async def list_invoices(gw: Gateway, req: Request) -> Response:
    org = _org(gw, req)
    prefix = gw.settings.invoice_number_prefix
    rows = await gw.store.read(invoices.listing, org.id)
    out = []
    for number, purchase_id, data in rows:
        doc = invoices.document(prefix, number, data)
        out.append({"number": doc.number, "id": number, "purchase_id": purchase_id, "issued_at": iso(doc.issued_at_ms),
                    "paid": usd_json(doc.paid_nanos), "credited": usd_json(doc.credits_nanos),
                    "payment_method": doc.payment_method,
                    "html": f"/api/v1/credits/invoices/{number}.html", "pdf": f"/api/v1/credits/invoices/{number}.pdf"})
    return json_response({"data": out})


async def get_invoice(gw: Gateway, req: Request) -> Response:
    org = _org(gw, req)
    number = int(req.params["number"])
    data = await gw.store.read(invoices.load, org.id, number)
    if data is None:
        raise NotFound(f"Invoice {number} not found")
    doc = invoices.document(gw.settings.invoice_number_prefix, number, data)
    if req.params["format"] == "pdf":
        return Response(200, render_pdf(doc), [(b"content-type", b"application/pdf"), _attachment(doc.number, "pdf")])
    return Response(200, render_html(doc).encode(), [(b"content-type", b"text/html; charset=utf-8")])


def _attachment(name: str, ext: str) -> tuple[bytes, bytes]:
    return b"content-disposition", f'attachment; filename="{name}.{ext}"'.encode()


async def statement(gw: Gateway, req: Request) -> Response:
    """GET /credits/statement.csv?from=2026-11-01&to=2026-11-30: every movement of the balance
    in those UTC days (both included), with opening and closing balances."""
    org = _org(gw, req, whole=True)
    today = gw.clock.now_ms() // DAY_MS
    end = _day(req.query("to"), "to", today) + 1
    start = _day(req.query("from"), "from", end - 31)   # by default the 31 days ending with `to`
    if end <= start or end - start > 366:
        raise BadRequest("from must not be after to, and a statement covers at most 366 days", field="from")
    start_ms, end_ms = start * DAY_MS, end * DAY_MS
    labels = {k.hash: k.label for k in gw.directory.org_keys(org.id)}
    opening, movements = await gw.store.read(_movements, wallet(org.id), start_ms, end_ms, labels)
    body = render_csv(movements, opening_nanos=opening, period_start_ms=start_ms, period_end_ms=end_ms)
    name = f"statement-{org.name}-{_date(start)}-{_date(end - 1)}"
    return Response(200, body.encode(), [(b"content-type", b"text/csv; charset=utf-8"), _attachment(name, "csv")])


def _day(value: str | None, field: str, default: int) -> int:
    if value is None:
        return default
    if not _DATE.fullmatch(value):   # fromisoformat also reads 20261123 and 2026-W48-1
        raise BadRequest(f"{field} must be a date such as 2026-11-01", field=field)
    try:
        return (dt.date.fromisoformat(value) - dt.date(1970, 1, 1)).days
    except ValueError:
        raise BadRequest(f"{field} must be a date such as 2026-11-01", field=field) from None


def _date(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


_STATEMENT_KINDS = {"purchase": "purchase", "bonus": "bonus", "grant": "grant", "trial": "trial", "charge": "charge",
                    "refund": "refund", "forfeit": "refund", "refund_failed": "refund", "forfeit_failed": "refund",
                    "expiry": "expiry"}


def _movements(conn: sqlite3.Connection, account: str, start_ms: int, end_ms: int,
               labels: dict[str, str]) -> tuple[int, list[Movement]]:
    opening = conn.execute(
        "SELECT COALESCE(SUM(CASE WHEN to_account = ?1 THEN amount ELSE -amount END), 0) FROM entries"
        " WHERE (to_account = ?1 OR from_account = ?1) AND created_at < ?2", (account, start_ms)).fetchone()[0]
    rows = conn.execute(
        "SELECT e.created_at, e.kind, e.from_account, e.amount, e.reference, e.memo, e.generation_id, e.key_hash,"
        " g.model FROM entries e LEFT JOIN generations g ON g.id = e.generation_id"
        " WHERE (e.to_account = ?1 OR e.from_account = ?1) AND e.created_at >= ?2 AND e.created_at < ?3"
        " ORDER BY e.created_at, e.id", (account, start_ms, end_ms))
    movements = []
    for at, kind, source, amount, reference, memo, generation, key, model in rows:
        signed = -amount if source == account else amount
        description = memo or ("inference" if kind == "charge" else kind)
        movements.append(Movement(at, _STATEMENT_KINDS.get(kind, "transfer"), signed, reference, description, model,
                                  generation, labels.get(key) if key else None))
    return opening, movements
