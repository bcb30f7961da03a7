"""Who is calling a management endpoint, and may they do what they ask.

Three kinds of caller (a `Principal`):
- "operator": the operator's management key, above every organization (names the one it
  acts on in each call);
- "member": a person logged in to one organization, with a role and maybe limited to
  some workspaces;
- "key": an organization's API key, limited to its own workspace and read-only here.

Every management endpoint does the same three steps:

    principal = access.resolve(gw, req)                    # 401 / 403 for the wrong kind
    org = access.organization(gw, principal, req, body)    # 404 for another tenant
    access.require(principal, "keys.write", workspace_id=w) # 403 for the role, 404 for the workspace

Rule of invisibility: what a caller may not see (another organization, a workspace outside
its limits) answers 404 exactly like something that does not exist, so no answer reveals
another tenant's data or even its existence.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from farebox.errors import BadRequest, Forbidden, NotFound, Unauthorized
from farebox.tenancy.members import ROLES, SESSION_PREFIX, Member
from farebox.tenancy.records import KeyRecord, Organization

if TYPE_CHECKING:
    from farebox.api.http import Request
    from farebox.app import Gateway

# Higher is more; the operator counts as an owner of every organization.
RANK = {role: len(ROLES) - i for i, role in enumerate(ROLES)}   # owner 4, admin 3, member 2, viewer 1


@dataclass(frozen=True, slots=True)
class Rule:
    minimum: str               # the lowest role that may do this at all
    # Roles below this one may act only on what they created themselves (their own
    # keys); None: no such limit.
    any_from: str | None = None


# The one table of permissions. Endpoints name a permission; never a role.
PERMISSIONS: dict[str, Rule] = {
    "read": Rule("viewer"),                          # read management data of the organization
    "keys.write": Rule("member", any_from="admin"),  # members: only keys they created, in their workspaces
    "workspaces.write": Rule("admin"),
    "budgets.write": Rule("admin"),
    "projects.write": Rule("admin"),
    "transfers": Rule("admin"),
    "byok.write": Rule("admin"),
    "privacy.write": Rule("admin"),
    "credits.write": Rule("admin"),                   # buy, refund, auto top-up and alert settings
    "members.write": Rule("admin"),                   # an owner only, when an owner is involved (require_owner_for)
}
# What an organization's API key may do on management endpoints: read, nothing else.
KEY_PERMISSIONS = frozenset({"read"})


@dataclass(frozen=True, slots=True)
class Principal:
    kind: str                              # "operator" | "member" | "key"
    org_id: int | None                     # None for the operator
    role: str                              # the operator counts as "owner"; a key as "viewer"
    workspaces: frozenset[int] | None      # None: every workspace
    member: Member | None = None
    key: KeyRecord | None = None
    actor: str = "operator"                # who did something, as stored: "operator", a member id, "key:<hash>"

    @property
    def is_operator(self) -> bool:
        return self.kind == "operator"


OPERATOR = Principal("operator", None, "owner", None)


def _bearer(header: str | None) -> str:
    if not header:
        raise Unauthorized("Missing Authentication header")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("No auth credentials found")
    return token


def resolve(gw: Gateway, req: Request, *, allow_keys: bool = False) -> Principal:
    """The caller behind `Authorization: Bearer <token>`: a member session (`fbs-...`),
    the operator's management key, or (only when `allow_keys`) an organization's API key."""
    header = req.header(b"authorization")
    token = _bearer(header)
    if token.startswith(SESSION_PREFIX):
        member = gw.members.authenticate(token)
        if member is None:
            raise Unauthorized("Session not found or expired; log in again")
        return member_principal(member)
    record = gw.directory.authenticate(header, allow="any")
    if record.is_management:
        return OPERATOR
    if not allow_keys:
        raise Forbidden("Only management keys or members can perform this operation")
    return key_principal(record)


def member_principal(member: Member) -> Principal:
    return Principal("member", member.org_id, member.role, member.workspaces, member=member, actor=member.id)


def key_principal(record: KeyRecord) -> Principal:
    workspaces = frozenset() if record.workspace_id is None else frozenset({record.workspace_id})
    return Principal("key", record.org_id, "viewer", workspaces, key=record, actor=f"key:{record.hash}")


def organization(gw: Gateway, principal: Principal, req: Request, body: dict[str, Any] | None = None) -> Organization:
    """The organization a call acts on. The operator names it (`organization` in the body
    or the query, a name or an id); a member or key acts on its own, and naming another
    answers 404 exactly as for an organization that does not exist."""
    named = (body or {}).get("organization")
    if named is None:
        named = req.query("organization")
    if named is not None and (isinstance(named, bool) or not isinstance(named, str | int) or named == ""):
        raise BadRequest("organization must be an organization name or id", field="organization")
    if principal.is_operator:
        if named is None:
            raise BadRequest("Name the organization: \"organization\" in the body or ?organization=NAME",
                             field="organization")
        return gw.directory.org(named)
    own = gw.directory.orgs.get(principal.org_id)  # type: ignore[arg-type]
    if own is None:   # cannot happen while organizations are never deleted
        raise NotFound("No such organization")
    if named is not None:
        try:
            found = gw.directory.org(named)
        except NotFound:
            found = None
        if found is None or found.id != own.id:
            raise NotFound(f"No organization named {named!r}")   # Directory.org's words for a missing one
    return own


def can_see_workspace(principal: Principal, workspace_id: int) -> bool:
    return principal.workspaces is None or workspace_id in principal.workspaces


def visible_workspaces(principal: Principal, org: Organization) -> set[int]:
    """The ids of `org`'s workspaces the caller may see (for list endpoints)."""
    return {w for w in org.workspaces if can_see_workspace(principal, w)}


def allowed(principal: Principal, permission: str) -> bool:
    """May the caller do `permission` at all (somewhere)? For showing what a caller can do."""
    rule = PERMISSIONS[permission]
    if principal.is_operator:
        return True
    if principal.kind == "key":
        return permission in KEY_PERMISSIONS
    return RANK[principal.role] >= RANK[rule.minimum]


def require(principal: Principal, permission: str, *, workspace_id: int | None = None,
            creator: str | None = None, existing: bool = False) -> None:
    """Raise unless the caller may do `permission` (a key of PERMISSIONS).

    - `workspace_id`: the workspace acted on or read. Outside the caller's workspaces it
      answers 404 (the workspace is invisible to them), before any role check.
    - `existing=True, creator=...`: the call acts on an existing thing created by `creator`
      (a member id, or None for the operator). Where the rule limits lower roles to their
      own things (keys.write for a member), anyone else's answers 403.
    """
    rule = PERMISSIONS[permission]   # KeyError: a typo in an endpoint, found by its first test
    if workspace_id is not None and not can_see_workspace(principal, workspace_id):
        raise NotFound(f"No workspace {workspace_id} in this organization")
    if principal.is_operator:
        return
    metadata = {"required": permission, "role": principal.role}
    if principal.kind == "key":
        if permission not in KEY_PERMISSIONS:
            raise Forbidden(f"An API key may only read management data; {permission} needs a member with role "
                            f"{rule.minimum} or above", metadata=metadata)
        return
    if RANK[principal.role] < RANK[rule.minimum]:
        raise Forbidden(f"Role {principal.role} may not perform {permission}; it needs role {rule.minimum} or above",
                        metadata=metadata)
    if (existing and rule.any_from is not None and RANK[principal.role] < RANK[rule.any_from]
            and creator != principal.actor):
        raise Forbidden(f"Role {principal.role} may perform {permission} only on what it created; others need role "
                        f"{rule.any_from} or above", metadata=metadata)


def require_owner_for(principal: Principal, *roles: str | None) -> None:
    """Only an owner (or the operator) may create, change or delete an owner, or make
    someone owner: raise Forbidden when "owner" is among `roles` (the target's role before
    and after) and the caller is not one."""
    if "owner" in roles and not principal.is_operator and principal.role != "owner":
        raise Forbidden(f"Role {principal.role} may not create, change or delete an owner; only an owner may",
                        metadata={"required": "members.write", "role": principal.role})
