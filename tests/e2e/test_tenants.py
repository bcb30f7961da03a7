"""No tenant reaches another's data (issue 6, item 9), tried on EVERY route of the running
API: the routes are read from the gateway's own route tables, so a route added later is
tried too, or fails test_every_route_is_classified until it is listed as excluded.

Organization alpha has everything an id can name (two workspaces, one pooled and funded,
a project, keys, a member, a BYOK credential, a purchase with its invoice, generations
with stored content, alert and privacy settings). Then, on every route, with alpha's ids in
the path, the query (`organization`, `id`, and once with and once without `workspace_id`)
and a body built to change something:

- an owner of organization bravo, and an API key of bravo, first naming alpha, then acting
  on their own organization with alpha's ids;
- an admin of alpha limited to alpha's default workspace, and an API key of that
  workspace, on the objects of alpha's other workspace.

A refusal is 401, 403, 404, or a 400 from a check made before any lookup. Naming another
organization, or a path holding an object out of reach, must be refused; anything else may
succeed only on the caller's own data, so a success must not show one marker of the data
out of reach. Afterwards the data out of reach is exactly as it was, read back with the
operator's key. test_the_markers_show_to_whoever_may_see_them proves those markers do show
to callers who may see them, so their absence means something. Leaks known today are
listed in KNOWN_LEAKS, each with its bug, and must keep happening until fixed.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.e2e.inproc import InProcessGateway
from tests.e2e.procs import http

V1 = "/api/v1"
REFUSED = {400, 401, 403, 404}
PASSWORD = "correct horse battery"

# Routes not tried, each for its reason. Every other route of the API is.
EXCLUDED: dict[tuple[str, str], str] = {
    # Inference: an API key spends its own organization's credit; these take no id of
    # anything stored (the caps tests cover which project and workspace a request may name).
    ("POST", f"{V1}/chat/completions"): "inference",
    ("POST", f"{V1}/completions"): "inference",
    ("POST", f"{V1}/embeddings"): "inference",
    ("POST", f"{V1}/messages"): "inference",
    ("POST", f"{V1}/messages/count_tokens"): "inference (counts the body's tokens, reads nothing stored)",
    # Public: the same for every caller, no tenant's data.
    ("GET", f"{V1}/models"): "public catalog",
    ("GET", f"{V1}/models/{{author}}/{{slug}}/endpoints"): "public catalog",
    ("GET", "/health"): "public health check",
    ("GET", f"{V1}/credits/packages"): "the price list: packages and fees, the same for everyone",
    ("GET", f"{V1}/credits/quote"): "a price quote computed from the query alone",
    # Authenticated by a Stripe signature, not a bearer (tests/e2e/test_credits.py forges it).
    ("POST", f"{V1}/stripe/webhook"): "Stripe's signed webhook",
    # The caller itself: what it is, with no id to name anything else.
    ("GET", f"{V1}/key"): "the calling key itself",
    ("GET", f"{V1}/auth/key"): "the calling key itself",
    ("GET", f"{V1}/organization/me"): "the calling member or key itself",
    # Sessions: logging in proves a password (test_members.py tries other organizations'),
    # and logging out would end the very session this test calls with.
    ("POST", f"{V1}/auth/login"): "password login, tried across organizations in test_members.py",
    ("POST", f"{V1}/auth/logout"): "ends the caller's own session",
}

# A body meant to change something, per route (others get only `organization`); `{ws}` is
# the target workspace id. Valid enough that a call that were let through would succeed.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/keys"): {"name": "intruder", "workspace_id": "{ws}"},
    ("PATCH", "/keys/{hash}"): {"name": "intruder", "disabled": True, "limit": "0.01"},
    ("POST", "/workspaces"): {"name": "intruder"},
    ("PATCH", "/workspaces/{id}"): {"name": "intruder", "settings": {"deny_training": True}},
    ("PUT", "/workspaces/{id}/budgets/{period}"): {"amount": "0.01"},
    ("POST", "/projects"): {"name": "intruder", "workspace_id": "{ws}"},
    ("PATCH", "/projects/{id}"): {"name": "intruder"},
    ("PUT", "/projects/{id}/budgets/{period}"): {"amount": "0.01"},
    ("POST", "/transfers"): {"from": "{ws}", "to": "organization", "amount": "0.01", "reference": "intruder"},
    ("PATCH", "/organization/settings"): {"logging": False, "deny_training": True},
    ("POST", "/organization/members"): {"email": "intruder@example.com", "password": PASSWORD, "role": "viewer",
                                        "workspaces": ["{ws}"]},
    ("PATCH", "/organization/members/{member_id}"): {"role": "viewer", "disabled": True},
    ("POST", "/byok"): {"provider": "sim", "api_key": "sk-sim-intruder-0123456789", "workspace_id": "{ws}"},
    ("PATCH", "/byok/{id}"): {"name": "intruder", "disabled": True},
    ("PUT", "/credits/auto-topup"): {"enabled": False, "threshold": "1", "amount": "10"},
    ("PUT", "/credits/alerts"): {"thresholds": []},
    ("POST", "/credits/checkout"): {"amount": "10"},
    ("POST", "/organizations"): {"name": "intruder-org"},
    ("POST", "/organizations/{org}/credits"): {"amount": "1", "reference": "intruder"},
    ("POST", "/organizations/{org}/purchases"): {"amount": "10", "method": "bank", "reference": "intruder"},
}


@dataclass(frozen=True)
class Route:
    method: str
    template: str            # "/api/v1/workspaces/{id}/budgets/{period}"
    pattern: re.Pattern[str] | None = None   # None for an exact route

    @property
    def short(self) -> str:
        return self.template.removeprefix(V1)


def routes(gw: InProcessGateway) -> list[Route]:
    """Every route of the running API, from its route tables."""
    assert gw.app is not None
    out = [Route(method, path) for method, path in gw.app.exact]
    for method, pattern, _ in gw.app.patterns:
        template = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", pattern.pattern)
        out.append(Route(method, template.removeprefix("^").removesuffix("$").replace("\\.", "."), pattern))
    return out


@dataclass
class Target:
    """The objects a caller tries to reach, and the strings that would show it saw them."""
    org: str
    workspace: int
    project: int
    key_hash: str
    member: str
    byok: str
    invoice: int
    purchase: str
    generation: str
    markers: list[str] = field(default_factory=list)

    def value(self, name: str, template: str) -> str:
        """The value of the path parameter `name` of `template`."""
        if name == "id":
            for prefix, value in (("/byok/", self.byok), ("/workspaces/", self.workspace),
                                  ("/projects/", self.project)):
                if prefix in template:
                    return str(value)
        values = {"hash": self.key_hash, "org": self.org, "member_id": self.member, "purchase": self.purchase,
                  "number": str(self.invoice), "format": "html", "period": "daily"}
        assert name in values, f"no value for path parameter {name!r} of {template}: add it to Target.value"
        return values[name]


def path_of(route: Route, target: Target) -> str:
    path = re.sub(r"\{(\w+)\}", lambda m: target.value(m.group(1), route.template), route.template)
    assert route.pattern is None or route.pattern.match(path), (route, path)
    return path


def body_of(route: Route, target: Target, organization: str | None) -> dict[str, Any]:
    def fill(value: Any) -> Any:
        if value == "{ws}":
            return target.workspace
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    body = {k: fill(v) for k, v in BODIES.get((route.method, route.short), {}).items()}
    if organization is not None:
        body["organization"] = organization
    return body


@dataclass
class Attempt:
    who: str
    token: str
    organization: str | None     # the organization named in the query and the body, if any
    kind: str                    # "member" or "key"
    reach: str                   # "organization": the target is another organization's; "workspace": another
    #                              workspace's of the caller's own organization
    names_other: bool = False    # it names an organization it is not in: everything must be refused


# Path parameters that name an object of one workspace. Across organizations every path
# parameter names something out of reach; inside one, a member, a purchase or an invoice
# is the organization's, not a workspace's, so those routes may answer (without showing any
# of the other workspace's data).
WORKSPACE_PARAMS = ("{hash}", "{id}")


def must_refuse(route: Route, a: Attempt) -> bool:
    if a.names_other:
        return True
    if a.reach == "organization":
        return route.pattern is not None
    return any(param in route.template for param in WORKSPACE_PARAMS)


def attempt(gw: InProcessGateway, route: Route, target: Target, a: Attempt, filtered: bool) -> tuple[int, Any]:
    """One call. `filtered`: the query also names the target's workspace (`workspace_id`),
    else list routes answer with everything the caller may see."""
    # group_by=workspace: /activity rows then name their workspace, so a leak of one shows.
    query = [f"id={target.generation}", "group_by=workspace"]
    query += [f"workspace_id={target.workspace}"] if filtered else []
    if a.organization is not None:
        query.insert(0, f"organization={a.organization}")
    url = f"{gw.url}{path_of(route, target)}?{'&'.join(query)}"
    body = body_of(route, target, a.organization) if route.method in ("POST", "PUT", "PATCH") else None
    status, data, _ = http(route.method, url, body, a.token)
    return status, data


def leaks(data: Any, markers: list[str]) -> list[str]:
    text = data if isinstance(data, str) else repr(data)
    return [m for m in markers if m in text]


# Known bugs, each a (who, method, route) that gets through today: the tests require them
# to still get through, so that fixing one fails here until its line is removed.
KNOWN_LEAKS: dict[tuple[str, str, str, str], str] = {
}


def try_everything(gw: InProcessGateway, target: Target, attempts: list[Attempt]) -> list[str]:
    """Every checked route with every attempt; returns what went wrong, one line each, known
    bugs aside (and a line for each known bug that no longer happens)."""
    failures = []
    seen = set()
    for route in routes(gw):
        if (route.method, route.template) in EXCLUDED:
            continue
        for a, filtered in itertools.product(attempts, (True, False)):
            status, data = attempt(gw, route, target, a, filtered)
            query = "?workspace_id=..." if filtered else ""
            where = f"{a.who}: {route.method} {route.template}{query} -> {status}"
            if status in REFUSED:
                continue
            if must_refuse(route, a):
                problem = f"{where} (must be refused): {str(data)[:300]}"
            elif status >= 500:
                problem = f"{where} (a server error): {str(data)[:300]}"
            elif status >= 300:
                continue   # refused for a reason of the caller's own (402: no card payments here)
            elif found := leaks(data, target.markers):
                problem = f"{where} shows {found}: {str(data)[:300]}"
            else:
                continue
            known = (a.kind, a.reach, route.method, route.template)
            if known in KNOWN_LEAKS:
                seen.add(known)
            else:
                failures.append(problem)
    tried = {(a.kind, a.reach) for a in attempts}
    for known, bug in KNOWN_LEAKS.items():
        if known[:2] in tried and known not in seen:
            failures.append(f"fixed? {known} no longer gets through: remove it from KNOWN_LEAKS ({bug})")
    return failures


# -- the two organizations -------------------------------------------------------------------

@dataclass
class World:
    gw: InProcessGateway
    alpha: Target          # alpha's objects in its second workspace, and every marker of alpha's
    second: Target         # the same objects, with the markers of the second workspace only
    default_ws: int        # alpha's default workspace
    bravo_owner: str
    bravo_key: str
    limited_admin: str     # an admin of alpha limited to its default workspace
    default_key: str       # an API key of alpha's default workspace
    second_key: str        # an API key of alpha's second workspace (whose objects are the target)


def ok(gw: InProcessGateway, method: str, path: str, body: dict[str, Any] | None = None,
       status: int = 200) -> Any:
    if body is None:
        sep = "&" if "?" in path else "?"
        path = f"{path}{sep}organization=alpha"
    else:
        body = {"organization": "alpha", **body}
    got, data, _ = http(method, gw.api + path, body, gw.management_key)
    assert got == status, (method, path, got, data)
    return data["data"] if isinstance(data, dict) and "data" in data else data


@pytest.fixture
def world(fake_clock_gateway: InProcessGateway) -> Iterator[World]:
    gw = fake_clock_gateway
    gw.org("alpha", "5.00")
    gw.org("bravo", "5.00")
    default_ws = ok(gw, "GET", "/workspaces")[0]["id"]
    w2 = ok(gw, "POST", "/workspaces", {"name": "alpha-secret-workspace", "pooled": True,
                                        "budgets": {"monthly": "3"}}, 201)["id"]
    ok(gw, "POST", "/transfers", {"from": "organization", "to": w2, "amount": "1", "reference": "fund-w2"}, 201)
    project = ok(gw, "POST", "/projects", {"name": "alpha-secret-project", "workspace_id": w2,
                                           "budgets": {"daily": "1"}}, 201)["id"]
    key, key_hash = gw.key("alpha", name="alpha-secret-key", workspace_id=w2, limit="2", limit_reset="weekly")
    _, member = gw.member("alpha", "alpha-secret-member@alpha.example", "viewer", PASSWORD, workspaces=[w2])
    gw.member("alpha", "alpha-owner@alpha.example", "owner", PASSWORD)
    byok = ok(gw, "POST", "/byok", {"provider": "sim", "api_key": "sk-sim-alpha-secret-byok-0011",
                                    "name": "alpha-secret-byok", "workspace_id": w2}, 201)["id"]
    ok(gw, "PATCH", "/organization/settings", {"logging": True})
    ok(gw, "PUT", "/credits/alerts", {"thresholds": [{"name": "alpha-secret-alert", "below": "1",
                                                      "emails": ["alpha-owner@alpha.example"]}]})
    ok(gw, "POST", "/organizations/alpha/purchases", {"amount": "10", "method": "bank", "reference": "wire-1"}, 201)
    purchase = ok(gw, "GET", "/credits/purchases")[0]["id"]
    invoice = ok(gw, "GET", "/credits/invoices")[0]["id"]
    status, reply, _ = http("POST", gw.api + "/chat/completions",
                            {"model": "sim/small", "project": "alpha-secret-project", "max_tokens": 20,
                             "messages": [{"role": "user", "content": "alpha-secret-prompt"}]}, key)
    assert status == 200, reply
    generation = reply["id"]
    status, record, _ = http("GET", f"{gw.api}/generation?id={generation}", None, key)
    assert status == 200, record
    # What only someone who can see the second workspace may see...
    workspace_markers = ["alpha-secret-workspace", "alpha-secret-project", "alpha-secret-key", key_hash, byok,
                         "alpha-secret-byok", "alpha-secret-prompt", record["data"]["upstream_id"], "fund-w2"]
    # ...and what only alpha's people and keys may see.
    org_markers = [*workspace_markers, "alpha-secret-member", "alpha-owner@", "alpha-secret-alert", "wire-1"]
    alpha = Target("alpha", w2, project, key_hash, member, byok, invoice, purchase, generation, org_markers)
    gw.advance(86_400)   # the next day: /activity shows completed days only
    bravo_owner = gw.member("bravo", "bravo-owner@bravo.example", "owner", PASSWORD)[0]
    bravo_key = gw.key("bravo", name="bravo-key")[0]
    limited_admin = gw.member("alpha", "alpha-limited-admin@alpha.example", "admin", PASSWORD,
                              workspaces=[default_ws])[0]
    default_key = gw.key("alpha", name="alpha-default-key", workspace_id=default_ws)[0]
    yield World(gw, alpha, dataclasses.replace(alpha, markers=workspace_markers), default_ws, bravo_owner,
                bravo_key, limited_admin, default_key, key)


def snapshot_alpha(gw: InProcessGateway) -> dict[str, Any]:
    """Everything of alpha's, read with the operator's key."""
    paths = ["/workspaces", "/projects", "/keys?include_disabled=true", "/organization/members", "/byok",
             "/transfers", "/organization/settings", "/credits", "/credits/lots?all=1", "/credits/purchases",
             "/credits/invoices", "/credits/alerts", "/credits/auto-topup", "/credits/topups"]
    out = {path: ok(gw, "GET", path) for path in paths}
    out["organization"] = ok(gw, "GET", "/organizations/alpha")
    return out


def snapshot_workspace(gw: InProcessGateway, target: Target) -> dict[str, Any]:
    """Everything of one workspace of alpha's, and its member, read with the operator's key."""
    ws = target.workspace
    return {
        "workspace": ok(gw, "GET", f"/workspaces/{ws}"),
        "projects": ok(gw, "GET", f"/projects?workspace_id={ws}"),
        "keys": ok(gw, "GET", f"/keys?workspace_id={ws}&include_disabled=true"),
        "byok": ok(gw, "GET", f"/byok?workspace_id={ws}"),
        "member": ok(gw, "GET", f"/organization/members/{target.member}"),
        "transfers": [t for t in ok(gw, "GET", "/transfers") if ws in (t["from"], t["to"])],
    }


# -- the tests -------------------------------------------------------------------------------

def test_every_route_is_classified(fake_clock_gateway: InProcessGateway) -> None:
    """Every route is either tried here or excluded for a stated reason, and every excluded
    route still exists (a stale exclusion would hide a new route of the same name)."""
    found = {(r.method, r.template) for r in routes(fake_clock_gateway)}
    assert set(EXCLUDED) <= found, sorted(set(EXCLUDED) - found)
    tried = found - set(EXCLUDED)
    assert len(tried) >= 50, sorted(tried)   # the management API, not an empty table
    # Every path parameter of a tried route has a value to try (path_of asserts it matches).
    sample = Target("alpha", 1, 1, "ab", "m", "byok_" + "0" * 24, 1, "p", "g")
    for route in routes(fake_clock_gateway):
        if (route.method, route.template) not in EXCLUDED:
            path_of(route, sample)

def test_another_organization_reaches_nothing(world: World) -> None:
    gw, alpha = world.gw, world.alpha
    before = snapshot_alpha(gw)
    attempts = [
        Attempt("bravo's owner naming alpha", world.bravo_owner, "alpha", "member", "organization", names_other=True),
        Attempt("bravo's owner naming alpha by id", world.bravo_owner,
                str(ok(gw, "GET", "/organizations/alpha")["id"]), "member", "organization", names_other=True),
        Attempt("bravo's API key naming alpha", world.bravo_key, "alpha", "key", "organization", names_other=True),
        Attempt("bravo's owner with alpha's ids", world.bravo_owner, None, "member", "organization"),
        Attempt("bravo's API key with alpha's ids", world.bravo_key, None, "key", "organization"),
    ]
    failures = try_everything(gw, alpha, attempts)
    assert not failures, "\n".join(failures)
    assert snapshot_alpha(gw) == before


def test_a_workspace_reaches_nothing_of_another(world: World) -> None:
    gw, alpha = world.gw, world.second
    before = snapshot_workspace(gw, alpha)
    attempts = [
        Attempt("an admin limited to the default workspace", world.limited_admin, "alpha", "member", "workspace"),
        Attempt("a key of the default workspace", world.default_key, None, "key", "workspace"),
        Attempt("a key of the default workspace naming alpha", world.default_key, "alpha", "key", "workspace"),
    ]
    failures = try_everything(gw, alpha, attempts)
    assert not failures, "\n".join(failures)
    assert snapshot_workspace(gw, alpha) == before


def test_the_markers_show_to_whoever_may_see_them(world: World) -> None:
    """The leak checks above can fail: the operator and the second workspace's own key,
    reading the same routes, see every marker of alpha's somewhere."""
    gw, alpha = world.gw, world.alpha
    seen: set[str] = set()
    insiders = [Attempt("the operator", gw.management_key, "alpha", "member", "organization"),
                Attempt("the second workspace's key", world.second_key, None, "key", "workspace")]
    for route in routes(gw):
        if route.method != "GET" or (route.method, route.template) in EXCLUDED:
            continue
        for a, filtered in itertools.product(insiders, (True, False)):
            status, data = attempt(gw, route, alpha, a, filtered)
            if status == 200:
                seen.update(leaks(data, alpha.markers))
    assert seen == set(alpha.markers), sorted(set(alpha.markers) - seen)
