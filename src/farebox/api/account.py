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
from farebox.store import sqlite as ops
from farebox.tenancy import access

if TYPE_CHECKING:
    from farebox.app import Gateway


async def key(gw: Gateway, req: Request) -> Response:
    record = gw.directory.authenticate(req.header(b"authorization"))
    data = key_wire(gw, record)
    data.update({
        # OpenRouter: "has never paid for credits".
        "is_free_tier": gw.ledger.purchased.get(record.org_id, 0) == 0,  # type: ignore[arg-type]
        "is_management_key": False, "is_provisioning_key": False,
        "rate_limit": {"requests": -1, "interval": "10s", "note": "This field is deprecated and safe to ignore."},
    })
    return json_response({"data": data})


async def generation(gw: Gateway, req: Request) -> Response:
    record = gw.directory.authenticate(req.header(b"authorization"))
    gen_id = req.query("id")
    if not gen_id:
        raise BadRequest("id is required: /api/v1/generation?id=gen-...", field="id")
    data = await gw.store.read(_load_generation, gen_id, record.org_id, record.workspace_id)
    if data is None:
        raise NotFound(f"Generation {gen_id} not found")
    return json_response({"data": generation_wire(data)})


async def generation_content(gw: Gateway, req: Request) -> Response:
    """GET /generation/content?id=: the prompt and completion of a generation, kept only when
    its organization had opted in to prompt logging at the time."""
    record = gw.directory.authenticate(req.header(b"authorization"))
    gen_id = req.query("id")
    if not gen_id:
        raise BadRequest("id is required: /api/v1/generation/content?id=gen-...", field="id")
    row = await gw.store.read(_load_content, gen_id, record.org_id, record.workspace_id)
    if row is None:
        org = gw.directory.orgs[record.org_id]  # type: ignore[index]
        why = ("" if org.settings.get("logging") else
               ": prompt logging is off for this organization (PATCH /api/v1/organization/settings {\"logging\": true})")
        raise NotFound(f"No stored content for generation {gen_id}{why}")
    return json_response({"data": {"id": gen_id, **row}})


# A key reads the generations of its own workspace: keys are workspace-scoped, and another
# workspace's records (and logged prompts) are not its business.

def _load_content(conn: sqlite3.Connection, gen_id: str, org_id: int, workspace_id: int) -> dict[str, Any] | None:
    row = conn.execute("SELECT c.data FROM generation_content c JOIN generations g ON g.id = c.id"
                       " WHERE c.id = ? AND c.org_id = ? AND g.workspace_id = ?",
                       (gen_id, org_id, workspace_id)).fetchone()
    return None if row is None else orjson.loads(row[0])


def _load_generation(conn: sqlite3.Connection, gen_id: str, org_id: int, workspace_id: int) -> dict[str, Any] | None:
    row = conn.execute(f"{ops.SELECT_GENERATION} WHERE id = ? AND org_id = ? AND workspace_id = ?",
                       (gen_id, org_id, workspace_id)).fetchone()
    return None if row is None else ops.generation_from_row(row)


async def quote_purchase(gw: Gateway, req: Request) -> Response:
    """GET /credits/quote?amount=50&method=card: what buying that many credits charges and
    brings (fee, bonus), before paying."""
    access.resolve(gw, req, allow_keys=True)
    try:
        amount = parse_usd(req.query("amount") or "")
    except MoneyFormatError as e:
        raise BadRequest(f"amount: {e}", field="amount") from None
    q = quote(gw.purchase_pricing, amount, req.query("method") or "card")
    return json_response({"data": quote_wire(q)})
