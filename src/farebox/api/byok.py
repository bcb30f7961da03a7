"""BYOK credentials: an organization's own provider keys, per workspace.

    GET    /api/v1/byok[?workspace_id=]                  list (read)
    POST   /api/v1/byok {provider, api_key, name?, workspace_id?, always_use?} -> 201 (byok.write)
    GET    /api/v1/byok/{id}                             (read)
    PATCH  /api/v1/byok/{id} {name?, api_key?, always_use?, disabled?}  (byok.write)
    DELETE /api/v1/byok/{id}                             (byok.write)

The key is accepted, never returned: responses show its masked `label` only, and no
error message repeats it. The operator names the organization (`organization` in the body
or the query); members and keys act on their own (see tenancy/access.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from farebox.api import fields
from farebox.api.http import Request, Response, iso, json_response
from farebox.errors import BadRequest, NotFound
from farebox.tenancy import access
from farebox.tenancy.byok import Credential
from farebox.tenancy.records import Organization

if TYPE_CHECKING:
    from farebox.app import Gateway

BODY_MAX = 64 * 1024
API_KEY_MAX = 4096


def credential_wire(cred: Credential) -> dict[str, Any]:
    return {"id": cred.id, "provider": cred.provider, "name": cred.name, "label": cred.label,
            "workspace_id": cred.workspace_id, "always_use": cred.always_use, "disabled": cred.disabled,
            "created_by": cred.created_by, "created_at": iso(cred.created_at), "updated_at": iso(cred.updated_at)}


# -- reading the body ----------------------------------------------------------------------

def _api_key(value: Any) -> str:
    # The key goes into an HTTP header upstream: anything but visible ASCII (a space, a
    # newline that would start another header) is refused. The message never echoes it.
    if (not isinstance(value, str) or not value or len(value) > API_KEY_MAX
            or not all("!" <= c <= "~" for c in value)):
        raise BadRequest(f"api_key must be the provider's API key: 1 to {API_KEY_MAX} visible ASCII characters,"
                         " no spaces", field="api_key")
    return value


def _bool(body: dict[str, Any], field: str) -> bool:
    value = body[field]
    if not isinstance(value, bool):
        raise BadRequest(f"{field} must be a boolean", field=field)
    return value


def _provider(gw: Gateway, value: Any) -> str:
    if not isinstance(value, str) or value not in gw.catalog.providers:
        known = ", ".join(sorted(gw.catalog.providers))
        raise BadRequest(f"provider must be the slug of a provider of the catalog: {known}", field="provider")
    return value


def _workspace_id(org: Organization, value: Any) -> int:
    """A workspace of `org`; the default workspace when `value` is None."""
    if value is None:
        return org.default_workspace_id
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest("workspace_id must be an integer", field="workspace_id")
    if value not in org.workspaces:
        raise NotFound(f"No workspace {value} in this organization")   # access.require's words: not a hint
    return value


async def _body(req: Request) -> dict[str, Any]:
    return await req.json(BODY_MAX)


def _credential(gw: Gateway, principal: access.Principal, org: Organization, req: Request,
                permission: str) -> Credential:
    cred = gw.credentials.get(org.id, req.params["id"])
    access.require(principal, permission, workspace_id=cred.workspace_id)
    return cred


# -- endpoints -----------------------------------------------------------------------------

async def list_credentials(gw: Gateway, req: Request) -> Response:
    principal = access.resolve(gw, req, allow_keys=True)
    org = access.organization(gw, principal, req)
    access.require(principal, "read")
    visible = access.visible_workspaces(principal, org)
    if req.query("workspace_id") is not None:
        workspace_id = _workspace_id(org, req.query("workspace_id"))
        access.require(principal, "read", workspace_id=workspace_id)
        visible = {workspace_id}
    creds = [c for c in gw.credentials.for_org(org.id) if c.workspace_id in visible]
    return json_response({"data": [credential_wire(c) for c in creds]})


async def create_credential(gw: Gateway, req: Request) -> Response:
    principal = access.resolve(gw, req)
    body = await _body(req)
    org = access.organization(gw, principal, req, body)
    workspace_id = _workspace_id(org, body.get("workspace_id"))
    access.require(principal, "byok.write", workspace_id=workspace_id)
    provider = _provider(gw, body.get("provider"))
    api_key = _api_key(body.get("api_key"))
    name = fields.name(body["name"]) if body.get("name") is not None else gw.catalog.providers[provider].name
    always_use = _bool(body, "always_use") if "always_use" in body else False
    cred = await gw.credentials.create(org.id, workspace_id, provider, api_key, name=name, always_use=always_use,
                                       created_by=principal.actor)
    return json_response({"data": credential_wire(cred)}, 201)


async def get_credential(gw: Gateway, req: Request) -> Response:
    principal = access.resolve(gw, req, allow_keys=True)
    org = access.organization(gw, principal, req)
    return json_response({"data": credential_wire(_credential(gw, principal, org, req, "read"))})


async def patch_credential(gw: Gateway, req: Request) -> Response:
    principal = access.resolve(gw, req)
    body = await _body(req)
    org = access.organization(gw, principal, req, body)
    cred = _credential(gw, principal, org, req, "byok.write")
    changes: dict[str, Any] = {}
    if "name" in body:
        changes["name"] = fields.name(body["name"])
    if "api_key" in body:
        changes["api_key"] = _api_key(body["api_key"])
    for field in ("always_use", "disabled"):
        if field in body:
            changes[field] = _bool(body, field)
    for fixed in ("provider", "workspace_id"):
        if fixed in body and body[fixed] != getattr(cred, fixed):
            raise BadRequest(f"{fixed} of a BYOK credential cannot change; create another credential",
                             field=fixed)
    if changes:
        await gw.credentials.update(cred, changes)
    return json_response({"data": credential_wire(cred)})


async def delete_credential(gw: Gateway, req: Request) -> Response:
    principal = access.resolve(gw, req)
    org = access.organization(gw, principal, req)
    await gw.credentials.delete(_credential(gw, principal, org, req, "byok.write"))
    return json_response({"deleted": True})
