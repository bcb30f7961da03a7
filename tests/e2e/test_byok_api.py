"""BYOK credentials over HTTP against a real `farebox serve`: CRUD with the operator's
management key, the role checks, and the key itself never leaving the gateway (no
response, no log line, no database byte holds it)."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from typing import Any

from tests.e2e.procs import Gateway, http, member_token

SECRET = "sk-sim-BYOKplaintext-0011223344556677"
ROTATED = "sk-sim-BYOKrotated-8899aabbccddeeff0011"
WIRE_FIELDS = {"id", "provider", "name", "label", "workspace_id", "always_use", "disabled", "created_by",
               "created_at", "updated_at"}


class Client:
    """Calls the gateway and keeps every response body, to prove none holds a key."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.seen: list[str] = []

    def __call__(self, method: str, path: str, body: Any = None, key: str | None = None) -> tuple[int, Any]:
        status, data, headers = http(method, self.gw.api + path, body, key or self.gw.management_key)
        self.seen.append(json.dumps(data, default=str) + json.dumps(headers))
        return status, data

    def assert_never_leaked(self, *secrets: str) -> None:
        assert self.seen
        for secret in secrets:
            for body in self.seen:
                assert secret not in body, body
            assert secret not in self.gw.proc.output()  # type: ignore[union-attr]


def default_workspace(gw: Gateway, org: str) -> int:
    workspaces = gw.admin("GET", f"/organizations/{org}")["data"]["workspaces"]
    return next(w["id"] for w in workspaces if w["name"] == "default")


def test_crud_with_the_operator_key(gateway: Gateway, org_name: str) -> None:
    gw, call = gateway, Client(gateway)
    gw.org(org_name)
    other = gw.org(org_name + "-other")
    workspace = default_workspace(gw, org_name)

    status, data = call("POST", "/byok", {"organization": org_name, "provider": "sim", "api_key": SECRET,
                                          "name": "our key"})
    assert status == 201, data
    cred = data["data"]
    assert set(cred) == WIRE_FIELDS
    assert cred["id"].startswith("byok_") and len(cred["id"]) == 29
    assert (cred["provider"], cred["name"], cred["label"], cred["workspace_id"], cred["always_use"],
            cred["disabled"], cred["created_by"], cred["updated_at"]) == (
        "sim", "our key", "sk-sim...6677", workspace, False, False, "operator", None)
    assert cred["created_at"].endswith("Z")

    # Refusals: each names its field, none repeats the key.
    for body, field in (({"provider": "sim", "api_key": SECRET}, "organization"),
                        ({"organization": org_name, "provider": "nope", "api_key": SECRET}, "provider"),
                        ({"organization": org_name, "provider": "sim"}, "api_key"),
                        ({"organization": org_name, "provider": "sim", "api_key": SECRET + "\nX-Injected: 1"},
                         "api_key"),
                        ({"organization": org_name, "provider": "sim", "api_key": SECRET, "always_use": "yes"},
                         "always_use"),
                        ({"organization": org_name, "provider": "sim", "api_key": SECRET, "workspace_id": "w"},
                         "workspace_id")):
        status, data = call("POST", "/byok", body)
        assert status == 400 and data["error"]["metadata"]["field"] == field, (body, data)
    status, data = call("POST", "/byok", {"organization": org_name, "provider": "nope", "api_key": SECRET})
    assert "sim-anthropic" in data["error"]["message"]   # the known slugs are listed
    # A second enabled credential for the same workspace and provider conflicts.
    status, data = call("POST", "/byok", {"organization": org_name, "provider": "sim", "api_key": ROTATED})
    assert status == 409, data
    # Another organization's workspace is not this organization's.
    status, _ = call("POST", "/byok", {"organization": org_name, "provider": "sim-google", "api_key": SECRET,
                                       "workspace_id": default_workspace(gw, other)})
    assert status == 404

    # The default name is the provider's; always_use is kept.
    status, data = call("POST", "/byok", {"organization": org_name, "provider": "sim-anthropic",
                                          "api_key": "sk-ant-short", "always_use": True})
    assert status == 201 and data["data"]["name"] == "Farebox Simulator (Anthropic)"
    assert data["data"]["always_use"] is True and data["data"]["label"] == "...hort"
    second = data["data"]

    status, data = call("GET", f"/byok?organization={org_name}")
    assert status == 200 and [c["id"] for c in data["data"]] == [cred["id"], second["id"]]
    assert call("GET", f"/byok?organization={org_name}&workspace_id={workspace}")[1]["data"] == data["data"]
    assert call("GET", f"/byok?organization={other}")[1]["data"] == []
    assert call("GET", f"/byok?organization={org_name}&workspace_id={default_workspace(gw, other)}")[0] == 404
    assert call("GET", f"/byok/{cred['id']}?organization={org_name}")[1]["data"] == cred
    assert call("GET", f"/byok/{cred['id']}?organization={other}")[0] == 404   # not across organizations

    status, data = call("PATCH", f"/byok/{cred['id']}", {"organization": org_name, "name": "renamed",
                                                          "always_use": True, "api_key": ROTATED})
    assert status == 200, data
    changed = data["data"]
    assert (changed["name"], changed["always_use"], changed["label"]) == ("renamed", True, "sk-sim...0011")  # ROTATED's label
    assert changed["updated_at"] is not None
    for body, field in (({"provider": "sim-google"}, "provider"), ({"disabled": "no"}, "disabled"),
                        ({"name": ""}, "name"), ({"api_key": ""}, "api_key")):
        status, data = call("PATCH", f"/byok/{cred['id']}", {"organization": org_name, **body})
        assert status == 400 and data["error"]["metadata"]["field"] == field, (body, data)
    # Disabled, it frees the slot for another key of the same provider.
    assert call("PATCH", f"/byok/{cred['id']}", {"organization": org_name, "disabled": True})[1]["data"]["disabled"]
    status, data = call("POST", "/byok", {"organization": org_name, "provider": "sim", "api_key": SECRET})
    assert status == 201, data
    assert call("PATCH", f"/byok/{cred['id']}", {"organization": org_name, "disabled": False})[0] == 409

    assert call("DELETE", f"/byok/{cred['id']}?organization={org_name}") == (200, {"deleted": True})
    assert call("GET", f"/byok/{cred['id']}?organization={org_name}")[0] == 404
    assert call("DELETE", f"/byok/{cred['id']}?organization={org_name}")[0] == 404
    assert cred["id"] not in [c["id"] for c in call("GET", f"/byok?organization={org_name}")[1]["data"]]
    call.assert_never_leaked(SECRET, ROTATED)


def test_roles_gate_every_change(gateway: Gateway, org_name: str) -> None:
    gw, call = gateway, Client(gateway)
    gw.org(org_name)
    gw.org(org_name + "-rival")
    admin = member_token(gw, org_name, "admin")
    member = member_token(gw, org_name, "member")
    viewer = member_token(gw, org_name, "viewer")
    rival = member_token(gw, org_name + "-rival", "owner")
    api_key, _ = gw.key(org_name)

    status, data = call("POST", "/byok", {"provider": "sim", "api_key": SECRET}, admin)
    assert status == 201, data
    cred = data["data"]
    assert cred["created_by"] not in (None, "operator")   # the admin member's id
    path = f"/byok/{cred['id']}"

    for who in (member, viewer, api_key):
        assert call("POST", "/byok", {"provider": "sim-google", "api_key": SECRET}, who)[0] == 403
        assert call("PATCH", path, {"name": "x"}, who)[0] == 403
        assert call("DELETE", path, None, who)[0] == 403
        # Reading is every role's, and an API key's too.
        status, data = call("GET", "/byok", None, who)
        assert status == 200 and [c["id"] for c in data["data"]] == [cred["id"]]
        assert call("GET", path, None, who)[1]["data"] == cred
    # Another organization's owner sees nothing of it, and cannot name this organization.
    assert call("GET", path, None, rival)[0] == 404
    assert call("PATCH", path, {"name": "x"}, rival)[0] == 404
    assert call("DELETE", path, None, rival)[0] == 404
    assert call("GET", "/byok", None, rival)[1]["data"] == []
    assert call("GET", f"/byok?organization={org_name}", None, rival)[0] == 404
    # No credentials at all.
    assert http("GET", gw.api + "/byok")[0] == 401

    assert call("PATCH", path, {"name": "by admin"}, admin)[1]["data"]["name"] == "by admin"
    assert call("DELETE", path, None, admin)[0] == 200
    call.assert_never_leaked(SECRET)


def test_keys_are_sealed_at_rest_and_survive_a_restart(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway()
    call = Client(gw)
    gw.org("acme")
    status, data = call("POST", "/byok", {"organization": "acme", "provider": "sim", "api_key": SECRET})
    assert status == 201, data
    cred = data["data"]
    key_file = gw.home / "byok_key"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    db = gw.home / "farebox.db"
    stored = b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    assert cred["id"].encode() in stored and SECRET.encode() not in stored

    gw.stop()
    gw.start()   # same home: the same key file opens the stored credential
    assert call("GET", f"/byok/{cred['id']}?organization=acme")[1]["data"] == cred
    stored = b"".join(p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists())
    assert SECRET.encode() not in stored
    call.assert_never_leaked(SECRET)
