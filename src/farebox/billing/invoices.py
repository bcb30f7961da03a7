"""Issued invoices: the document a purchase or top-up gets, stored as data when the purchase
commits (numbered in the same transaction, so numbers have no gaps) and rendered as HTML
or PDF when downloaded (`billing.invoice` draws them).

The stored data is complete: seller, buyer, lines and tax as they were on the day, so
changing the seller settings later never rewrites an invoice already issued.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import orjson

from farebox.billing.invoice import Buyer, Invoice, Line, Seller, amount_text
from farebox.billing.purchases import Pricing, Quote
from farebox.settings import Settings

METHOD_NAMES = {"card": "card", "crypto": "crypto payment", "bank": "bank transfer"}


def issue(settings: Settings, pricing: Pricing, q: Quote, *, buyer_name: str, buyer_email: str | None,
          payment_method: str, purchase_id: str, issued_at_ms: int) -> dict[str, Any]:
    """The data of the invoice for a paid quote, numbered later by the store."""
    lines = [{"description": f"Farebox credits (purchase {purchase_id})", "amount_nanos": q.credits, "kind": "credits"}]
    if q.bonus:
        lines.append({"description": "Bonus credits (package)", "amount_nanos": q.bonus, "kind": "bonus"})
    if q.fee:
        lines.append({"description": f"Payment processing fee ({METHOD_NAMES[q.method]})", "amount_nanos": q.fee,
                      "kind": "fee"})
    if q.tax:
        assert pricing.tax_percent is not None
        lines.append({"description": f"{settings.invoice_tax_label} {pricing.tax_percent:f}% of "
                                     f"{amount_text(q.credits + q.fee)}, rounded up to the cent",
                      "amount_nanos": q.tax, "kind": "tax"})
    return {
        "issued_at_ms": issued_at_ms,
        "purchase_id": purchase_id,
        "seller": {"name": settings.invoice_seller_name,
                   "address_lines": [line.strip() for line in settings.invoice_seller_address.split(";") if line.strip()],
                   "email": settings.invoice_seller_email, "tax_id_label": settings.invoice_tax_id_label,
                   "tax_id": settings.invoice_seller_tax_id},
        "buyer": {"name": buyer_name, "email": buyer_email or ""},
        "lines": lines,
        "payment_method": payment_method,
        "tax_label": settings.invoice_tax_label,
        "notes": settings.invoice_notes,
    }


def document(prefix: str, number: int, data: dict[str, Any]) -> Invoice:
    seller, buyer = data["seller"], data["buyer"]
    return Invoice(
        number=number_text(prefix, number), issued_at_ms=data["issued_at_ms"],
        seller=Seller(seller["name"], tuple(seller["address_lines"]), seller["email"], seller["tax_id_label"],
                      seller["tax_id"]),
        buyer=Buyer(buyer["name"], buyer["email"]),
        lines=tuple(Line(line["description"], line["amount_nanos"], line["kind"]) for line in data["lines"]),
        payment_method=data["payment_method"], tax_label=data["tax_label"], notes=data["notes"])


def number_text(prefix: str, number: int) -> str:
    return f"{prefix}{number:06d}"


def load(conn: sqlite3.Connection, org_id: int, number: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT data FROM invoices WHERE org_id = ? AND number = ?", (org_id, number)).fetchone()
    return None if row is None else orjson.loads(row[0])


def listing(conn: sqlite3.Connection, org_id: int) -> list[tuple[int, str, dict[str, Any]]]:
    return [(number, purchase_id, orjson.loads(data)) for number, purchase_id, data in conn.execute(
        "SELECT number, purchase_id, data FROM invoices WHERE org_id = ? ORDER BY number", (org_id,))]
