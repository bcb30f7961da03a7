"""`farebox members|byok|activity ...` (issue 6): thin clients of api/members.py,
api/byok.py and api/activity.py with the operator's management key.

Secrets (a member's password, a provider's API key) are never command-line arguments, where
`ps`, shell history and CI logs would keep them: they are read from stdin
(`--password-stdin`, `--api-key-stdin`) or asked for on the terminal without echo, sent in
the request body, and never printed back."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer
from rich.markup import escape

from farebox.cli.client import query
from farebox.cli.credits import _download, _usd, _when, _write
from farebox.cli.manage import JSON, URL, _call, _print_json, _table, console, err

members = typer.Typer(no_args_is_help=True)
byok = typer.Typer(no_args_is_help=True)

ORG = typer.Argument(..., metavar="ORG", help="Organization name or id.")
ROLES_HELP = "owner, admin, member or viewer."




def _secret(what: str, flag: str, from_stdin: bool, *, confirm: bool) -> str:
    """A secret from stdin (everything up to EOF, less the line break `echo` adds) or typed
    at a hidden prompt; never from argv."""
    if from_stdin:
        value = sys.stdin.read().rstrip("\r\n")
    elif sys.stdin.isatty():
        value = typer.prompt(what, hide_input=True, confirmation_prompt=confirm)
    else:
        err.print(f"[red]error[/red] no terminal to ask for the {what.lower()} on: pipe it in with {flag}",
                  soft_wrap=True)
        raise typer.Exit(1)
    if not value:
        err.print(f"[red]error[/red] the {what.lower()} is empty", soft_wrap=True)
        raise typer.Exit(1)
    return value


# -- members ---------------------------------------------------------------------------------

def _member_rows(rows: list[dict[str, Any]]) -> None:
    table = _table("id", "email", "name", "role", "workspaces", "state", "created")
    for m in rows:
        workspaces = "all" if m["workspaces"] is None else ", ".join(map(str, m["workspaces"]))
        table.add_row(m["id"], escape(m["email"]), escape(m["name"] or "-"), m["role"], workspaces,
                      "disabled" if m["disabled"] else "active", _when(m["created_at"]))
    console.print(table)


def _member_id(url: str | None, org: str, member: str) -> str:
    """A member's id, from its id or its email address."""
    if "@" not in member:
        return member
    rows = _call(url, "GET", f"/api/v1/organization/members?{query(org)}")["data"]
    found = [m["id"] for m in rows if m["email"] == member.strip().lower()]
    if not found:
        err.print(f"[red]error[/red] no member with email {escape(member)} in {escape(org)}", soft_wrap=True)
        raise typer.Exit(1)
    return str(found[0])


def _workspace_ids(values: list[int] | None, every: bool) -> dict[str, Any]:
    if every and values:
        raise typer.BadParameter("--all-workspaces or --workspace, not both", param_hint="--all-workspaces")
    if every:
        return {"workspaces": None}
    return {"workspaces": list(values)} if values else {}


@members.command("list")
def members_list(org: str = ORG, url: str = URL, as_json: bool = JSON) -> None:
    """The organization's members with their roles and workspaces."""
    data = _call(url, "GET", f"/api/v1/organization/members?{query(org)}")["data"]
    _print_json(data) if as_json else _member_rows(data)


@members.command("add")
def members_add(org: str = ORG, email: str = typer.Argument(..., metavar="EMAIL"),
                role: str = typer.Option(..., "--role", help=ROLES_HELP),
                name: str = typer.Option(None, "--name", help="Their name."),
                workspaces: list[int] = typer.Option(None, "--workspace", metavar="ID",
                                                     help="Limit them to this workspace (repeatable; default: all)."),
                password_stdin: bool = typer.Option(False, "--password-stdin",
                                                    help="Read the password from stdin instead of asking for it."),
                url: str = URL, as_json: bool = JSON) -> None:
    """Add a member who logs in with EMAIL and a password (asked for, or from stdin)."""
    password = _secret("Password", "--password-stdin", password_stdin, confirm=True)
    body: dict[str, Any] = {"organization": org, "email": email, "role": role, "password": password,
                            **_workspace_ids(workspaces, False)}
    if name is not None:
        body["name"] = name
    data = _call(url, "POST", "/api/v1/organization/members", body)["data"]
    _print_json(data) if as_json else _member_rows([data])


@members.command("update")
def members_update(org: str = ORG, member: str = typer.Argument(..., metavar="MEMBER", help="Id or email."),
                   role: str = typer.Option(None, "--role", help=ROLES_HELP),
                   name: str = typer.Option(None, "--name", help="Their name (\"\" clears it)."),
                   workspaces: list[int] = typer.Option(None, "--workspace", metavar="ID",
                                                        help="Limit them to these workspaces (repeatable)."),
                   every: bool = typer.Option(False, "--all-workspaces", help="Lift any workspace limit."),
                   enabled: bool = typer.Option(None, "--enable/--disable", help="Let them log in, or not."),
                   new_password: bool = typer.Option(False, "--new-password", help="Ask for a new password."),
                   password_stdin: bool = typer.Option(False, "--password-stdin",
                                                       help="Read a new password from stdin."),
                   url: str = URL, as_json: bool = JSON) -> None:
    """Change a member's role, name, workspaces, state or password."""
    body: dict[str, Any] = {"organization": org, **_workspace_ids(workspaces, every)}
    for field, value in (("role", role), ("name", name)):
        if value is not None:
            body[field] = value
    if enabled is not None:
        body["disabled"] = not enabled
    if len(body) == 1 and not (new_password or password_stdin):
        raise typer.BadParameter("nothing to change: give --role, --name, --workspace, --disable, --new-password ...")
    member_id = _member_id(url, org, member)   # before asking for a password that would then go nowhere
    if new_password or password_stdin:
        body["password"] = _secret("New password", "--password-stdin", password_stdin, confirm=True)
    data = _call(url, "PATCH", f"/api/v1/organization/members/{quote(member_id, safe='')}", body)["data"]
    _print_json(data) if as_json else _member_rows([data])


@members.command("remove")
def members_remove(org: str = ORG, member: str = typer.Argument(..., metavar="MEMBER", help="Id or email."),
                   url: str = URL, as_json: bool = JSON) -> None:
    """Remove a member: their sessions end at once."""
    member_id = _member_id(url, org, member)
    data = _call(url, "DELETE", f"/api/v1/organization/members/{quote(member_id, safe='')}?{query(org)}")["data"]
    _print_json(data) if as_json else console.print(f"removed member {escape(member)} ({member_id})")


# -- BYOK ------------------------------------------------------------------------------------

def _credential_rows(rows: list[dict[str, Any]]) -> None:
    table = _table("id", "provider", "name", "key", "workspace", "always use", "state", "created")
    for c in rows:
        table.add_row(c["id"], c["provider"], escape(c["name"]), escape(c["label"]), str(c["workspace_id"]),
                      "yes" if c["always_use"] else "no", "disabled" if c["disabled"] else "enabled",
                      _when(c["created_at"]))
    console.print(table)


def _credential_path(credential_id: str) -> str:
    return f"/api/v1/byok/{quote(credential_id, safe='')}"


API_KEY_STDIN = typer.Option(False, "--api-key-stdin", help="Read the provider's key from stdin instead of asking.")


@byok.command("list")
def byok_list(org: str = ORG, workspace: str = typer.Option(None, "--workspace", metavar="ID",
                                                            help="Only this workspace's keys."),
              url: str = URL, as_json: bool = JSON) -> None:
    """Provider keys the organization brought (masked: the keys themselves are never shown)."""
    data = _call(url, "GET", f"/api/v1/byok?{query(org, workspace_id=workspace)}")["data"]
    _print_json(data) if as_json else _credential_rows(data)


@byok.command("add")
def byok_add(org: str = ORG, provider: str = typer.Argument(..., metavar="PROVIDER", help="A catalog provider slug."),
             name: str = typer.Option(None, "--name", help="A name (default: the provider's)."),
             workspace: str = typer.Option(None, "--workspace", metavar="ID", help="Its workspace (default: the "
                                           "default workspace)."),
             always_use: bool = typer.Option(False, "--always-use", help="Never fall back to shared capacity "
                                             "when this key fails."),
             api_key_stdin: bool = API_KEY_STDIN, url: str = URL, as_json: bool = JSON) -> None:
    """Store a provider API key (asked for, or from stdin), encrypted at rest."""
    api_key = _secret("Provider API key", "--api-key-stdin", api_key_stdin, confirm=False)
    body: dict[str, Any] = {"organization": org, "provider": provider, "api_key": api_key, "always_use": always_use}
    for field, value in (("name", name), ("workspace_id", workspace)):
        if value is not None:
            body[field] = value
    data = _call(url, "POST", "/api/v1/byok", body)["data"]
    _print_json(data) if as_json else _credential_rows([data])


@byok.command("update")
def byok_update(org: str = ORG, credential_id: str = typer.Argument(..., metavar="ID"),
                name: str = typer.Option(None, "--name", help="A new name."),
                always_use: bool = typer.Option(None, "--always-use/--allow-fallback",
                                                help="Whether to fall back to shared capacity when it fails."),
                enabled: bool = typer.Option(None, "--enable/--disable", help="Use the key, or not."),
                rotate: bool = typer.Option(False, "--rotate", help="Ask for a replacement key."),
                api_key_stdin: bool = typer.Option(False, "--api-key-stdin", help="Read a replacement key from "
                                                   "stdin."),
                url: str = URL, as_json: bool = JSON) -> None:
    """Rename, rotate, enable or disable a provider key, or change its fallback."""
    body: dict[str, Any] = {"organization": org}
    for field, value in (("name", name), ("always_use", always_use)):
        if value is not None:
            body[field] = value
    if enabled is not None:
        body["disabled"] = not enabled
    if rotate or api_key_stdin:
        body["api_key"] = _secret("Provider API key", "--api-key-stdin", api_key_stdin, confirm=False)
    if len(body) == 1:
        raise typer.BadParameter("nothing to change: give --name, --always-use, --disable, --rotate ...")
    data = _call(url, "PATCH", _credential_path(credential_id), body)["data"]
    _print_json(data) if as_json else _credential_rows([data])


@byok.command("remove")
def byok_remove(org: str = ORG, credential_id: str = typer.Argument(..., metavar="ID"),
                url: str = URL, as_json: bool = JSON) -> None:
    """Delete a provider key; requests use shared capacity again."""
    data = _call(url, "DELETE", f"{_credential_path(credential_id)}?{query(org)}")
    _print_json(data) if as_json else console.print(f"removed provider key {escape(credential_id)}")


# -- activity --------------------------------------------------------------------------------

_FIXED = ("date", "requests", "prompt_tokens", "completion_tokens", "reasoning_tokens", "usage",
          "byok_usage_inference")


def activity(org: str = ORG,
             group_by: str = typer.Option("model", "--group-by", help="day, model, provider, key, workspace, member "
                                          "or project."),
             date: str = typer.Option(None, "--date", metavar="YYYY-MM-DD", help="Only this day."),
             workspace: str = typer.Option(None, "--workspace", metavar="ID", help="Only this workspace."),
             project: str = typer.Option(None, "--project", metavar="ID", help="Only this project."),
             key: str = typer.Option(None, "--key", metavar="HASH", help="Only this API key."),
             member: str = typer.Option(None, "--member", metavar="ID", help="Only keys this member created."),
             csv_out: str = typer.Option(None, "--csv", metavar="FILE", help="Write the CSV export here (- for "
                                         "stdout)."),
             url: str = URL, as_json: bool = JSON) -> None:
    """Usage over the last 30 completed UTC days, grouped by day and GROUP-BY, with the
    average daily spend and the projected depletion date."""
    params = query(org, group_by=group_by, date=date, workspace_id=workspace, project_id=project, api_key_hash=key,
               user_id=member)
    if csv_out is not None:
        _write(_download(url, f"/api/v1/activity.csv?{params}"), None if csv_out == "-" else Path(csv_out), "activity")
        return
    data = _call(url, "GET", f"/api/v1/activity?{params}")
    if as_json:
        _print_json(data)
        return
    rows, meta = data["data"], data["meta"]
    if rows:
        groups = [k for k in rows[0] if k not in _FIXED]   # the grouping's own fields
        table = _table("date", *groups, "requests", "prompt tok", "completion tok", "usage (USD)", "BYOK (USD)")
        for r in rows:
            table.add_row(r["date"], *("-" if r[g] is None else escape(str(r[g])) for g in groups),
                          str(r["requests"]), str(r["prompt_tokens"]), str(r["completion_tokens"]), _usd(r["usage"]),
                          _usd(r["byok_usage_inference"]))
        console.print(table)
    else:
        console.print("no usage in these days")
    depletion = meta["projected_depletion_date"] or "none (no spending to project)"
    console.print(f"{meta['from']} to {meta['to']}: usage ${_usd(meta['total_usage'])}, average "
                  f"${_usd(meta['average_daily_spend'])} a day; balance ${_usd(meta['balance'])}; "
                  f"projected depletion {depletion}", soft_wrap=True)
