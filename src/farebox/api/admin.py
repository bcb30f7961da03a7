"""Management endpoints: organizations, credit grants, recorded purchases and ledger
verification (the operator's management key only), and the key API of OpenRouter's
section 2.8 (the operator or a logged-in member, never an API key).

Farebox's management key is the operator's, above every organization, so key calls name
the organization they act on: `organization` in the body or the query (a name or an id).
A member acts on their own organization, within their role and workspaces
(`farebox.tenancy.access`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from farebox.api import fields
from farebox.api.http import Request, Response, json_response, parse_iso
from farebox.api.wire import key_wire, org_wire
from farebox.billing.purchases import Quote
from farebox.errors import BadRequest, NotFound
from farebox.ledger.entries import SYSTEM_ACCOUNTS
from farebox.ledger.usage import PERIODS
from farebox.ledger.verify import verify_memory, verify_store
from farebox.money import usd_json
from farebox.tenancy import access
from farebox.tenancy.access import Principal
from farebox.tenancy.records import KeyRecord

if TYPE_CHECKING:
    from farebox.app import Gateway

BODY_MAX = 64 * 1024


def _auth(gw: Gateway, req: Request) -> None:
    gw.directory.authenticate(req.header(b"authorization"), allow="management")


async def _body(req: Request) -> dict[str, Any]:
    return await req.json(BODY_MAX)


def _name(body: dict[str, Any], field: str = "name") -> str:
    return fields.name(body.get(field), field)


_usd = fields.usd


# -- organizations and credits ---------------------------------------------------------

async def create_org(gw: Gateway, req: Request) -> Response:
    _auth(gw, req)
    org = await gw.directory.create_org(_name(await _body(req)))
    if gw.trial_credit:
        days = gw.settings.trial_expiry_days
        expires = gw.clock.now_ms() + days * DAY_MS if days else None
        await gw.ledger.grant(org.id, gw.trial_credit, f"org:{org.id}", "trial credit", kind="trial",
                              expires_at_ms=expires)
    return json_response({"data": org_wire(gw, org)}, 201)


async def list_orgs(gw: Gateway, req: Request) -> Response:
    _auth(gw, req)
    return json_response({"data": [org_wire(gw, o) for o in sorted(gw.directory.orgs.values(), key=lambda o: o.id)]})


async def get_org(gw: Gateway, req: Request) -> Response:
    _auth(gw, req)
    return json_response({"data": org_wire(gw, gw.directory.org(req.params["org"]))})


async def grant(gw: Gateway, req: Request) -> Response:
    _auth(gw, req)
    org = gw.directory.org(req.params["org"])
    body = await _body(req)
    amount = _usd(body.get("amount"), "amount", allow_zero=False)
    reference = body.get("reference")
    if not isinstance(reference, str) or not reference.strip() or len(reference) > 200:
        raise BadRequest("reference must be a non-empty string (it makes the grant idempotent)", field="reference")
    memo = body.get("memo") if isinstance(body.get("memo"), str) else None
    days = gw.settings.grant_expiry_days
    expires = gw.clock.now_ms() + days * DAY_MS if days else None
    new, entry = await gw.ledger.grant(org.id, amount, reference.strip(), memo, expires_at_ms=expires)
    return json_response({"data": {"reference": reference.strip(), "amount": usd_json(entry.amount),
                                   "replayed": not new, "organization": org_wire(gw, org)}}, 201 if new else 200)


DAY_MS = 86_400_000


async def record_purchase(gw: Gateway, req: Request) -> Response:
    """A payment received outside Stripe (a bank transfer, a crypto payment), recorded by the
    operator: credited with the method's fee and the package bonus, like any purchase."""
    _auth(gw, req)
    org = gw.directory.org(req.params["org"])
    body = await _body(req)
    amount = _usd(body.get("amount"), "amount", allow_zero=False)
    method = body.get("method")
    reference = body.get("reference")
    if not isinstance(reference, str) or not reference.strip() or len(reference) > 200:
        raise BadRequest("reference must be a non-empty string (it makes the purchase idempotent)", field="reference")
    new, q = await gw.payments.record_manual(org, amount, method, reference.strip())
    return json_response({"data": {**quote_wire(q), "reference": reference.strip(), "replayed": not new,
                                   "organization": org_wire(gw, org)}}, 201 if new else 200)


def quote_wire(q: Quote) -> dict[str, Any]:
    return {"method": q.method, "credits": usd_json(q.credits), "fee": usd_json(q.fee), "bonus": usd_json(q.bonus),
            "tax": usd_json(q.tax), "charged": usd_json(q.charged), "credited": usd_json(q.credited)}


# -- keys --------------------------------------------------------------------------------

def _key_options(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "name" in body or creating:
        out["name"] = _name(body)
    if "limit" in body:
        out["limit"] = None if body["limit"] is None else _usd(body["limit"], "limit")
    if "limit_reset" in body:
        reset = body["limit_reset"]
        if reset is not None and reset not in PERIODS:
            raise BadRequest("limit_reset must be daily, weekly, monthly or null", field="limit_reset")
        out["limit_reset"] = reset
    if "include_byok_in_limit" in body:
        if not isinstance(body["include_byok_in_limit"], bool):
            raise BadRequest("include_byok_in_limit must be a boolean", field="include_byok_in_limit")
        out["include_byok_in_limit"] = body["include_byok_in_limit"]
    if "expires_at" in body:
        out["expires_at"] = parse_iso(body["expires_at"], "expires_at")
    if "disabled" in body and not creating:
        if not isinstance(body["disabled"], bool):
            raise BadRequest("disabled must be a boolean", field="disabled")
        out["disabled"] = body["disabled"]
    for rate in ("rate_limit_rpm", "rate_limit_tpm"):   # per minute; null: no limit
        if rate in body:
            value = body[rate]
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**31):
                raise BadRequest(f"{rate} must be a positive integer or null", field=rate)
            out[rate] = value
    return out


async def create_key(gw: Gateway, req: Request) -> Response:
    principal = access.resolve(gw, req)
    body = await _body(req)
    org = access.organization(gw, principal, req, body)
    options = _key_options(body, creating=True)
    workspace_id = body.get("workspace_id")
    if workspace_id is not None and (not isinstance(workspace_id, int) or isinstance(workspace_id, bool)):
        raise BadRequest("workspace_id must be an integer", field="workspace_id")
    if workspace_id is None:
        workspace_id = org.default_workspace_id
    access.require(principal, "keys.write", workspace_id=workspace_id)
    if principal.member is not None:   # a member's key is theirs: they may change it later
        creator = principal.member.id
    else:
        creator = body.get("creator_user_id") if isinstance(body.get("creator_user_id"), str) else None
    record, secret = await gw.directory.create_key(
        org, options["name"], workspace_id=workspace_id, limit=options.get("limit"),
        limit_reset=options.get("limit_reset"), include_byok_in_limit=options.get("include_byok_in_limit", False),
        expires_at=options.get("expires_at"), creator_user_id=creator,
        rate_limit_rpm=options.get("rate_limit_rpm"), rate_limit_tpm=options.get("rate_limit_tpm"))
    return json_response({"data": key_wire(gw, record), "key": secret}, 201)


async def list_keys(gw: Gateway, req: Request) -> Response:
    principal = access.resolve(gw, req)
    org = access.organization(gw, principal, req)
    access.require(principal, "read")
    include_disabled = req.query("include_disabled") in ("true", "1")
    offset = req.query("offset") or "0"
    if not offset.isdigit():
        raise BadRequest("offset must be a non-negative integer", field="offset")
    workspace = req.query("workspace_id")
    if workspace is not None:
        if not workspace.isdigit():
            raise BadRequest("workspace_id must be an integer", field="workspace_id")
        access.require(principal, "read", workspace_id=int(workspace))
    keys = [k for k in gw.directory.org_keys(org.id)
            if (include_disabled or not k.disabled) and (workspace is None or str(k.workspace_id) == workspace)
            and access.can_see_workspace(principal, k.workspace_id)]  # type: ignore[arg-type]
    keys.sort(key=lambda k: k.created_at)
    page = keys[int(offset):int(offset) + 100]
    return json_response({"data": [key_wire(gw, k) for k in page]})


def _key_of(gw: Gateway, req: Request, principal: Principal, body: dict[str, Any] | None = None) -> KeyRecord:
    """The key named in the path, as the caller may see it: in their organization and in a
    workspace they can see, else 404. The operator may name a key by its hash alone."""
    khash = req.params["hash"]
    if principal.is_operator and (body or {}).get("organization") is None and req.query("organization") is None:
        return gw.directory.key(khash)
    org = access.organization(gw, principal, req, body)
    record = gw.directory.key(khash, org.id)
    if not access.can_see_workspace(principal, record.workspace_id):  # type: ignore[arg-type]
        raise NotFound(f"No key with hash {khash!r}")   # Directory.key's words for a missing one
    return record


def _require_key_write(principal: Principal, record: KeyRecord) -> None:
    access.require(principal, "keys.write", workspace_id=record.workspace_id, creator=record.creator_user_id,
                   existing=True)


async def get_key(gw: Gateway, req: Request) -> Response:
    principal = access.resolve(gw, req)
    record = _key_of(gw, req, principal)
    access.require(principal, "read")
    return json_response({"data": key_wire(gw, record)})


async def patch_key(gw: Gateway, req: Request) -> Response:
    principal = access.resolve(gw, req)
    body = await _body(req)
    record = _key_of(gw, req, principal, body)
    _require_key_write(principal, record)
    changes = _key_options(body, creating=False)
    if changes:
        await gw.directory.update_key(record, changes)
    return json_response({"data": key_wire(gw, record)})


async def delete_key(gw: Gateway, req: Request) -> Response:
    principal = access.resolve(gw, req)
    record = _key_of(gw, req, principal)
    _require_key_write(principal, record)
    await gw.directory.delete_key(record)
    return json_response({"deleted": True})


# -- ledger --------------------------------------------------------------------------------

async def verify(gw: Gateway, req: Request) -> Response:
    """Verify the stored ledger, then this process's book against it. Memory and disk can
    disagree for an instant while a charge is committing, so a mismatch is re-checked a
    few times before it counts."""
    _auth(gw, req)
    for attempt in range(5):
        await gw.writer.submit(lambda conn: None)  # everything settled so far is committed
        memory = {a: v for a, v in gw.book.balances.items() if a.startswith("org:") or a in SYSTEM_ACCOUNTS}
        report = await gw.store.read(verify_store)
        stored = await gw.store.read(lambda conn: dict(conn.execute("SELECT id, balance FROM accounts")))
        verify_memory(report, stored=stored, memory=memory, oldest_hold_age_s=gw.book.oldest_hold_age(),
                      hold_limit_s=gw.settings.hold_timeout_s + 2 * gw.settings.hold_sweep_interval_s,
                      open_holds=len(gw.book.holds))
        if report.checks.get("memory", 0) == 0 or attempt == 4:
            break
        await asyncio.sleep(0.05)
    return json_response({"data": report.wire()})
