"""`farebox workspaces|projects|transfers|privacy ...` and `farebox keys update` (issue 6):
thin clients of the governance endpoints (api/governance.py, api/admin.py for keys), with
the operator's management key like every management command. Each names the organization
first (a name or an id); amounts go to the server as the decimal strings typed and come
back as exact decimals."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import typer
from rich.markup import escape

from farebox.cli.client import query
from farebox.cli.credits import _usd, _when
from farebox.cli.manage import JSON, URL, _call, _print_json, _table, console, keys

workspaces = typer.Typer(no_args_is_help=True)
projects = typer.Typer(no_args_is_help=True)
transfers = typer.Typer(no_args_is_help=True)
privacy = typer.Typer(no_args_is_help=True)

ORG = typer.Argument(..., metavar="ORG", help="Organization name or id.")
PERIOD = typer.Argument(..., metavar="PERIOD", help="daily, weekly, monthly or lifetime.")
AMOUNT = typer.Argument(None, metavar="AMOUNT", help="USD, e.g. 5.00 (omit with --clear).")
CLEAR = typer.Option(False, "--clear", help="Remove this period's budget.")
BUDGETS = typer.Option(None, "--budget", metavar="PERIOD=USD", help="A budget, e.g. daily=5.00 (repeatable).")
# Privacy flags, shared by workspaces create/update and privacy set; None: leave as it is.
DENY_TRAINING = typer.Option(None, "--deny-training/--no-deny-training",
                             help="Never route to providers that train on prompts.")
DENY_RETENTION = typer.Option(None, "--deny-retention/--no-deny-retention",
                              help="Never route to providers that retain prompts.")
ZDR_ONLY = typer.Option(None, "--zdr-only/--no-zdr-only", help="Route only to zero-data-retention endpoints.")




def _flags(**flags: bool | None) -> dict[str, bool]:
    return {name: value for name, value in flags.items() if value is not None}


def _budget_pairs(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        period, sep, amount = value.partition("=")
        if not sep or not period or not amount:
            raise typer.BadParameter(f"expected PERIOD=USD, got {value!r}", param_hint="--budget")
        out[period] = amount   # the server checks the period and the amount
    return out


def _budgets_text(budgets: dict[str, Any]) -> str:
    return ", ".join(f"{p} ${_usd(b['limit'])} (left ${_usd(b['remaining'])})" for p, b in budgets.items()) or "-"


def _settings_text(settings: dict[str, Any]) -> str:
    return ", ".join(name for name, on in settings.items() if on) or "-"


def _set_budget(url: str | None, path: str, org: str, period: str, amount: str | None, clear: bool) -> Any:
    """PUT or DELETE one period's budget of a workspace or a project."""
    if clear == (amount is not None):
        raise typer.BadParameter("give an AMOUNT to set the budget, or --clear to remove it (not both)")
    target = f"{path}/budgets/{quote(period, safe='')}"
    if clear:
        return _call(url, "DELETE", f"{target}?{query(org)}")["data"]
    return _call(url, "PUT", target, {"organization": org, "amount": amount})["data"]


# -- workspaces ------------------------------------------------------------------------------

def _workspace_rows(rows: list[dict[str, Any]]) -> None:
    table = _table("id", "name", "pool (USD)", "budgets", "usage", "privacy")
    for w in rows:
        pool = f"{_usd(w['balance'])} (available {_usd(w['available'])})" if w["pooled"] else "org wallet"
        table.add_row(str(w["id"]), escape(w["name"]), pool, _budgets_text(w["budgets"]), _usd(w["usage"]),
                      _settings_text(w["settings"]))
    console.print(table)


def _workspace_out(data: Any, as_json: bool) -> None:
    _print_json(data) if as_json else _workspace_rows([data])


@workspaces.command("list")
def workspaces_list(org: str = ORG, url: str = URL, as_json: bool = JSON) -> None:
    """The organization's workspaces with their pools, budgets and privacy settings."""
    data = _call(url, "GET", f"/api/v1/workspaces?{query(org)}")["data"]
    _print_json(data) if as_json else _workspace_rows(data)


@workspaces.command("create")
def workspaces_create(org: str = ORG, name: str = typer.Argument(..., metavar="NAME"),
                      pooled: bool = typer.Option(False, "--pooled", help="Give it its own pool of credit "
                                                  "(fund it with `farebox transfers create`)."),
                      include_byok: bool = typer.Option(False, "--include-byok-in-budgets",
                                                        help="Budgets also count BYOK list-price cost."),
                      budgets: list[str] = BUDGETS, deny_training: bool = DENY_TRAINING,
                      deny_retention: bool = DENY_RETENTION, zdr_only: bool = ZDR_ONLY,
                      url: str = URL, as_json: bool = JSON) -> None:
    """Create a workspace (by default it spends from the organization's wallet)."""
    body: dict[str, Any] = {"organization": org, "name": name, "pooled": pooled,
                            "include_byok_in_budgets": include_byok, "budgets": _budget_pairs(budgets),
                            "settings": _flags(deny_training=deny_training, deny_retention=deny_retention,
                                               zdr_only=zdr_only)}
    _workspace_out(_call(url, "POST", "/api/v1/workspaces", body)["data"], as_json)


@workspaces.command("show")
def workspaces_show(org: str = ORG, workspace_id: str = typer.Argument(..., metavar="WORKSPACE_ID"),
                    url: str = URL, as_json: bool = JSON) -> None:
    """One workspace, with its usage per period."""
    data = _call(url, "GET", f"/api/v1/workspaces/{quote(workspace_id, safe='')}?{query(org)}")["data"]
    if as_json:
        _print_json(data)
        return
    _workspace_rows([data])
    console.print(f"usage: today ${_usd(data['usage_daily'])}, this week ${_usd(data['usage_weekly'])}, "
                  f"this month ${_usd(data['usage_monthly'])}; BYOK ${_usd(data['byok_usage'])}")


@workspaces.command("update")
def workspaces_update(org: str = ORG, workspace_id: str = typer.Argument(..., metavar="WORKSPACE_ID"),
                      name: str = typer.Option(None, "--name", help="A new name."),
                      pooled: bool = typer.Option(None, "--pooled/--no-pooled", help="Own pool, or the org's "
                                                  "wallet (a pool must be emptied first)."),
                      include_byok: bool = typer.Option(None, "--include-byok-in-budgets/--exclude-byok-from-budgets",
                                                        help="Whether budgets count BYOK list-price cost."),
                      deny_training: bool = DENY_TRAINING, deny_retention: bool = DENY_RETENTION,
                      zdr_only: bool = ZDR_ONLY, url: str = URL, as_json: bool = JSON) -> None:
    """Rename a workspace or change its pooling, BYOK counting or privacy settings."""
    body: dict[str, Any] = {"organization": org, **_flags(pooled=pooled, include_byok_in_budgets=include_byok)}
    if name is not None:
        body["name"] = name
    settings = _flags(deny_training=deny_training, deny_retention=deny_retention, zdr_only=zdr_only)
    if settings:
        body["settings"] = settings
    if len(body) == 1:
        raise typer.BadParameter("nothing to change: give --name, --pooled, --include-byok-in-budgets or a "
                                 "privacy flag")
    _workspace_out(_call(url, "PATCH", f"/api/v1/workspaces/{quote(workspace_id, safe='')}", body)["data"], as_json)


@workspaces.command("delete")
def workspaces_delete(org: str = ORG, workspace_id: str = typer.Argument(..., metavar="WORKSPACE_ID"),
                      url: str = URL, as_json: bool = JSON) -> None:
    """Delete a workspace: its keys must be deleted and its pool emptied first."""
    data = _call(url, "DELETE", f"/api/v1/workspaces/{quote(workspace_id, safe='')}?{query(org)}")
    _print_json(data) if as_json else console.print(f"deleted workspace {escape(workspace_id)}")


@workspaces.command("budget")
def workspaces_budget(org: str = ORG, workspace_id: str = typer.Argument(..., metavar="WORKSPACE_ID"),
                      period: str = PERIOD, amount: str = AMOUNT, clear: bool = CLEAR,
                      url: str = URL, as_json: bool = JSON) -> None:
    """Set one period's budget (`... daily 5.00`) or remove it (`... daily --clear`)."""
    data = _set_budget(url, f"/api/v1/workspaces/{quote(workspace_id, safe='')}", org, period, amount, clear)
    _workspace_out(data, as_json)


# -- projects --------------------------------------------------------------------------------

def _project_rows(rows: list[dict[str, Any]]) -> None:
    table = _table("id", "name", "workspace", "budgets", "usage", "today", "this month")
    for p in rows:
        table.add_row(str(p["id"]), escape(p["name"]), str(p["workspace_id"]), _budgets_text(p["budgets"]),
                      _usd(p["usage"]), _usd(p["usage_daily"]), _usd(p["usage_monthly"]))
    console.print(table)


def _project_out(data: Any, as_json: bool) -> None:
    _print_json(data) if as_json else _project_rows([data])


def _project_path(project_id: str) -> str:
    return f"/api/v1/projects/{quote(project_id, safe='')}"


@projects.command("list")
def projects_list(org: str = ORG, workspace: str = typer.Option(None, "--workspace", metavar="ID",
                                                                help="Only this workspace's projects."),
                  url: str = URL, as_json: bool = JSON) -> None:
    """Projects (requests name one with X-Farebox-Project or the `project` body field)."""
    data = _call(url, "GET", f"/api/v1/projects?{query(org, workspace_id=workspace)}")["data"]
    _print_json(data) if as_json else _project_rows(data)


@projects.command("create")
def projects_create(org: str = ORG, name: str = typer.Argument(..., metavar="NAME"),
                    workspace: str = typer.Option(None, "--workspace", metavar="ID",
                                                  help="Its workspace (default: the default workspace)."),
                    budgets: list[str] = BUDGETS, url: str = URL, as_json: bool = JSON) -> None:
    """Create a project in a workspace, with optional budgets."""
    body: dict[str, Any] = {"organization": org, "name": name, "budgets": _budget_pairs(budgets)}
    if workspace is not None:
        body["workspace_id"] = workspace
    _project_out(_call(url, "POST", "/api/v1/projects", body)["data"], as_json)


@projects.command("show")
def projects_show(org: str = ORG, project_id: str = typer.Argument(..., metavar="PROJECT_ID"),
                  url: str = URL, as_json: bool = JSON) -> None:
    """One project with its budgets and usage."""
    _project_out(_call(url, "GET", f"{_project_path(project_id)}?{query(org)}")["data"], as_json)


@projects.command("rename")
def projects_rename(org: str = ORG, project_id: str = typer.Argument(..., metavar="PROJECT_ID"),
                    name: str = typer.Argument(..., metavar="NEW_NAME"), url: str = URL, as_json: bool = JSON) -> None:
    """Rename a project (requests must then use the new name)."""
    _project_out(_call(url, "PATCH", _project_path(project_id), {"organization": org, "name": name})["data"], as_json)


@projects.command("delete")
def projects_delete(org: str = ORG, project_id: str = typer.Argument(..., metavar="PROJECT_ID"),
                    url: str = URL, as_json: bool = JSON) -> None:
    """Delete a project: requests naming it are refused from then on."""
    data = _call(url, "DELETE", f"{_project_path(project_id)}?{query(org)}")
    _print_json(data) if as_json else console.print(f"deleted project {escape(project_id)}")


@projects.command("budget")
def projects_budget(org: str = ORG, project_id: str = typer.Argument(..., metavar="PROJECT_ID"),
                    period: str = PERIOD, amount: str = AMOUNT, clear: bool = CLEAR,
                    url: str = URL, as_json: bool = JSON) -> None:
    """Set one period's budget (`... monthly 20`) or remove it (`... monthly --clear`)."""
    _project_out(_set_budget(url, _project_path(project_id), org, period, amount, clear), as_json)


# -- transfers -------------------------------------------------------------------------------

@transfers.command("list")
def transfers_list(org: str = ORG, url: str = URL, as_json: bool = JSON) -> None:
    """Transfers between the organization's wallet and its workspaces' pools, oldest first."""
    data = _call(url, "GET", f"/api/v1/transfers?{query(org)}")["data"]
    if as_json:
        _print_json(data)
        return
    table = _table("created", "from", "to", "amount (USD)", "reference", "memo", "by")
    for t in data:
        table.add_row(_when(t["created_at"]), str(t["from"]), str(t["to"]), _usd(t["amount"]),
                      escape(t["reference"]), escape(t["memo"] or "-"), escape(t["created_by"] or "-"))
    console.print(table)


@transfers.command("create")
def transfers_create(org: str = ORG,
                     source: str = typer.Option(..., "--from", metavar="SIDE",
                                                help="\"organization\" (its wallet) or a pooled workspace's id."),
                     target: str = typer.Option(..., "--to", metavar="SIDE", help="Likewise."),
                     amount: str = typer.Option(..., "--amount", help="USD, e.g. 1.50."),
                     reference: str = typer.Option(..., "--reference", help="Idempotency reference."),
                     memo: str = typer.Option(None, "--memo", help="A note kept with the transfer."),
                     url: str = URL, as_json: bool = JSON) -> None:
    """Move credit, instantly and without a fee. The same reference again moves nothing."""
    body: dict[str, Any] = {"organization": org, "from": source, "to": target, "amount": amount,
                            "reference": reference}
    if memo is not None:
        body["memo"] = memo
    data = _call(url, "POST", "/api/v1/transfers", body)["data"]
    if as_json:
        _print_json(data)
        return
    verb = "already transferred" if data["replayed"] else "transferred"
    console.print(f"{verb} ${_usd(data['amount'])} from {data['from']} to {data['to']} "
                  f"(reference {escape(data['reference'])})", soft_wrap=True)


# -- privacy ---------------------------------------------------------------------------------

WORKSPACE = typer.Option(None, "--workspace", metavar="ID",
                         help="A workspace's settings instead of the organization's.")


def _privacy_out(data: dict[str, Any], as_json: bool, where: str) -> None:
    if as_json:
        _print_json(data)
        return
    table = _table("setting", "value")
    for name, on in data.items():
        table.add_row(name, "on" if on else "off")
    console.print(f"privacy settings of {escape(where)}:")
    console.print(table)


@privacy.command("show")
def privacy_show(org: str = ORG, workspace: str = WORKSPACE, url: str = URL, as_json: bool = JSON) -> None:
    """The organization's privacy and prompt-logging settings (or one workspace's privacy)."""
    if workspace is None:
        data = _call(url, "GET", f"/api/v1/organization/settings?{query(org)}")["data"]
    else:
        data = _call(url, "GET", f"/api/v1/workspaces/{quote(workspace, safe='')}?{query(org)}")["data"]["settings"]
    _privacy_out(data, as_json, org if workspace is None else f"workspace {workspace}")


@privacy.command("set")
def privacy_set(org: str = ORG, deny_training: bool = DENY_TRAINING, deny_retention: bool = DENY_RETENTION,
                zdr_only: bool = ZDR_ONLY,
                logging: bool = typer.Option(None, "--logging/--no-logging", help="Keep prompts and completions "
                                             "(organization only; grants the logging discount)."),
                workspace: str = WORKSPACE, url: str = URL, as_json: bool = JSON) -> None:
    """Change privacy settings; the ones not named keep their value."""
    changes = _flags(deny_training=deny_training, deny_retention=deny_retention, zdr_only=zdr_only)
    if workspace is not None:
        if logging is not None:
            raise typer.BadParameter("prompt logging is an organization setting: drop --workspace",
                                     param_hint="--logging")
        if not changes:
            raise typer.BadParameter("nothing to change: give a privacy flag")
        path = f"/api/v1/workspaces/{quote(workspace, safe='')}"
        data = _call(url, "PATCH", path, {"organization": org, "settings": changes})["data"]["settings"]
    else:
        changes.update(_flags(logging=logging))
        if not changes:
            raise typer.BadParameter("nothing to change: give a privacy flag or --logging/--no-logging")
        data = _call(url, "PATCH", "/api/v1/organization/settings", {"organization": org, **changes})["data"]
    _privacy_out(data, as_json, org if workspace is None else f"workspace {workspace}")


# -- keys update (keys create is in manage.py) -----------------------------------------------

@keys.command("update")
def keys_update(key_hash: str = typer.Argument(..., metavar="HASH"),
                org: str = typer.Option(None, "--org", help="Organization name (optional for the operator)."),
                name: str = typer.Option(None, "--name", help="A new name."),
                limit: str = typer.Option(None, "--limit", help="Spending limit in USD, or \"none\"."),
                limit_reset: str = typer.Option(None, "--limit-reset", help="daily, weekly, monthly or none."),
                include_byok: bool = typer.Option(None, "--include-byok-in-limit/--exclude-byok-from-limit",
                                                  help="Whether the limit counts BYOK list-price cost."),
                expires_at: str = typer.Option(None, "--expires-at", help="UTC ISO time (…Z), or \"never\"."),
                enabled: bool = typer.Option(None, "--enable/--disable", help="Turn the key on or off."),
                rpm: str = typer.Option(None, "--rate-limit-rpm", help="Most requests a minute, or \"none\"."),
                tpm: str = typer.Option(None, "--rate-limit-tpm", help="Most tokens a minute, or \"none\"."),
                url: str = URL, as_json: bool = JSON) -> None:
    """Change a key's name, limit, reset period, BYOK counting, expiry, rate limits or state."""
    body: dict[str, Any] = {} if org is None else {"organization": org}
    for field, value, clear in (("name", name, None), ("limit", limit, "none"),
                                ("limit_reset", limit_reset, "none"), ("expires_at", expires_at, "never")):
        if value is not None:
            body[field] = None if clear is not None and value.lower() == clear else value
    for field, value in (("rate_limit_rpm", rpm), ("rate_limit_tpm", tpm)):
        if value is not None:
            if value.lower() != "none" and not value.isdigit():
                raise typer.BadParameter(f"--{field.replace('_', '-')} must be a whole number or none")
            body[field] = None if value.lower() == "none" else int(value)
    body.update(_flags(include_byok_in_limit=include_byok, disabled=None if enabled is None else not enabled))
    if not set(body) - {"organization"}:
        raise typer.BadParameter("nothing to change: give --name, --limit, --limit-reset, --expires-at, ...")
    data = _call(url, "PATCH", f"/api/v1/keys/{quote(key_hash, safe='')}", body)["data"]
    if as_json:
        _print_json(data)
        return
    limit_text = "no limit" if data["limit"] is None else (
        f"limit ${_usd(data['limit'])} {data['limit_reset'] or 'in total'} (left ${_usd(data['limit_remaining'])})")
    console.print(f"key [bold]{escape(data['name'])}[/] ({data['label']}): {limit_text}; "
                  f"{'disabled' if data['disabled'] else 'enabled'}; expires {_when(data['expires_at'])}",
                  soft_wrap=True)
