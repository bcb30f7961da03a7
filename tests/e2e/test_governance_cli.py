"""`farebox workspaces|projects|transfers|privacy|members|byok|activity` and `keys
create/update` against a real gateway: each command runs as its own `python -m farebox`
process and reaches the server over HTTP with the management key, as an operator's shell
would. What a command reports is checked against what the server then holds (read with
the HTTP API), amounts exactly (Decimal); refusals must carry the server's message and exit
1. Secrets (a member's password, a provider key) go in through stdin or a terminal prompt:
they must never be accepted as arguments nor appear in any output or the server's log."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import sqlite3
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from farebox.tenancy.vault import Vault, credential_aad
from tests.e2e.conftest import client
from tests.e2e.procs import Gateway, http, member_token

PASSWORD = "tr0ub4dor &3 horse staple"            # a space inside: read whole, not split
PROVIDER_KEY = "sk-sim-CLIsecret-4f2a9c0e11d7b3a5e6f8"
ROTATED_KEY = "sk-sim-CLIrotated-99aa88bb77cc66dd55ee"


def cli(gw: Gateway, *args: str, stdin: str | None = None, key: str | None = None) -> subprocess.CompletedProcess[str]:
    """`farebox *args` with the management key, or `key` (a member's session token)."""
    env = dict(os.environ, FAREBOX_MANAGEMENT_KEY=key or gw.management_key, COLUMNS="300")
    env.pop("FAREBOX_URL", None)   # --url, not the environment, names the server
    return subprocess.run([sys.executable, "-m", "farebox", *args, "--url", gw.url], env=env, input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


def ok(gw: Gateway, *args: str, stdin: str | None = None) -> str:
    out = cli(gw, *args, stdin=stdin)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def as_json(gw: Gateway, *args: str, stdin: str | None = None) -> Any:
    return json.loads(ok(gw, *args, "--json", stdin=stdin), parse_float=Decimal)


def fails(gw: Gateway, *args: str, stdin: str | None = None, code: int = 1, key: str | None = None) -> str:
    """A command that must be refused: exit `code` (1: the server or the CLI refused it; 2:
    a usage error), nothing on stdout, the reason on stderr."""
    out = cli(gw, *args, stdin=stdin, key=key)
    assert out.returncode == code, (args, out.stdout, out.stderr)
    assert out.stdout == "", out.stdout
    return out.stderr


def workspace(gw: Gateway, org: str, wid: int) -> dict[str, Any]:
    return gw.admin("GET", f"/workspaces/{wid}?organization={org}")["data"]


# -- workspaces ------------------------------------------------------------------------------

def test_workspaces_end_to_end(gateway: Gateway, org_name: str) -> None:
    gw = gateway
    gw.org(org_name)
    made = as_json(gw, "workspaces", "create", org_name, "research", "--pooled", "--budget", "daily=5.00",
                   "--budget", "lifetime=100", "--deny-training")
    wid = made["id"]
    assert (made["name"], made["pooled"], made["balance"], made["settings"]["deny_training"]) == (
        "research", True, 0, True)
    assert {p: b["limit"] for p, b in made["budgets"].items()} == {"daily": 5, "lifetime": 100}
    assert workspace(gw, org_name, wid)["budgets"] == made["budgets"]   # stored, not just echoed

    listed = as_json(gw, "workspaces", "list", org_name)
    assert [w["name"] for w in listed] == ["default", "research"]
    table = ok(gw, "workspaces", "show", org_name, str(wid))
    assert "research" in table and "daily $5 (left $5)" in table and "deny_training" in table

    # A budget to the nano-dollar, then the daily one removed; the other budgets stay.
    data = as_json(gw, "workspaces", "budget", org_name, str(wid), "weekly", "12.345678901")
    assert data["budgets"]["weekly"] == {"limit": Decimal("12.345678901"), "usage": 0,
                                         "remaining": Decimal("12.345678901")}
    data = as_json(gw, "workspaces", "budget", org_name, str(wid), "daily", "--clear")
    assert set(data["budgets"]) == {"weekly", "lifetime"}
    assert set(workspace(gw, org_name, wid)["budgets"]) == {"weekly", "lifetime"}

    data = as_json(gw, "workspaces", "update", org_name, str(wid), "--name", "lab", "--no-deny-training",
                   "--zdr-only", "--include-byok-in-budgets")
    stored = workspace(gw, org_name, wid)
    assert (stored["name"], stored["settings"], stored["include_byok_in_budgets"]) == (
        "lab", {"deny_training": False, "deny_retention": False, "zdr_only": True}, True)
    assert data == stored

    # Refusals: the server's words, exit 1.
    assert "period must be one of daily, weekly, monthly, lifetime (HTTP 400)" in fails(
        gw, "workspaces", "budget", org_name, str(wid), "fortnightly", "5")
    assert "amount is not a decimal number: 'five'" in fails(gw, "workspaces", "budget", org_name, str(wid),
                                                              "daily", "five")
    assert "A workspace named 'lab' already exists (HTTP 409)" in fails(gw, "workspaces", "create", org_name, "lab")
    default = next(w["id"] for w in listed if w["name"] == "default")
    assert "The default workspace cannot be deleted" in fails(gw, "workspaces", "delete", org_name, str(default))
    assert "No organization named 'no-such-org'" in fails(gw, "workspaces", "list", "no-such-org")
    # Usage errors are caught before any request: exit 2.
    fails(gw, "workspaces", "budget", org_name, str(wid), "daily", "5", "--clear", code=2)
    fails(gw, "workspaces", "budget", org_name, str(wid), "daily", code=2)
    fails(gw, "workspaces", "update", org_name, str(wid), code=2)
    fails(gw, "workspaces", "create", org_name, "x", "--budget", "daily", code=2)

    assert "deleted workspace" in ok(gw, "workspaces", "delete", org_name, str(wid))
    assert f"No workspace {wid} in this organization (HTTP 404)" in fails(gw, "workspaces", "show", org_name,
                                                                           str(wid))
    assert [w["name"] for w in as_json(gw, "workspaces", "list", org_name)] == ["default"]


# -- transfers -------------------------------------------------------------------------------

def test_transfers_move_exact_amounts_once(gateway: Gateway, org_name: str) -> None:
    gw = gateway
    gw.org(org_name, "5.00")
    pool = str(as_json(gw, "workspaces", "create", org_name, "pool", "--pooled")["id"])
    shared = str(as_json(gw, "workspaces", "create", org_name, "shared")["id"])

    out = ok(gw, "transfers", "create", org_name, "--from", "organization", "--to", pool, "--amount", "1.50",
             "--reference", "r1", "--memo", "seed")
    assert f"transferred $1.5 from organization to {pool} (reference r1)" in out
    again = ok(gw, "transfers", "create", org_name, "--from", "organization", "--to", pool, "--amount", "1.50",
               "--reference", "r1")
    assert "already transferred $1.5" in again
    back = as_json(gw, "transfers", "create", org_name, "--from", pool, "--to", "organization",
                   "--amount", "0.000000001", "--reference", "r2")
    assert (back["from"], back["to"], back["amount"], back["replayed"]) == (
        int(pool), "organization", Decimal("0.000000001"), False)
    assert gw.balance(org_name) == Decimal("3.500000001")
    assert workspace(gw, org_name, int(pool))["balance"] == Decimal("1.499999999")

    listed = as_json(gw, "transfers", "list", org_name)
    assert [(t["reference"], t["from"], t["to"], t["amount"], t["memo"]) for t in listed] == [
        ("r1", "organization", int(pool), Decimal("1.5"), "seed"),
        ("r2", int(pool), "organization", Decimal("0.000000001"), None)]
    table = ok(gw, "transfers", "list", org_name)
    assert "0.000000001" in table and "seed" in table and "operator" in table

    assert "The source has 3.500000001 USD available to transfer" in fails(
        gw, "transfers", "create", org_name, "--from", "organization", "--to", pool, "--amount", "10",
        "--reference", "r3")
    assert "has no pool" in fails(gw, "transfers", "create", org_name, "--from", "organization", "--to", shared,
                                  "--amount", "1", "--reference", "r4")
    assert "amount must be more than zero" in fails(gw, "transfers", "create", org_name, "--from", "organization",
                                                    "--to", pool, "--amount", "0", "--reference", "r5")
    assert "was already used for a different transfer" in fails(
        gw, "transfers", "create", org_name, "--from", "organization", "--to", pool, "--amount", "2",
        "--reference", "r1")
    assert len(as_json(gw, "transfers", "list", org_name)) == 2
    assert gw.balance(org_name) == Decimal("3.500000001")


# -- projects --------------------------------------------------------------------------------

def test_projects_end_to_end_and_usage_is_attributed(gateway: Gateway, org_name: str) -> None:
    gw = gateway
    gw.org(org_name, "5.00")
    key, _ = gw.key(org_name)
    made = as_json(gw, "projects", "create", org_name, "search", "--budget", "monthly=20")
    pid = str(made["id"])
    assert (made["name"], made["budgets"]["monthly"]["limit"], made["usage"]) == ("search", 20, 0)
    other_ws = str(as_json(gw, "workspaces", "create", org_name, "other")["id"])
    as_json(gw, "projects", "create", org_name, "elsewhere", "--workspace", other_ws)
    assert [p["name"] for p in as_json(gw, "projects", "list", org_name)] == ["search", "elsewhere"]
    assert [p["name"] for p in as_json(gw, "projects", "list", org_name, "--workspace", other_ws)] == ["elsewhere"]

    data = as_json(gw, "projects", "budget", org_name, pid, "daily", "0.5")
    assert {p: b["limit"] for p, b in data["budgets"].items()} == {"daily": Decimal("0.5"), "monthly": 20}

    # A request that names the project (body field) is counted against it.
    reply = client(gw, key).chat.completions.create(model="sim/small", extra_body={"project": "search"},
                                                    messages=[{"role": "user", "content": "[[sim output_tokens=20]]"}])
    gw.wait_idle()
    status, generation, _ = http("GET", f"{gw.api}/generation?id={reply.id}", key=key)   # exact, not the SDK's float
    assert status == 200, generation
    cost = generation["data"]["usage"]
    shown = as_json(gw, "projects", "show", org_name, pid)
    assert cost > 0 and shown["usage"] == cost and shown["budgets"]["daily"]["remaining"] == Decimal("0.5") - cost
    assert f"{cost}" in ok(gw, "projects", "show", org_name, pid)

    assert as_json(gw, "projects", "rename", org_name, pid, "lookup")["name"] == "lookup"
    assert gw.admin("GET", f"/projects/{pid}?organization={org_name}")["data"]["name"] == "lookup"
    data = as_json(gw, "projects", "budget", org_name, pid, "daily", "--clear")
    assert list(data["budgets"]) == ["monthly"]

    assert "Workspace 'default' already has a project named 'lookup' (HTTP 409)" in fails(
        gw, "projects", "create", org_name, "lookup")
    assert "workspace_id must be a positive integer id" in fails(gw, "projects", "create", org_name, "x",
                                                                 "--workspace", "abc")
    assert "No workspace 999999 in this organization" in fails(gw, "projects", "list", org_name,
                                                               "--workspace", "999999")
    assert "deleted project" in ok(gw, "projects", "delete", org_name, pid)
    assert f"No project {pid} in this organization (HTTP 404)" in fails(gw, "projects", "show", org_name, pid)
    assert [p["name"] for p in as_json(gw, "projects", "list", org_name)] == ["elsewhere"]


# -- privacy ---------------------------------------------------------------------------------

def test_privacy_settings_of_the_organization_and_a_workspace(gateway: Gateway, org_name: str) -> None:
    gw = gateway
    gw.org(org_name)
    off = {"deny_training": False, "deny_retention": False, "zdr_only": False, "logging": False}
    assert as_json(gw, "privacy", "show", org_name) == off
    data = as_json(gw, "privacy", "set", org_name, "--deny-training", "--logging")
    assert data == {**off, "deny_training": True, "logging": True}
    assert gw.admin("GET", f"/organization/settings?organization={org_name}")["data"] == data
    data = as_json(gw, "privacy", "set", org_name, "--no-logging", "--zdr-only")   # the others keep their value
    assert data == {**off, "deny_training": True, "zdr_only": True}
    table = ok(gw, "privacy", "show", org_name)
    assert re.search(r"deny_training\s*│\s*on", table) and re.search(r"logging\s*│\s*off", table), table

    wid = str(as_json(gw, "workspaces", "create", org_name, "eu")["id"])
    assert as_json(gw, "privacy", "set", org_name, "--workspace", wid, "--deny-retention") == {
        "deny_training": False, "deny_retention": True, "zdr_only": False}
    assert workspace(gw, org_name, int(wid))["settings"]["deny_retention"] is True
    assert as_json(gw, "privacy", "show", org_name, "--workspace", wid)["deny_retention"] is True

    assert "prompt logging is an organization setting" in fails(gw, "privacy", "set", org_name, "--workspace", wid,
                                                                "--logging", code=2)
    fails(gw, "privacy", "set", org_name, code=2)
    assert "No workspace 999999 in this organization" in fails(gw, "privacy", "show", org_name,
                                                               "--workspace", "999999")


# -- members ---------------------------------------------------------------------------------

def _assert_secret_kept(gw: Gateway, secret: str, *outputs: str) -> None:
    assert outputs
    for output in outputs:
        assert secret not in output, output
    assert secret not in gw.proc.output()  # type: ignore[union-attr]


def test_members_end_to_end_with_the_password_from_stdin(gateway: Gateway, org_name: str) -> None:
    gw = gateway
    gw.org(org_name)
    email = f"ada@{org_name}.example"
    # The password is never an argument: the option does not exist.
    assert "No such option: --password" in fails(gw, "members", "add", org_name, email, "--role", "admin",
                                                 "--password", PASSWORD, code=2)
    # Without a terminal to ask on, and without --password-stdin, it is refused.
    assert "no terminal to ask for the password on" in fails(gw, "members", "add", org_name, email,
                                                             "--role", "admin")
    added = cli(gw, "members", "add", org_name, email, "--role", "admin", "--name", "Ada", "--password-stdin",
                "--json", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    member = json.loads(added.stdout)
    assert (member["email"], member["name"], member["role"], member["workspaces"]) == (email, "Ada", "admin", None)
    gw.login(org_name, email, PASSWORD)   # exactly the password that went in (the newline is not part of it)

    ws = str(as_json(gw, "workspaces", "create", org_name, "team")["id"])
    # By email or by id; the workspace limit, the role, the state.
    data = as_json(gw, "members", "update", org_name, email, "--role", "viewer", "--workspace", ws)
    assert (data["id"], data["role"], data["workspaces"]) == (member["id"], "viewer", [int(ws)])
    data = as_json(gw, "members", "update", org_name, member["id"], "--all-workspaces", "--disable")
    assert (data["workspaces"], data["disabled"]) == (None, True)
    assert http("POST", f"{gw.api}/auth/login", {"organization": org_name, "email": email,
                                                  "password": PASSWORD})[0] == 401
    as_json(gw, "members", "update", org_name, email, "--enable")
    new_password = PASSWORD + " again"
    changed = cli(gw, "members", "update", org_name, email, "--password-stdin", stdin=new_password)
    assert changed.returncode == 0, changed.stderr
    gw.login(org_name, email, new_password)
    assert http("POST", f"{gw.api}/auth/login", {"organization": org_name, "email": email,
                                                  "password": PASSWORD})[0] == 401

    listed = as_json(gw, "members", "list", org_name)
    assert [(m["email"], m["role"]) for m in listed] == [(email, "viewer")]
    assert email in ok(gw, "members", "list", org_name)

    assert "role must be one of owner, admin, member, viewer (HTTP 400)" in fails(
        gw, "members", "add", org_name, "bob@x.example", "--role", "boss", "--password-stdin", stdin=PASSWORD)
    assert "password must be a string of 8 to 1024 characters" in fails(
        gw, "members", "add", org_name, "bob@x.example", "--role", "member", "--password-stdin", stdin="short")
    assert "the password is empty" in fails(gw, "members", "add", org_name, "bob@x.example", "--role", "member",
                                            "--password-stdin", stdin="\n")
    assert "no member with email nobody@x.example" in fails(gw, "members", "remove", org_name, "nobody@x.example")
    fails(gw, "members", "update", org_name, email, code=2)

    assert "removed member" in ok(gw, "members", "remove", org_name, email)
    assert as_json(gw, "members", "list", org_name) == []
    _assert_secret_kept(gw, PASSWORD, added.stdout, added.stderr, changed.stdout, changed.stderr)
    _assert_secret_kept(gw, new_password, changed.stdout, changed.stderr)


# Runs a command on a new pseudo-terminal as its controlling terminal (what a person's shell
# gives it), so the hidden prompt reads from it: argv[1] is the terminal's fd.
_ON_TTY = ("import os, sys; os.login_tty(int(sys.argv[1])); "
           "os.execv(sys.executable, [sys.executable, '-m', 'farebox', *sys.argv[2:]])")


def on_terminal(gw: Gateway, args: list[str], answers: list[str]) -> tuple[int, str]:
    """Run `farebox *args` on a terminal, typing each answer at each prompt ending in ':'.
    Returns (exit code, everything the terminal showed)."""
    master, slave = os.openpty()
    env = dict(os.environ, FAREBOX_MANAGEMENT_KEY=gw.management_key, COLUMNS="300")
    proc = subprocess.Popen([sys.executable, "-c", _ON_TTY, str(slave), *args, "--url", gw.url], env=env,
                            pass_fds=(slave,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    os.close(slave)
    shown, pending = b"", list(answers)
    try:
        while True:
            # Like subprocess.run(timeout=60) elsewhere: a command stuck waiting is a failure, not a hang.
            if not select.select([master], [], [], 60)[0]:
                proc.kill()
                raise AssertionError(f"farebox {args} is stuck; the terminal showed {shown!r}")
            try:
                chunk = os.read(master, 4096)
            except OSError:   # EIO: the command exited and the terminal closed
                break
            if not chunk:
                break
            shown += chunk
            if pending and shown.rstrip(b" ").endswith(b":"):
                # getpass flushes typed-ahead input when it turns echo off: answer only then.
                while termios.tcgetattr(master)[3] & termios.ECHO and proc.poll() is None:
                    time.sleep(0.01)
                os.write(master, pending.pop(0).encode() + b"\n")
                shown += b"\n"   # mark the answer's place: the next prompt is another one
    finally:
        os.close(master)
    return proc.wait(timeout=60), shown.decode(errors="replace")


def test_members_add_asks_for_the_password_without_echo(gateway: Gateway, org_name: str) -> None:
    gw = gateway
    gw.org(org_name)
    email = f"grace@{org_name}.example"
    code, shown = on_terminal(gw, ["members", "add", org_name, email, "--role", "member"], [PASSWORD, PASSWORD])
    assert code == 0, shown
    assert "Password:" in shown and "Repeat for confirmation:" in shown and email in shown
    assert PASSWORD not in shown   # not echoed as typed, not printed after
    gw.login(org_name, email, PASSWORD)
    # Two different answers: refused before anything is sent.
    code, shown = on_terminal(gw, ["members", "add", org_name, "other@x.example", "--role", "member"],
                              [PASSWORD, PASSWORD + "x", PASSWORD, PASSWORD])
    assert code == 0 and "do not match" in shown, shown
    assert PASSWORD not in shown
    assert sorted(m["email"] for m in as_json(gw, "members", "list", org_name)) == [email, "other@x.example"]
    assert PASSWORD not in gw.proc.output()  # type: ignore[union-attr]


# -- BYOK ------------------------------------------------------------------------------------

def _stored_key(gw: Gateway, credential_id: str) -> str:
    """The provider key the gateway stored, opened with the installation's vault key."""
    conn = sqlite3.connect(gw.home / "farebox.db")
    try:
        blob, org_id = conn.execute("SELECT secret, org_id FROM byok_credentials WHERE id = ?",
                                    (credential_id,)).fetchone()
    finally:
        conn.close()
    material = base64.b64decode((gw.home / "byok_key").read_text().strip())
    return Vault(material).open(blob, credential_aad(credential_id, org_id))


def test_byok_end_to_end_with_the_key_from_stdin(gateway: Gateway, org_name: str) -> None:
    gw = gateway
    gw.org(org_name)
    assert "Got unexpected extra argument" in fails(gw, "byok", "add", org_name, "sim", PROVIDER_KEY, code=2)
    assert "no terminal to ask for the provider api key on" in fails(gw, "byok", "add", org_name, "sim")
    added = cli(gw, "byok", "add", org_name, "sim", "--name", "ours", "--api-key-stdin", "--json",
                stdin=PROVIDER_KEY + "\n")
    assert added.returncode == 0, added.stderr
    cred = json.loads(added.stdout)
    assert (cred["provider"], cred["name"], cred["label"], cred["always_use"], cred["disabled"]) == (
        "sim", "ours", f"{PROVIDER_KEY[:6]}...{PROVIDER_KEY[-4:]}", False, False)
    assert _stored_key(gw, cred["id"]) == PROVIDER_KEY   # exactly what was piped in, sealed
    assert PROVIDER_KEY.encode() not in (gw.home / "farebox.db").read_bytes()

    table = ok(gw, "byok", "list", org_name)
    assert cred["id"] in table and cred["label"] in table
    rotated = cli(gw, "byok", "update", org_name, cred["id"], "--api-key-stdin", "--always-use", "--json",
                  stdin=ROTATED_KEY)
    assert rotated.returncode == 0, rotated.stderr
    data = json.loads(rotated.stdout)
    assert (data["label"], data["always_use"]) == (f"{ROTATED_KEY[:6]}...{ROTATED_KEY[-4:]}", True)
    assert _stored_key(gw, cred["id"]) == ROTATED_KEY
    data = as_json(gw, "byok", "update", org_name, cred["id"], "--allow-fallback", "--disable", "--name", "old")
    assert (data["always_use"], data["disabled"], data["name"]) == (False, True, "old")
    stored = gw.admin("GET", f"/byok/{cred['id']}?organization={org_name}")["data"]
    assert (stored["always_use"], stored["disabled"], stored["name"]) == (False, True, "old")

    ws = str(as_json(gw, "workspaces", "create", org_name, "team")["id"])
    other = as_json(gw, "byok", "add", org_name, "sim", "--workspace", ws, "--api-key-stdin", stdin=PROVIDER_KEY)
    assert other["workspace_id"] == int(ws)
    assert [c["id"] for c in as_json(gw, "byok", "list", org_name, "--workspace", ws)] == [other["id"]]

    assert "provider must be the slug of a provider of the catalog" in fails(
        gw, "byok", "add", org_name, "no-such-provider", "--api-key-stdin", stdin=PROVIDER_KEY)
    refused = cli(gw, "byok", "add", org_name, "sim", "--api-key-stdin", stdin="sk has spaces")
    assert refused.returncode == 1 and "api_key must be the provider's API key" in refused.stderr
    assert "sk has spaces" not in refused.stderr   # the message never repeats a key
    assert "is empty" in fails(gw, "byok", "add", org_name, "sim", "--api-key-stdin", stdin="")
    fails(gw, "byok", "update", org_name, cred["id"], code=2)

    assert "removed provider key" in ok(gw, "byok", "remove", org_name, cred["id"])
    assert [c["id"] for c in as_json(gw, "byok", "list", org_name)] == [other["id"]]
    assert "(HTTP 404)" in fails(gw, "byok", "remove", org_name, cred["id"])
    _assert_secret_kept(gw, PROVIDER_KEY, added.stdout, added.stderr, table)
    _assert_secret_kept(gw, ROTATED_KEY, rotated.stdout, rotated.stderr)


# -- keys ------------------------------------------------------------------------------------

def test_keys_create_and_update_limits_and_expiry(gateway: Gateway, org_name: str) -> None:
    gw = gateway
    gw.org(org_name)
    ws = as_json(gw, "workspaces", "create", org_name, "team")["id"]
    made = as_json(gw, "keys", "create", "--org", org_name, "--name", "ci", "--limit", "2.500000001",
                   "--limit-reset", "daily", "--include-byok-in-limit", "--expires-at", "2030-01-01T00:00:00Z",
                   "--workspace", str(ws))
    data = made["data"]
    assert (data["limit"], data["limit_remaining"], data["limit_reset"], data["include_byok_in_limit"],
            data["expires_at"], data["workspace_id"]) == (
        Decimal("2.500000001"), Decimal("2.500000001"), "daily", True, "2030-01-01T00:00:00.000Z", ws)
    khash = data["hash"]

    data = as_json(gw, "keys", "update", khash, "--org", org_name, "--limit", "7", "--limit-reset", "weekly",
                   "--exclude-byok-from-limit", "--name", "ci-2")
    assert (data["limit"], data["limit_reset"], data["include_byok_in_limit"], data["name"]) == (
        7, "weekly", False, "ci-2")
    data = as_json(gw, "keys", "update", khash, "--limit", "none", "--expires-at", "never", "--disable")
    assert (data["limit"], data["expires_at"], data["disabled"]) == (None, None, True)
    stored = gw.admin("GET", f"/keys/{khash}")["data"]
    assert (stored["limit"], stored["expires_at"], stored["disabled"], stored["name"]) == (None, None, True, "ci-2")
    assert http("GET", f"{gw.api}/key", key=made["key"])[0] == 401
    assert "enabled" in ok(gw, "keys", "update", khash, "--enable")
    assert http("GET", f"{gw.api}/key", key=made["key"])[0] == 200

    assert "limit_reset must be daily, weekly, monthly or null" in fails(gw, "keys", "update", khash,
                                                                         "--limit-reset", "hourly")
    assert "expires_at is not an ISO 8601 timestamp: 'tomorrow'" in fails(gw, "keys", "update", khash,
                                                                           "--expires-at", "tomorrow")
    assert "No key with hash" in fails(gw, "keys", "update", "abc123", "--name", "x")
    fails(gw, "keys", "update", khash, code=2)


# -- activity --------------------------------------------------------------------------------

def test_activity_table_json_and_csv(make_gateway: Callable[..., Gateway], org_name: str, tmp_path: Path) -> None:
    """Real requests moved a day back in the stopped gateway's database (the server's clock
    cannot be set; today is never reported), then the report through the CLI: the same data
    as the API, exactly."""
    gw = make_gateway()
    gw.org(org_name, "1.00")
    key, _ = gw.key(org_name)
    as_json(gw, "projects", "create", org_name, "search")
    for project in ("search", "search", None):
        client(gw, key).chat.completions.create(
            model="sim/small", messages=[{"role": "user", "content": "[[sim output_tokens=30]] go"}],
            extra_headers={} if project is None else {"X-Farebox-Project": project})
    gw.wait_idle()
    gw.stop()
    day_ms = 86_400_000
    conn = sqlite3.connect(gw.home / "farebox.db")
    with conn:
        moved = conn.execute("UPDATE generations SET created_at = created_at - ?, settled_at = settled_at - ?",
                             (day_ms, day_ms)).rowcount
    conn.close()
    assert moved == 3
    gw.start()

    report = as_json(gw, "activity", org_name, "--group-by", "project")
    status, api, _ = http("GET", f"{gw.api}/activity?organization={org_name}&group_by=project", key=gw.management_key)
    assert status == 200 and report == api
    assert [(r["name"], r["requests"]) for r in report["data"]] == [("search", 2), (None, 1)]
    assert report["meta"]["total_usage"] == sum((r["usage"] for r in report["data"]), Decimal(0)) > 0

    table = ok(gw, "activity", org_name, "--group-by", "project")
    assert "search" in table and f"usage ${report['meta']['total_usage']}" in table
    assert f"balance ${report['meta']['balance']}" in table

    out = tmp_path / "activity.csv"
    written = cli(gw, "activity", org_name, "--group-by", "model", "--csv", str(out))
    assert written.returncode == 0, written.stderr
    status, expected, _ = http("GET", f"{gw.api}/activity.csv?organization={org_name}&group_by=model",
                               key=gw.management_key)
    assert status == 200 and out.read_bytes().decode() == expected and "sim/small" in expected
    assert ok(gw, "activity", org_name, "--group-by", "model", "--csv", "-") == expected.replace("\r\n", "\n")

    assert "group_by must be one of" in fails(gw, "activity", org_name, "--group-by", "colour")
    assert "date must be a UTC date such as 2026-11-01" in fails(gw, "activity", org_name, "--date", "2026-13-01")
    assert "No organization named 'nope'" in fails(gw, "activity", "nope", "--csv", "-")


# -- a member's session instead of the management key ----------------------------------------

def test_a_member_uses_the_cli_within_their_role(gateway: Gateway, org_name: str) -> None:
    gw = gateway
    gw.org(org_name)
    other = gw.org(org_name + "-other")
    viewer = member_token(gw, org_name, "viewer")
    admin = member_token(gw, org_name, "admin")

    def run(token: str, *args: str) -> Any:
        out = cli(gw, *args, "--json", key=token)
        assert out.returncode == 0, (args, out.stderr)
        return json.loads(out.stdout, parse_float=Decimal)

    assert [w["name"] for w in run(viewer, "workspaces", "list", org_name)] == ["default"]
    assert "Role viewer may not perform workspaces.write; it needs role admin or above (HTTP 403)" in fails(
        gw, "workspaces", "create", org_name, "mine", key=viewer)
    assert "Role viewer may not perform privacy.write" in fails(gw, "privacy", "set", org_name, "--logging",
                                                                key=viewer)
    made = run(admin, "workspaces", "create", org_name, "team")
    assert [w["name"] for w in run(viewer, "workspaces", "list", org_name)] == ["default", "team"]
    assert run(admin, "projects", "create", org_name, "p", "--workspace", str(made["id"]))["workspace_id"] == made["id"]
    # Another organization does not exist for them; nothing was made there.
    assert f"No organization named '{other}' (HTTP 404)" in fails(gw, "workspaces", "create", other, "x", key=admin)
    assert [w["name"] for w in as_json(gw, "workspaces", "list", other)] == ["default"]
