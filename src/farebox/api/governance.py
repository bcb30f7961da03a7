"""Governance endpoints (issue 6): workspaces and their budgets, projects and theirs,
transfers of credit between an organization's wallet and its workspaces' pools, and the
organization's settings (privacy, prompt logging).

Every endpoint resolves its caller and organization through `tenancy.access` and names
one permission; workspaces outside a member's limits answer 404 like missing ones.
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING, Any

import orjson

from farebox.api.fields import name as valid_name
from farebox.api.fields import usd as _usd
from farebox.api.http import Request, Response, iso, json_response
from farebox.api.wire import project_wire, workspace_wire
from farebox.errors import BadRequest, Forbidden, NotFound
from farebox.ledger.caps import BUDGET_PERIODS
from farebox.ledger.entries import wallet
from farebox.ledger.ledger import Transfer
from farebox.money import usd_json
from farebox.tenancy import access
from farebox.tenancy.access import Principal
from farebox.tenancy.records import PRIVACY, Organization, Project, Workspace
from farebox.tenancy.workspaces import check_budgets, check_privacy

if TYPE_CHECKING:
    from farebox.app import Gateway

BODY_MAX = 64 * 1024
REFERENCE_MAX = 200
ORG_SETTINGS = (*PRIVACY, "logging")


async def _body(req: Request) -> dict[str, Any]:
    return await req.json(BODY_MAX)


def _caller(gw: Gateway, req: Request, body: dict[str, Any] | None = None) -> tuple[Principal, Organization]:
    principal = access.resolve(gw, req)
    return principal, access.organization(gw, principal, req, body)


def _org_wide(principal: Principal, what: str) -> None:
    """Actions on the organization as a whole (its wallet, its settings, new workspaces) are
    not for callers limited to some workspaces."""
    if principal.workspaces is not None:
        raise Forbidden(f"{what} acts on the whole organization; a caller limited to some workspaces may not",
                        metadata={"role": principal.role})


def _int(value: Any, field: str) -> int:
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise BadRequest(f"{field} must be a positive integer id", field=field)
    return value


def _bool(body: dict[str, Any], field: str) -> bool:
    value = body[field]
    if not isinstance(value, bool):
        raise BadRequest(f"{field} must be true or false", field=field)
    return value


def _workspace(gw: Gateway, principal: Principal, org: Organization, raw: Any, permission: str,
               field: str = "workspace_id") -> Workspace:
    workspace_id = _int(raw, field)
    access.require(principal, permission, workspace_id=workspace_id)
    return gw.workspaces.get(org, workspace_id)


def _period(req: Request) -> str:
    period = req.params["period"]
    if period not in BUDGET_PERIODS:
        raise BadRequest(f"period must be one of {', '.join(BUDGET_PERIODS)}", field="period")
    return period


def _budgets(body: dict[str, Any]) -> dict[str, int]:
    raw = body.get("budgets", {})
    if not isinstance(raw, dict):
        raise BadRequest("budgets must be an object of period: USD amount", field="budgets")
    unknown = sorted(set(raw) - set(BUDGET_PERIODS))
    if unknown:
        raise BadRequest(f"budgets.{unknown[0]}: not a period ({', '.join(BUDGET_PERIODS)})",
                         field=f"budgets.{unknown[0]}")
    return {p: _usd(v, f"budgets.{p}") for p, v in raw.items() if v is not None}


# -- workspaces ----------------------------------------------------------------------------

async def list_workspaces(gw: Gateway, req: Request) -> Response:
    principal, org = _caller(gw, req)
    access.require(principal, "read")
    visible = access.visible_workspaces(principal, org)
    return json_response({"data": [workspace_wire(gw, w) for wid, w in sorted(org.workspaces.items())
                                   if wid in visible]})


async def create_workspace(gw: Gateway, req: Request) -> Response:
    body = await _body(req)
    principal, org = _caller(gw, req, body)
    access.require(principal, "workspaces.write")
    _org_wide(principal, "Creating a workspace")
    name = valid_name(body.get("name"))
    pooled = _bool(body, "pooled") if "pooled" in body else False
    byok = _bool(body, "include_byok_in_budgets") if "include_byok_in_budgets" in body else False
    settings = body.get("settings") or {}
    if not isinstance(settings, dict):
        raise BadRequest("settings must be an object", field="settings")
    check_privacy(settings)
    budgets = _budgets(body)
    check_budgets(budgets)   # before anything is created: a refused request creates nothing
    workspace = await gw.workspaces.create(org, name, pooled=pooled, include_byok_in_budgets=byok)
    if settings:
        await gw.workspaces.update(org, workspace, {"settings": settings})
    for period, amount in budgets.items():
        await gw.workspaces.set_budget(workspace, period, amount)
    return json_response({"data": workspace_wire(gw, workspace)}, 201)


async def get_workspace(gw: Gateway, req: Request) -> Response:
    principal, org = _caller(gw, req)
    return json_response({"data": workspace_wire(gw, _workspace(gw, principal, org, req.params["id"], "read",
                                                                "id"))})


async def patch_workspace(gw: Gateway, req: Request) -> Response:
    body = await _body(req)
    principal, org = _caller(gw, req, body)
    workspace = _workspace(gw, principal, org, req.params["id"], "workspaces.write", "id")
    changes: dict[str, Any] = {}
    if "name" in body:
        changes["name"] = valid_name(body["name"])
    for flag in ("pooled", "include_byok_in_budgets"):
        if flag in body:
            changes[flag] = _bool(body, flag)
    if "settings" in body:
        if not isinstance(body["settings"], dict):
            raise BadRequest("settings must be an object", field="settings")
        changes["settings"] = {**workspace.settings, **check_privacy(body["settings"])}
    if changes:
        await gw.workspaces.update(org, workspace, changes)
    return json_response({"data": workspace_wire(gw, workspace)})


async def delete_workspace(gw: Gateway, req: Request) -> Response:
    principal, org = _caller(gw, req)
    workspace = _workspace(gw, principal, org, req.params["id"], "workspaces.write", "id")
    await gw.workspaces.delete(org, workspace)
    return json_response({"deleted": True})


async def put_workspace_budget(gw: Gateway, req: Request) -> Response:
    body = await _body(req)
    principal, org = _caller(gw, req, body)
    workspace = _workspace(gw, principal, org, req.params["id"], "budgets.write", "id")
    await gw.workspaces.set_budget(workspace, _period(req), _usd(body.get("amount"), "amount"))
    return json_response({"data": workspace_wire(gw, workspace)})


async def delete_workspace_budget(gw: Gateway, req: Request) -> Response:
    principal, org = _caller(gw, req)
    workspace = _workspace(gw, principal, org, req.params["id"], "budgets.write", "id")
    await gw.workspaces.set_budget(workspace, _period(req), None)
    return json_response({"data": workspace_wire(gw, workspace)})


# -- projects ------------------------------------------------------------------------------

def _project(gw: Gateway, principal: Principal, org: Organization, raw: Any, permission: str) -> Project:
    project = gw.workspaces.project(org, _int(raw, "id"))
    if not access.can_see_workspace(principal, project.workspace_id):
        raise NotFound(f"No project {project.id} in this organization")
    access.require(principal, permission, workspace_id=project.workspace_id)
    return project


async def list_projects(gw: Gateway, req: Request) -> Response:
    principal, org = _caller(gw, req)
    access.require(principal, "read")
    visible = access.visible_workspaces(principal, org)
    only = req.query("workspace_id")
    if only is not None:
        wid = _int(only, "workspace_id")
        if wid not in visible or wid not in org.workspaces:
            raise NotFound(f"No workspace {wid} in this organization")
        visible = {wid}
    projects = sorted((p for p in gw.directory.projects.values() if p.org_id == org.id and p.workspace_id in visible),
                      key=lambda p: p.id)
    return json_response({"data": [project_wire(gw, p) for p in projects]})


async def create_project(gw: Gateway, req: Request) -> Response:
    body = await _body(req)
    principal, org = _caller(gw, req, body)
    raw_workspace = body.get("workspace_id", org.default_workspace_id)
    workspace = _workspace(gw, principal, org, raw_workspace, "projects.write")
    name = valid_name(body.get("name"))
    budgets = _budgets(body)
    check_budgets(budgets)   # before anything is created
    project = await gw.workspaces.create_project(org, workspace, name)
    for period, amount in budgets.items():
        await gw.workspaces.set_budget(project, period, amount)
    return json_response({"data": project_wire(gw, project)}, 201)


async def get_project(gw: Gateway, req: Request) -> Response:
    principal, org = _caller(gw, req)
    return json_response({"data": project_wire(gw, _project(gw, principal, org, req.params["id"], "read"))})


async def patch_project(gw: Gateway, req: Request) -> Response:
    body = await _body(req)
    principal, org = _caller(gw, req, body)
    project = _project(gw, principal, org, req.params["id"], "projects.write")
    if "name" in body:
        name = valid_name(body["name"])
        if name != project.name:
            await gw.workspaces.rename_project(project, name)
    return json_response({"data": project_wire(gw, project)})


async def delete_project(gw: Gateway, req: Request) -> Response:
    principal, org = _caller(gw, req)
    project = _project(gw, principal, org, req.params["id"], "projects.write")
    await gw.workspaces.delete_project(project)
    return json_response({"deleted": True})


async def put_project_budget(gw: Gateway, req: Request) -> Response:
    body = await _body(req)
    principal, org = _caller(gw, req, body)
    project = _project(gw, principal, org, req.params["id"], "budgets.write")
    await gw.workspaces.set_budget(project, _period(req), _usd(body.get("amount"), "amount"))
    return json_response({"data": project_wire(gw, project)})


async def delete_project_budget(gw: Gateway, req: Request) -> Response:
    principal, org = _caller(gw, req)
    project = _project(gw, principal, org, req.params["id"], "budgets.write")
    await gw.workspaces.set_budget(project, _period(req), None)
    return json_response({"data": project_wire(gw, project)})


# -- transfers -----------------------------------------------------------------------------

def _pool(gw: Gateway, principal: Principal, org: Organization, raw: Any, field: str) -> tuple[str, str]:
    """(account, name) of a transfer's side: "organization" (its wallet) or a pooled
    workspace's id."""
    if raw == "organization":
        _org_wide(principal, "A transfer from or to the organization's wallet")
        return wallet(org.id), "organization"
    workspace = _workspace(gw, principal, org, raw, "transfers", field)
    if not workspace.pooled:
        raise BadRequest(f"Workspace {workspace.name!r} spends from the organization's wallet and has no pool: "
                         "make it pooled (PATCH pooled: true) to transfer credit to it", field=field)
    return workspace.account, f"workspace:{workspace.id}"


def _side(org: Organization, account: str) -> Any:
    if account == wallet(org.id):
        return "organization"
    return int(account.split(":")[3])


def transfer_wire(org: Organization, t: Transfer) -> dict[str, Any]:
    return {"reference": t.reference, "from": _side(org, t.source), "to": _side(org, t.target),
            "amount": usd_json(t.amount), "memo": t.memo, "created_by": t.created_by,
            "created_at": iso(t.created_at)}


async def create_transfer(gw: Gateway, req: Request) -> Response:
    body = await _body(req)
    principal, org = _caller(gw, req, body)
    access.require(principal, "transfers")
    source, _ = _pool(gw, principal, org, body.get("from"), "from")
    target, _ = _pool(gw, principal, org, body.get("to"), "to")
    if source == target:
        raise BadRequest("from and to must differ", field="to")
    amount = _usd(body.get("amount"), "amount", allow_zero=False)
    reference = body.get("reference")
    if not isinstance(reference, str) or not reference.strip() or len(reference) > REFERENCE_MAX:
        raise BadRequest("reference must be a non-empty string (it makes the transfer idempotent)", field="reference")
    memo = body.get("memo")
    if memo is not None and (not isinstance(memo, str) or len(memo) > 500):
        raise BadRequest("memo must be a string of at most 500 characters", field="memo")
    # References are per organization: the stored one is prefixed, so two tenants never collide.
    new, transfer = await gw.ledger.transfer(org.id, source, target, amount, f"{org.id}:{reference.strip()}",
                                             memo=memo, created_by=principal.actor)
    data = transfer_wire(org, transfer)
    data["reference"] = reference.strip()
    data["replayed"] = not new
    return json_response({"data": data}, 201 if new else 200)


async def list_transfers(gw: Gateway, req: Request) -> Response:
    principal, org = _caller(gw, req)
    access.require(principal, "read")
    visible = {w.account for wid, w in org.workspaces.items()
               if w.pooled and access.can_see_workspace(principal, wid)}
    if principal.workspaces is None:
        visible.add(wallet(org.id))
    rows = [t for t in gw.ledger.transfers.values() if t.org_id == org.id and (t.source in visible
                                                                             or t.target in visible)]
    rows.sort(key=lambda t: t.created_at)
    prefix = f"{org.id}:"
    out = []
    for t in rows:
        data = transfer_wire(org, t)
        data["reference"] = t.reference.removeprefix(prefix)
        out.append(data)
    return json_response({"data": out})


# -- organization settings -----------------------------------------------------------------

def settings_wire(org: Organization) -> dict[str, Any]:
    return {name: bool(org.settings.get(name, False)) for name in ORG_SETTINGS}


async def get_settings(gw: Gateway, req: Request) -> Response:
    principal, org = _caller(gw, req)
    access.require(principal, "read")
    return json_response({"data": settings_wire(org)})


async def patch_settings(gw: Gateway, req: Request) -> Response:
    body = await _body(req)
    principal, org = _caller(gw, req, body)
    access.require(principal, "privacy.write")
    _org_wide(principal, "Changing the organization's settings")
    changes = check_privacy({k: v for k, v in body.items() if k != "organization"}, ORG_SETTINGS)
    merged = {**org.settings, **changes}
    await gw.writer.submit(lambda conn: _store_settings(conn, org.id, merged))
    org.settings = merged
    return json_response({"data": settings_wire(org)})


def _store_settings(conn: sqlite3.Connection, org_id: int, settings: dict[str, Any]) -> None:
    conn.execute("UPDATE organizations SET settings = ? WHERE id = ?", (orjson.dumps(settings).decode(), org_id))


EXACT = {
    ("GET", "/workspaces"): list_workspaces,
    ("POST", "/workspaces"): create_workspace,
    ("GET", "/projects"): list_projects,
    ("POST", "/projects"): create_project,
    ("GET", "/transfers"): list_transfers,
    ("POST", "/transfers"): create_transfer,
    ("GET", "/organization/settings"): get_settings,
    ("PATCH", "/organization/settings"): patch_settings,
}
PATTERNS = [
    ("GET", r"/workspaces/(?P<id>[0-9]+)", get_workspace),
    ("PATCH", r"/workspaces/(?P<id>[0-9]+)", patch_workspace),
    ("DELETE", r"/workspaces/(?P<id>[0-9]+)", delete_workspace),
    ("PUT", r"/workspaces/(?P<id>[0-9]+)/budgets/(?P<period>[a-z]+)", put_workspace_budget),
    ("DELETE", r"/workspaces/(?P<id>[0-9]+)/budgets/(?P<period>[a-z]+)", delete_workspace_budget),
    ("GET", r"/projects/(?P<id>[0-9]+)", get_project),
    ("PATCH", r"/projects/(?P<id>[0-9]+)", patch_project),
    ("DELETE", r"/projects/(?P<id>[0-9]+)", delete_project),
    ("PUT", r"/projects/(?P<id>[0-9]+)/budgets/(?P<period>[a-z]+)", put_project_budget),
    ("DELETE", r"/projects/(?P<id>[0-9]+)/budgets/(?P<period>[a-z]+)", delete_project_budget),
]
