"""Endpoints an API key calls about itself: /key, /generation, /credits/quote (the balance is api/credits.py)."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import orjson

from farebox.api.admin import quote_wire
from farebox.api.http import Request, Response, json_response
from farebox.api.wire import generation_wire, key_wire
from farebox.billing.purchases import quote
from farebox.errors import BadRequest, NotFound
from farebox.money import MoneyFormatError, parse_usd

if TYPE_CHECKING:
    from farebox.app import Gateway


async def key(gw: Gateway, req: Request) -> Response:
    record = gw.directory.authenticate(req.header(b"authorization"))
    data = key_wire(gw, record)
    data.update({
        "is_free_tier": True, "is_management_key": False, "is_provisioning_key": False,
        "rate_limit": {"requests": -1, "interval": "10s", "note": "This field is deprecated and safe to ignore."},
    })
    return json_response({"data": data})


async def generation(gw: Gateway, req: Request) -> Response:
    record = gw.directory.authenticate(req.header(b"authorization"))
    gen_id = req.query("id")
    if not gen_id:
        raise BadRequest("id is required: /api/v1/generation?id=gen-...", field="id")
    data = await gw.store.read(_load_generation, gen_id, record.org_id)
    if data is None:
        raise NotFound(f"Generation {gen_id} not found")
    return json_response({"data": generation_wire(data)})


def _load_generation(conn: sqlite3.Connection, gen_id: str, org_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT data FROM generations WHERE id = ? AND org_id = ?", (gen_id, org_id)).fetchone()
    return None if row is None else orjson.loads(row[0])


async def quote_purchase(gw: Gateway, req: Request) -> Response:
    """GET /credits/quote?amount=50&method=card: what buying that many credits charges and
    brings (fee, bonus), before paying."""
    gw.directory.authenticate(req.header(b"authorization"), allow="any")
    try:
        amount = parse_usd(req.query("amount") or "")
    except MoneyFormatError as e:
        raise BadRequest(f"amount: {e}", field="amount") from None
    q = quote(gw.purchase_pricing, amount, req.query("method") or "card")
    return json_response({"data": quote_wire(q)})
