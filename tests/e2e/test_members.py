"""Members, roles and sessions over HTTP against a real gateway (issue 6, items 4 and 9):
logging in and out, every role against every class of permission, workspace limits,
tenants that cannot see each other, and passwords that never leave the server."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.procs import Gateway, http

PASSWORD = "correct horse battery"
Call = tuple[int, Any]


def add_workspace(db: Path, org: str, name: str) -> int:
    """A second workspace, written while the gateway is stopped (the workspace endpoints are
    another part of issue 6; the gateway reads this row at start like any other)."""
    with sqlite3.connect(db) as conn:
        (org_id,) = conn.execute("SELECT id FROM organizations WHERE name = ?", (org,)).fetchone()
        wid = conn.execute("INSERT INTO workspaces (org_id, name, created_at) VALUES (?, ?, 0)",
                           (org_id, name)).lastrowid
    conn.close()
    assert wid is not None
    return wid


def call(gw: Gateway, method: str, path: str, token: str | None, body: Any = None) -> Call:
    status, data, _ = http(method, gw.api + path, body, token)
    return status, data


@dataclass
class Team:
    """Organization acme (workspaces default and research) with one member of each role (the
    member limited to research) and an API key in research; organization rival beside it."""
    gw: Gateway
    default_ws: int
    research_ws: int
    tokens: dict[str, str] = field(default_factory=dict)     # role -> bearer (session token or API key)
    ids: dict[str, str] = field(default_factory=dict)        # role -> member id
    rival_owner: str = ""
    rival_owner_id: str = ""
    rival_key_hash: str = ""
    serial: Iterator[int] = field(default_factory=lambda: iter(range(10**6)))

    def email(self, what: str) -> str:
        return f"{what}-{next(self.serial)}@acme.example"

    def operator_key(self, workspace_id: int, **fields: Any) -> str:
        data = self.gw.admin("POST", "/keys", {"organization": "acme", "name": "ops", "workspace_id": workspace_id,
                                               **fields})
        return data["data"]["hash"]

    def operator_member(self, role: str, **fields: Any) -> str:
        data = self.gw.admin("POST", "/organization/members", {"organization": "acme", "email": self.email(role),
                                                               "password": PASSWORD, "role": role, **fields})
        return data["data"]["id"]


@pytest.fixture(scope="module")
def team(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Team]:
    gw = Gateway(tmp_path_factory.mktemp("members"), sim_url).start()
    gw.org("acme", "10.00")
    gw.org("rival", "10.00")
    gw.stop()
    research = add_workspace(gw.home / "farebox.db", "acme", "research")
    gw.start()
    default = gw.admin("GET", "/organizations/acme")["data"]["workspaces"][0]["id"]
    t = Team(gw, default, research)
    for role in ("owner", "admin", "member", "viewer"):
        limits = {"workspaces": [research]} if role == "member" else {}
        t.tokens[role], t.ids[role] = gw.member("acme", f"{role}@acme.example", role, PASSWORD, **limits)
    t.tokens["key"] = gw.key("acme", workspace_id=research)[0]
    t.rival_owner, t.rival_owner_id = gw.member("rival", "boss@rival.example", "owner", PASSWORD)
    t.rival_key_hash = gw.key("rival")[1]
    yield t
    report = gw.verify()
    gw.stop()
    assert report["ok"], report


# -- logging in and out ------------------------------------------------------------------------

def test_login_me_and_logout(team: Team):
    gw = team.gw
    status, body = call(gw, "POST", "/auth/login", None,
                        {"organization": "acme", "email": "ADMIN@acme.example", "password": PASSWORD})
    assert status == 200, body
    token = body["data"]["token"]
    assert re.fullmatch(r"fbs-[0-9a-f]{48}", token) and body["data"]["expires_at"].endswith("Z")
    assert body["data"]["member"] == {**body["data"]["member"], "id": team.ids["admin"], "email": "admin@acme.example",
                                      "role": "admin", "workspaces": None, "disabled": False}
    status, me = call(gw, "GET", "/organization/me", token)
    assert status == 200 and me["data"]["kind"] == "member" and me["data"]["actor"] == team.ids["admin"]
    assert me["data"]["organization"]["name"] == "acme" and "members.write" in me["data"]["permissions"]

    assert call(gw, "POST", "/auth/logout", token) == (200, {"data": {"logged_out": True}})
    status, body = call(gw, "GET", "/organization/me", token)
    assert status == 401, body
    assert call(gw, "POST", "/auth/logout", token)[0] == 401
    assert call(gw, "GET", "/organization/me", team.tokens["admin"])[0] == 200   # other sessions live on


def test_a_failed_login_does_not_say_what_was_wrong(team: Team):
    answers = set()
    for org, email, password in (("acme", "admin@acme.example", "not the password"),
                                 ("acme", "nobody@acme.example", PASSWORD),
                                 ("no-such-org", "admin@acme.example", PASSWORD),
                                 ("rival", "admin@acme.example", PASSWORD)):      # right person, wrong tenant
        status, body = call(team.gw, "POST", "/auth/login", None,
                            {"organization": org, "email": email, "password": password})
        assert status == 401, body
        answers.add(json.dumps(body))
    assert len(answers) == 1


@pytest.mark.parametrize(("body", "field"), [
    ({"email": "a@acme.example", "password": PASSWORD}, "organization"),
    ({"organization": "acme", "password": PASSWORD}, "email"),
    ({"organization": "acme", "email": "a@acme.example"}, "password"),
    ({"organization": "acme", "email": "a@acme.example", "password": 12345678}, "password"),
    ({"organization": ["acme"], "email": "a@acme.example", "password": PASSWORD}, "organization"),
])
def test_a_malformed_login_names_the_field(team: Team, body: dict[str, Any], field: str):
    status, answer = call(team.gw, "POST", "/auth/login", None, body)
    assert status == 400 and answer["error"]["metadata"]["field"] == field, answer


def test_a_deleted_or_disabled_members_session_stops_working(team: Team):
    gw = team.gw
    for ending in ("DELETE", "PATCH"):
        email = team.email("leaving")
        token, member_id = gw.member("acme", email, "admin", PASSWORD)
        assert call(gw, "GET", "/keys", token)[0] == 200
        body = {"disabled": True} if ending == "PATCH" else None
        status, answer = call(gw, ending, f"/organization/members/{member_id}", team.tokens["owner"], body)
        assert status == 200, answer
        for method, path in (("GET", "/organization/me"), ("GET", "/keys"), ("GET", "/credits")):
            assert call(gw, method, path, token)[0] == 401, (ending, path)
        status, _ = call(gw, "POST", "/auth/login", None, {"organization": "acme", "email": email,
                                                            "password": PASSWORD})
        assert status == 401
    # A deleted member is gone from the list; a disabled one stays, marked.
    listed = {m["email"]: m for m in call(gw, "GET", "/organization/members", team.tokens["viewer"])[1]["data"]}
    assert sum(m["disabled"] for m in listed.values()) >= 1
    assert all(not e.startswith("leaving-") or m["disabled"] for e, m in listed.items())


def test_the_operator_names_the_organization(team: Team):
    gw = team.gw
    status, body = call(gw, "GET", "/organization/members", gw.management_key)
    assert status == 400 and body["error"]["metadata"]["field"] == "organization"
    listed = gw.admin("GET", "/organization/members?organization=acme")["data"]
    assert {m["id"] for m in listed} >= set(team.ids.values())
    assert call(gw, "GET", "/organization/members?organization=nope", gw.management_key)[0] == 404
    me = gw.admin("GET", "/organization/me")["data"]
    assert (me["kind"], me["role"], me["organization"], me["actor"]) == ("operator", "owner", None, "operator")


@pytest.mark.parametrize(("role", "permissions"), [
    ("owner", {"read", "keys.write", "members.write", "credits.write", "workspaces.write"}),
    ("admin", {"read", "keys.write", "members.write", "credits.write", "workspaces.write"}),
    ("member", {"read", "keys.write"}),
    ("viewer", {"read"}),
    ("key", {"read"}),
])
def test_me_says_who_the_caller_is_and_what_they_may_do(team: Team, role: str, permissions: set[str]):
    me = call(team.gw, "GET", "/organization/me", team.tokens[role])[1]["data"]
    assert me["kind"] == ("key" if role == "key" else "member")
    assert me["organization"]["name"] == "acme"
    assert permissions <= set(me["permissions"])
    if role in ("member", "viewer", "key"):
        assert set(me["permissions"]) == permissions
    if role in ("member", "key"):
        assert me["workspaces"] == [team.research_ws]
    if role == "key":
        assert me["member"] is None and me["key"]["workspace_id"] == team.research_ws
        assert me["actor"] == f"key:{me['key']['hash']}"
    else:
        assert me["member"]["id"] == team.ids[role] == me["actor"] and me["role"] == role


# -- every role against every class of permission ------------------------------------------------

ROLES = ("owner", "admin", "member", "viewer", "key")


def _create_key(workspace: str) -> Callable[[Team, str], Call]:
    def act(t: Team, token: str) -> Call:
        wid = t.default_ws if workspace == "default" else t.research_ws
        return call(t.gw, "POST", "/keys", token, {"name": "mine", "workspace_id": wid})
    return act


def _change_operator_key(workspace: str, method: str) -> Callable[[Team, str], Call]:
    def act(t: Team, token: str) -> Call:
        khash = t.operator_key(t.default_ws if workspace == "default" else t.research_ws)
        return call(t.gw, method, f"/keys/{khash}", token, {"name": "renamed"} if method == "PATCH" else None)
    return act


def _add_member(role: str) -> Callable[[Team, str], Call]:
    def act(t: Team, token: str) -> Call:
        return call(t.gw, "POST", "/organization/members", token,
                    {"email": t.email("new"), "password": PASSWORD, "role": role})
    return act


def _change_member(target_role: str, change: dict[str, Any]) -> Callable[[Team, str], Call]:
    def act(t: Team, token: str) -> Call:
        return call(t.gw, "PATCH", f"/organization/members/{t.operator_member(target_role)}", token, change)
    return act


def _delete_member(target_role: str) -> Callable[[Team, str], Call]:
    def act(t: Team, token: str) -> Call:
        return call(t.gw, "DELETE", f"/organization/members/{t.operator_member(target_role)}", token)
    return act


def _get(path: str) -> Callable[[Team, str], Call]:
    return lambda t, token: call(t.gw, "GET", path, token)


# (what, how, expected status for owner, admin, member (limited to research), viewer, API key)
MATRIX: list[tuple[str, Callable[[Team, str], Call], tuple[int, ...]]] = [
    ("read keys", _get("/keys"), (200, 200, 200, 200, 403)),
    ("create a key in default", _create_key("default"), (201, 201, 404, 403, 403)),
    ("create a key in research", _create_key("research"), (201, 201, 201, 403, 403)),
    ("change another's key in research", _change_operator_key("research", "PATCH"), (200, 200, 403, 403, 403)),
    ("delete another's key in research", _change_operator_key("research", "DELETE"), (200, 200, 403, 403, 403)),
    ("change a key in default", _change_operator_key("default", "PATCH"), (200, 200, 404, 403, 403)),
    ("read members", _get("/organization/members"), (200, 200, 200, 200, 403)),
    ("add a viewer", _add_member("viewer"), (201, 201, 403, 403, 403)),
    ("add an admin", _add_member("admin"), (201, 201, 403, 403, 403)),
    ("add an owner", _add_member("owner"), (201, 403, 403, 403, 403)),
    ("promote a viewer to owner", _change_member("viewer", {"role": "owner"}), (200, 403, 403, 403, 403)),
    ("demote an owner", _change_member("owner", {"role": "viewer"}), (200, 403, 403, 403, 403)),
    ("rename an owner", _change_member("owner", {"name": "Boss"}), (200, 403, 403, 403, 403)),
    ("delete an owner", _delete_member("owner"), (200, 403, 403, 403, 403)),
    ("disable an admin", _change_member("admin", {"disabled": True}), (200, 200, 403, 403, 403)),
    ("delete a viewer", _delete_member("viewer"), (200, 200, 403, 403, 403)),
    ("read credits", _get("/credits"), (200, 200, 200, 200, 200)),
    ("read alerts", _get("/credits/alerts"), (200, 200, 200, 200, 200)),
    ("change auto top-up", lambda t, token: call(t.gw, "PUT", "/credits/auto-topup", token, {"enabled": False}),
     (200, 200, 403, 403, 403)),
    ("change alerts", lambda t, token: call(t.gw, "PUT", "/credits/alerts", token,
                                            {"thresholds": [{"name": "low", "below": "1",
                                                             "emails": ["viewer@acme.example"]}]}),
     (200, 200, 403, 403, 403)),
    ("who am I", _get("/organization/me"), (200, 200, 200, 200, 200)),
]
CASES = [(what, role, act, expected[i]) for what, act, expected in MATRIX for i, role in enumerate(ROLES)]


@pytest.mark.parametrize(("what", "role", "act", "expected"), CASES,
                         ids=[f"{what}-{role}" for what, role, _, _ in CASES])
def test_each_role_against_each_permission(team: Team, what: str, role: str, act: Callable[[Team, str], Call],
                                           expected: int):
    status, body = act(team, team.tokens[role])
    assert status == expected, (what, role, body)
    if status == 403 and role != "key":
        meta = body["error"]["metadata"]
        assert meta["role"] == role and meta["required"] in ("keys.write", "members.write", "credits.write")
        assert role in body["error"]["message"]
    if status == 201 and what.startswith("create a key"):
        # A member's key records who made it, whatever the body says.
        assert body["data"]["creator_user_id"] == team.ids[role]


def test_a_member_changes_only_the_keys_they_created_and_sees_only_their_workspaces(team: Team):
    gw, member = team.gw, team.tokens["member"]
    status, created = call(gw, "POST", "/keys", member, {"name": "own", "workspace_id": team.research_ws,
                                                         "creator_user_id": team.ids["owner"]})
    assert status == 201 and created["data"]["creator_user_id"] == team.ids["member"]
    own = created["data"]["hash"]
    assert call(gw, "PATCH", f"/keys/{own}", member, {"limit": "2"})[1]["data"]["limit"] == 2
    admins = call(gw, "POST", "/keys", team.tokens["admin"], {"name": "adm", "workspace_id": team.research_ws})
    assert call(gw, "PATCH", f"/keys/{admins[1]['data']['hash']}", member, {"disabled": True})[0] == 403
    assert call(gw, "GET", f"/keys/{admins[1]['data']['hash']}", member)[0] == 200    # reading is fine
    # Without a workspace_id the key would go to the default workspace, which is invisible to them.
    assert call(gw, "POST", "/keys", member, {"name": "nowhere"})[0] == 404

    default_key = team.operator_key(team.default_ws)
    listed = {k["hash"]: k for k in call(gw, "GET", "/keys", member)[1]["data"]}
    assert own in listed and default_key not in listed
    assert {k["workspace_id"] for k in listed.values()} == {team.research_ws}
    assert call(gw, "GET", f"/keys?workspace_id={team.default_ws}", member)[0] == 404
    assert call(gw, "GET", f"/keys/{default_key}", member)[0] == 404
    # The operator and the owner see both workspaces.
    everything = {k["hash"] for k in call(gw, "GET", "/keys", team.tokens["owner"])[1]["data"]}
    assert {own, default_key} <= everything
    assert call(gw, "DELETE", f"/keys/{own}", member) == (200, {"deleted": True})


def test_a_limited_admin_cannot_hand_out_more_than_they_have(team: Team):
    gw = team.gw
    token, _ = gw.member("acme", team.email("ltd-admin"), "admin", PASSWORD, workspaces=[team.research_ws])
    everywhere = {"email": team.email("x"), "password": PASSWORD, "role": "viewer"}
    status, body = call(gw, "POST", "/organization/members", token, everywhere)
    assert status == 400 and body["error"]["metadata"]["field"] == "workspaces"
    status, body = call(gw, "POST", "/organization/members", token, {**everywhere, "workspaces": [team.default_ws]})
    assert status == 400 and body["error"]["metadata"]["field"] == "workspaces"
    assert call(gw, "POST", "/organization/members", token, {**everywhere, "workspaces": [team.research_ws]})[0] == 201
    # An unlimited viewer is out of their reach; their own limits cannot be lifted by themselves.
    assert call(gw, "PATCH", f"/organization/members/{team.ids['viewer']}", token, {"name": "x"})[0] == 403
    me = call(gw, "GET", "/organization/me", token)[1]["data"]
    assert call(gw, "PATCH", f"/organization/members/{me['member']['id']}", token, {"workspaces": None})[0] == 400


def test_anyone_may_change_their_own_name_and_password_but_not_their_role(team: Team):
    gw = team.gw
    email = team.email("self")
    token, member_id = gw.member("acme", email, "viewer", PASSWORD)
    path = f"/organization/members/{member_id}"
    status, body = call(gw, "PATCH", path, token, {"name": "Me", "password": "another long secret"})
    assert status == 200 and body["data"]["name"] == "Me"
    assert call(gw, "GET", "/organization/me", token)[0] == 401          # a new password ends every session
    token = gw.login("acme", email, "another long secret")
    status, body = call(gw, "PATCH", path, token, {"role": "admin"})
    meta = body["error"]["metadata"]
    assert status == 403 and (meta["required"], meta["role"]) == ("members.write", "viewer")


def test_the_last_owner_stays(team: Team):
    gw = team.gw
    gw.org("solo")
    token, owner_id = gw.member("solo", "only@solo.example", "owner", PASSWORD)
    path = f"/organization/members/{owner_id}"
    for method, body in (("PATCH", {"role": "admin"}), ("PATCH", {"disabled": True}), ("DELETE", None)):
        status, answer = call(gw, method, path, token, body)
        assert status == 409 and "last active owner" in answer["error"]["message"], answer
        status, answer = http(method, f"{gw.api}{path}?organization=solo", body, gw.management_key)[:2]
        assert status == 409, answer
    assert call(gw, "GET", "/organization/me", token)[1]["data"]["role"] == "owner"


@pytest.mark.parametrize(("body", "field"), [
    ({"email": "not-an-email", "password": PASSWORD, "role": "viewer"}, "email"),
    ({"email": 7, "password": PASSWORD, "role": "viewer"}, "email"),
    ({"email": "a@acme.example", "password": "short", "role": "viewer"}, "password"),
    ({"email": "a@acme.example", "password": "x" * 1025, "role": "viewer"}, "password"),
    ({"email": "a@acme.example", "password": PASSWORD, "role": "superuser"}, "role"),
    ({"email": "a@acme.example", "password": PASSWORD, "role": "viewer", "name": ["x"]}, "name"),
    ({"email": "a@acme.example", "password": PASSWORD, "role": "viewer", "workspaces": []}, "workspaces"),
    ({"email": "a@acme.example", "password": PASSWORD, "role": "viewer", "workspaces": [999999]}, "workspaces"),
    ({"email": "a@acme.example", "password": PASSWORD, "role": "viewer", "workspaces": [True]}, "workspaces"),
    ({"email": "a@acme.example", "password": PASSWORD, "role": "viewer", "workspaces": "all"}, "workspaces"),
])
def test_bad_member_fields_are_named(team: Team, body: dict[str, Any], field: str):
    status, answer = call(team.gw, "POST", "/organization/members", team.tokens["owner"], body)
    assert status == 400 and answer["error"]["metadata"]["field"] == field, answer
    status, answer = call(team.gw, "PATCH", f"/organization/members/{team.ids['viewer']}", team.tokens["owner"],
                          {k: v for k, v in body.items() if k == field})
    # (email is fixed once created: PATCH names it as an unknown field)
    assert status == 400 and answer["error"]["metadata"]["field"] == field, answer


def test_an_email_is_taken_once_per_organization(team: Team):
    status, body = call(team.gw, "POST", "/organization/members", team.tokens["owner"],
                        {"email": "Viewer@ACME.example", "password": PASSWORD, "role": "viewer"})
    assert status == 409, body
    # The same address may belong to a member of another organization.
    assert call(team.gw, "POST", "/organization/members", team.rival_owner,
                {"email": "viewer@acme.example", "password": PASSWORD, "role": "viewer"})[0] == 201


# -- tenants cannot see each other ------------------------------------------------------------------

def _rival_state(team: Team) -> tuple[Any, ...]:
    gw = team.gw
    return (gw.admin("GET", "/keys?organization=rival&include_disabled=true")["data"],
            gw.admin("GET", "/organization/members?organization=rival")["data"],
            gw.admin("GET", "/credits/alerts?organization=rival")["data"],
            gw.admin("GET", "/credits/auto-topup?organization=rival")["data"])


def test_a_member_of_one_organization_never_reaches_another(team: Team):
    gw = team.gw
    before = _rival_state(team)
    rival_hash, rival_member = team.rival_key_hash, team.rival_owner_id
    attempts = [
        ("GET", "/keys?organization={org}", None),
        ("POST", "/keys", {"organization": "{org}", "name": "intruder"}),
        ("GET", f"/keys/{rival_hash}?organization={{org}}", None),
        ("PATCH", f"/keys/{rival_hash}", {"organization": "{org}", "disabled": True}),
        ("DELETE", f"/keys/{rival_hash}?organization={{org}}", None),
        ("GET", "/organization/members?organization={org}", None),
        ("POST", "/organization/members", {"organization": "{org}", "email": "mole@acme.example",
                                           "password": PASSWORD, "role": "owner"}),
        ("GET", f"/organization/members/{rival_member}?organization={{org}}", None),
        ("PATCH", f"/organization/members/{rival_member}", {"organization": "{org}", "role": "viewer"}),
        ("DELETE", f"/organization/members/{rival_member}?organization={{org}}", None),
        ("GET", "/credits?organization={org}", None),
        ("GET", "/credits/statement.csv?organization={org}", None),
        ("PUT", "/credits/alerts", {"organization": "{org}", "thresholds": []}),
        ("PUT", "/credits/auto-topup", {"organization": "{org}", "enabled": False}),
    ]
    for method, path, body in attempts:
        answers = {}
        for org in ("rival", str(gw.admin("GET", "/organizations/rival")["data"]["id"]), "no-such-org"):
            filled = json.loads(json.dumps(body).replace("{org}", org)) if body else None
            status, answer = call(gw, method, path.replace("{org}", org), team.tokens["owner"], filled)
            assert status == 404, (method, path, org, answer)
            answers[org] = answer["error"]["message"].replace(repr(org), "ORG")
        # Another tenant's organization is answered exactly like one that does not exist.
        assert len(set(answers.values())) == 1, answers
    # Naming nothing, the rival's key and member are simply not found from acme.
    for method, path in (("GET", f"/keys/{rival_hash}"), ("DELETE", f"/keys/{rival_hash}"),
                         ("GET", f"/organization/members/{rival_member}"),
                         ("DELETE", f"/organization/members/{rival_member}")):
        assert call(gw, method, path, team.tokens["owner"])[0] == 404, path
    assert _rival_state(team) == before


# -- passwords never leave the server ------------------------------------------------------------------

def test_passwords_and_their_hashes_never_appear_in_answers_or_logs(make_gateway: Callable[..., Gateway]):
    gw = make_gateway(log_level="debug", access_log=True)
    gw.org("acme")
    secrets = ["Pw-first-4f9c2e1a", "Pw-wrong-8d7e6b5c", "Pw-second-1a2b3c4d", "Pw-rejected-9f8e7d6c"]
    first, wrong, second, rejected = secrets
    answers: list[Any] = []

    def record(status_answer: Call) -> Call:
        answers.append(status_answer[1])
        return status_answer

    created = record(call(gw, "POST", "/organization/members", gw.management_key,
                          {"organization": "acme", "email": "ada@acme.example", "password": first, "role": "owner"}))
    member_id = created[1]["data"]["id"]
    assert record(call(gw, "POST", "/auth/login", None,
                       {"organization": "acme", "email": "ada@acme.example", "password": wrong}))[0] == 401
    status, login = record(call(gw, "POST", "/auth/login", None,
                                {"organization": "acme", "email": "ada@acme.example", "password": first}))
    assert status == 200, login
    token = login["data"]["token"]
    assert record(call(gw, "PATCH", f"/organization/members/{member_id}", token, {"password": second}))[0] == 200
    token = gw.login("acme", "ada@acme.example", second)
    assert record(call(gw, "POST", "/organization/members", token,
                       {"email": "not an email", "password": rejected, "role": "viewer"}))[0] == 400
    for path in ("/organization/members", f"/organization/members/{member_id}", "/organization/me"):
        assert record(call(gw, "GET", path, token))[0] == 200

    with sqlite3.connect(f"file:{gw.home / 'farebox.db'}?mode=ro", uri=True) as conn:
        [(stored,)] = conn.execute("SELECT password_hash FROM members WHERE id = ?", (member_id,)).fetchall()
    conn.close()
    assert stored.startswith("scrypt$1024$")   # the hash exists, so looking for it below means something
    text = json.dumps(answers, default=str)
    for secret in (*secrets, stored, stored.split("$")[-1], "scrypt$", "password_hash"):
        assert secret not in text, secret
    output = gw.proc.output() if gw.proc else ""
    assert "/api/v1/auth/login" in output          # requests were logged ...
    for secret in (*secrets, stored.split("$")[-1]):
        assert secret not in output, secret        # ... without what their bodies held
