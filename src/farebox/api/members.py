"""Members and login sessions over HTTP (issue 6):

    POST   /api/v1/auth/login                    {organization, email, password} -> a session token
    POST   /api/v1/auth/logout                   (Bearer session)
    GET    /api/v1/organization/members          read
    POST   /api/v1/organization/members          members.write
    GET    /api/v1/organization/members/{id}     read
    PATCH  /api/v1/organization/members/{id}     members.write (a member may change their own name and password)
    DELETE /api/v1/organization/members/{id}     members.write
    GET    /api/v1/organization/me               who the caller is and what they may do

The operator names the organization (`organization` in the body or query); a member acts
on their own. Only an owner touches owners. A caller limited to some workspaces manages
only members limited to workspaces it can see, so it cannot hand out more than it has.
Member lists show emails: they are for members and the operator, not for API keys.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from farebox.api import fields
from farebox.api.http import Request, Response, iso, json_response
from farebox.errors import BadRequest, Forbidden, Unauthorized
from farebox.tenancy import access
from farebox.tenancy.access import PERMISSIONS, Principal
from farebox.tenancy.members import ROLES, SESSION_PREFIX, Member
from farebox.tenancy.records import Organization

if TYPE_CHECKING:
    from farebox.app import Gateway

BODY_MAX = 64 * 1024
PASSWORD_MIN, PASSWORD_MAX = 8, 1024
EMAIL_MAX = 254
WORKSPACES_MAX = 1000
_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")


def member_wire(m: Member) -> dict[str, Any]:
    return {"id": m.id, "email": m.email, "name": m.name, "role": m.role,
            "workspaces": None if m.workspaces is None else sorted(m.workspaces), "disabled": m.disabled,
            "created_at": iso(m.created_at), "updated_at": iso(m.updated_at)}


# -- validation ----------------------------------------------------------------------------

def _email(value: Any) -> str:
    if not isinstance(value, str) or len(value) > EMAIL_MAX or not _EMAIL.fullmatch(value.strip()):
        raise BadRequest("email must be an email address such as ada@example.com", field="email")
    return value.strip().lower()


def _password(value: Any) -> str:
    if not isinstance(value, str) or not PASSWORD_MIN <= len(value) <= PASSWORD_MAX:
        raise BadRequest(f"password must be a string of {PASSWORD_MIN} to {PASSWORD_MAX} characters", field="password")
    return value


def _role(value: Any) -> str:
    if value not in ROLES:
        raise BadRequest(f"role must be one of {', '.join(ROLES)}", field="role")
    return value  # type: ignore[no-any-return]


def _name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > fields.NAME_MAX or "\n" in value or "\r" in value:
        raise BadRequest(f"name must be a one-line string of at most {fields.NAME_MAX} characters, or null", field="name")
    return value.strip() or None


def _workspaces(value: Any, org: Organization, principal: Principal) -> frozenset[int] | None:
    """null (every workspace) or a non-empty list of the organization's workspace ids that
    the caller can see. A caller limited to workspaces cannot grant "every workspace"."""
    if value is None:
        if principal.workspaces is not None:
            raise BadRequest("workspaces must list workspaces you can see (you are limited to some)",
                             field="workspaces")
        return None
    if (not isinstance(value, list) or not value or len(value) > WORKSPACES_MAX
            or not all(isinstance(w, int) and not isinstance(w, bool) for w in value)):
        raise BadRequest("workspaces must be null (all) or a non-empty list of workspace ids", field="workspaces")
    visible = access.visible_workspaces(principal, org)
    for w in value:
        if w not in visible:
            raise BadRequest(f"workspaces: no workspace {w} in this organization", field="workspaces")
    return frozenset(value)


def _within_reach(principal: Principal, target: Member) -> None:
    """A caller limited to some workspaces manages only members limited to those."""
    if principal.workspaces is not None and (target.workspaces is None or not target.workspaces <= principal.workspaces):
        raise Forbidden("You may not manage a member with access to workspaces you cannot see",
                        metadata={"required": "members.write", "role": principal.role})


async def _body(req: Request) -> dict[str, Any]:
    return await req.json(BODY_MAX)


# -- sessions --------------------------------------------------------------------------------

async def login(gw: Gateway, req: Request) -> Response:
    body = await _body(req)
    org_name = body.get("organization")
    if isinstance(org_name, bool) or not isinstance(org_name, str | int) or org_name == "":
        raise BadRequest("organization must be an organization name or id", field="organization")
    email = body.get("email")
    if not isinstance(email, str) or not email.strip() or len(email) > EMAIL_MAX:
        raise BadRequest("email must be a string", field="email")
    password = body.get("password")
    if not isinstance(password, str) or not password or len(password) > PASSWORD_MAX:
        raise BadRequest(f"password must be a string of at most {PASSWORD_MAX} characters", field="password")
    org = gw.directory.orgs_by_name.get(org_name) if isinstance(org_name, str) else gw.directory.orgs.get(org_name)
    if org is None and isinstance(org_name, str) and org_name.isdigit():
        org = gw.directory.orgs.get(int(org_name))
    # An unknown organization is refused after the same work as a wrong password.
    token, member, expires_at = await gw.members.login(None if org is None else org.id, email, password)
    return json_response({"data": {"token": token, "expires_at": iso(expires_at), "member": member_wire(member)}})


async def logout(gw: Gateway, req: Request) -> Response:
    header = req.header(b"authorization") or ""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token.startswith(SESSION_PREFIX):
        raise Unauthorized("Log out with the session token: Authorization: Bearer fbs-...")
    if not await gw.members.logout(token):
        raise Unauthorized("Session not found or expired")
    return json_response({"data": {"logged_out": True}})


# -- members ---------------------------------------------------------------------------------

async def list_members(gw: Gateway, req: Request) -> Response:
    principal = access.resolve(gw, req)
    org = access.organization(gw, principal, req)
    access.require(principal, "read")
    return json_response({"data": [member_wire(m) for m in gw.members.for_org(org.id)]})


async def create_member(gw: Gateway, req: Request) -> Response:
    principal = access.resolve(gw, req)
    body = await _body(req)
    org = access.organization(gw, principal, req, body)
    access.require(principal, "members.write")
    role = _role(body.get("role"))
    access.require_owner_for(principal, role)
    email = _email(body.get("email"))
    password = _password(body.get("password"))
    name = _name(body.get("name"))
    workspaces = _workspaces(body.get("workspaces"), org, principal)
    member = await gw.members.create(org.id, email, password, role, name=name, workspaces=workspaces)
    return json_response({"data": member_wire(member)}, 201)


async def get_member(gw: Gateway, req: Request) -> Response:
    principal = access.resolve(gw, req)
    org = access.organization(gw, principal, req)
    access.require(principal, "read")
    return json_response({"data": member_wire(gw.members.get(org.id, req.params["member_id"]))})


SELF_SERVICE = frozenset({"name", "password"})


async def patch_member(gw: Gateway, req: Request) -> Response:
    principal = access.resolve(gw, req)
    body = await _body(req)
    org = access.organization(gw, principal, req, body)
    target = gw.members.get(org.id, req.params["member_id"])
    fields = set(body) - {"organization"}
    unknown = fields - {"role", "name", "workspaces", "disabled", "password"}
    if unknown:
        raise BadRequest(f"Unknown field {sorted(unknown)[0]!r}: a member has role, name, workspaces, disabled,"
                         " password", field=sorted(unknown)[0])
    own = principal.member is not None and principal.member.id == target.id
    if not (own and fields <= SELF_SERVICE):   # anyone may change their own name and password
        access.require(principal, "members.write")
        _within_reach(principal, target)
        access.require_owner_for(principal, target.role, body.get("role"))
    changes: dict[str, Any] = {}
    if "role" in body:
        changes["role"] = _role(body["role"])
    if "name" in body:
        changes["name"] = _name(body["name"])
    if "workspaces" in body:
        changes["workspaces"] = _workspaces(body["workspaces"], org, principal)
    if "disabled" in body:
        if not isinstance(body["disabled"], bool):
            raise BadRequest("disabled must be a boolean", field="disabled")
        changes["disabled"] = body["disabled"]
    if "password" in body:
        changes["password"] = _password(body["password"])
    if changes:
        target = await gw.members.update(target, changes)
    return json_response({"data": member_wire(target)})


async def delete_member(gw: Gateway, req: Request) -> Response:
    principal = access.resolve(gw, req)
    org = access.organization(gw, principal, req)
    target = gw.members.get(org.id, req.params["member_id"])
    access.require(principal, "members.write")
    _within_reach(principal, target)
    access.require_owner_for(principal, target.role)
    await gw.members.delete(target)
    return json_response({"data": {"id": target.id, "deleted": True}})


async def me(gw: Gateway, req: Request) -> Response:
    """The caller as the gateway sees it: kind, organization, role, workspaces, and the
    permissions it holds (what the dashboard may offer)."""
    principal = access.resolve(gw, req, allow_keys=True)
    org = gw.directory.orgs.get(principal.org_id) if principal.org_id is not None else None  # type: ignore[arg-type]
    key = principal.key
    return json_response({"data": {
        "kind": principal.kind, "role": principal.role, "actor": principal.actor,
        "organization": None if org is None else {"id": org.id, "name": org.name},
        "workspaces": None if principal.workspaces is None else sorted(principal.workspaces),
        "member": None if principal.member is None else member_wire(principal.member),
        "key": None if key is None else {"hash": key.hash, "name": key.name, "label": key.label,
                                         "workspace_id": key.workspace_id},
        "permissions": sorted(p for p in PERMISSIONS if access.allowed(principal, p)),
    }})
