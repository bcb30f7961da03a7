"""Management commands. Each talks to a running server (--url, else FAREBOX_URL, else
http://127.0.0.1:8080) with the management key from FAREBOX_HOME or
FAREBOX_MANAGEMENT_KEY; `ledger verify --database` also works with the server down."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from farebox.cli.client import ClientError, call

console = Console()
err = Console(stderr=True)
orgs = typer.Typer(no_args_is_help=True)
keys = typer.Typer(no_args_is_help=True)
credits = typer.Typer(no_args_is_help=True)
ledger = typer.Typer(no_args_is_help=True)

URL = typer.Option(None, "--url", help="Server URL (default: FAREBOX_URL, else http://127.0.0.1:8080).")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


def _fail(e: ClientError) -> NoReturn:
    # The server's words verbatim: no markup read into "[...]", no wrapping at 80 columns.
    err.print(f"[red]error[/red] {escape(e.message)}" + (f" (HTTP {e.status})" if e.status else ""), soft_wrap=True)
    raise typer.Exit(1)


def _call(url: str | None, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    try:
        return call(url, method, path, body)[1]
    except ClientError as e:
        _fail(e)


def _print_json(data: Any) -> None:
    # USD amounts arrive as Decimal (exact); print them back as the JSON numbers they were.
    typer.echo(orjson.dumps(data, default=_decimal, option=orjson.OPT_INDENT_2).decode())


def _decimal(value: Any) -> orjson.Fragment:
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(type(value).__name__)


def _org_table(rows: list[dict[str, Any]]) -> Table:
    table = Table("id", "name", "balance (USD)", "available", "total credits", "total usage")
    for o in rows:
        table.add_row(str(o["id"]), o["name"], str(o["balance"]), str(o["available"]),
                      str(o["total_credits"]), str(o["total_usage"]))
    return table


@orgs.command("create")
def orgs_create(name: str, url: str = URL, as_json: bool = JSON) -> None:
    """Create an organization (with its default workspace and an empty wallet)."""
    data = _call(url, "POST", "/api/v1/organizations", {"name": name})["data"]
    _print_json(data) if as_json else console.print(f"created organization [bold]{data['name']}[/] (id {data['id']})")


@orgs.command("list")
def orgs_list(url: str = URL, as_json: bool = JSON) -> None:
    """List organizations with their balances."""
    data = _call(url, "GET", "/api/v1/organizations")["data"]
    _print_json(data) if as_json else console.print(_org_table(data))


@keys.command("create")
def keys_create(org: str = typer.Option(..., "--org", help="Organization name."),
                name: str = typer.Option(..., "--name", help="A name for the key."),
                limit: str = typer.Option(None, "--limit", help="Spending limit in USD, e.g. 25.00."),
                limit_reset: str = typer.Option(None, "--limit-reset", help="daily, weekly or monthly."),
                include_byok: bool = typer.Option(None, "--include-byok-in-limit", help="The limit also counts "
                                                  "BYOK list-price cost."),
                expires_at: str = typer.Option(None, "--expires-at", help="UTC ISO time, e.g. 2027-01-01T00:00:00Z."),
                workspace: int = typer.Option(None, "--workspace", metavar="ID", help="Its workspace (default: "
                                              "the default workspace)."),
                rpm: int = typer.Option(None, "--rate-limit-rpm", help="Most requests a minute."),
                tpm: int = typer.Option(None, "--rate-limit-tpm", help="Most tokens a minute."),
                url: str = URL, as_json: bool = JSON) -> None:
    """Create an API key. The key is shown once, here."""
    body: dict[str, Any] = {"organization": org, "name": name}
    for field, value in (("limit", limit), ("limit_reset", limit_reset), ("include_byok_in_limit", include_byok),
                         ("expires_at", expires_at), ("workspace_id", workspace), ("rate_limit_rpm", rpm),
                         ("rate_limit_tpm", tpm)):
        if value is not None:
            body[field] = value
    data = _call(url, "POST", "/api/v1/keys", body)
    if as_json:
        _print_json(data)
        return
    console.print(f"key [bold]{data['data']['name']}[/] hash {data['data']['hash']}")
    console.print(f"[bold green]{data['key']}[/]  (shown once; store it now)")


@keys.command("list")
def keys_list(org: str = typer.Option(..., "--org", help="Organization name."),
              include_disabled: bool = typer.Option(True, help="Include disabled keys."),
              url: str = URL, as_json: bool = JSON) -> None:
    """List an organization's keys."""
    path = f"/api/v1/keys?organization={quote(org)}&include_disabled={str(include_disabled).lower()}"
    data = _call(url, "GET", path)["data"]
    if as_json:
        _print_json(data)
        return
    table = Table("hash", "name", "label", "disabled", "limit", "usage")
    for k in data:
        table.add_row(k["hash"][:16] + "…", k["name"], k["label"], str(k["disabled"]),
                      "-" if k["limit"] is None else f"{k['limit']} ({k['limit_reset'] or 'total'})", str(k["usage"]))
    console.print(table)


@keys.command("disable")
def keys_disable(key_hash: str = typer.Argument(..., metavar="HASH"), url: str = URL) -> None:
    """Disable a key: it stops authenticating at once."""
    data = _call(url, "PATCH", f"/api/v1/keys/{key_hash}", {"disabled": True})["data"]
    console.print(f"disabled key [bold]{data['name']}[/] ({data['label']})")


@credits.command("grant")
def credits_grant(org: str = typer.Option(..., "--org", help="Organization name."),
                  amount: str = typer.Option(..., "--amount", help="USD, e.g. 25.00."),
                  reference: str = typer.Option(..., "--reference", help="Idempotency reference."),
                  memo: str = typer.Option(None, "--memo", help="A note kept with the entry."),
                  url: str = URL, as_json: bool = JSON) -> None:
    """Grant credits. Granting again with the same reference changes nothing."""
    body = {"amount": amount, "reference": reference, **({"memo": memo} if memo else {})}
    data = _call(url, "POST", f"/api/v1/organizations/{quote(org)}/credits", body)["data"]
    if as_json:
        _print_json(data)
        return
    verb = "already granted" if data["replayed"] else "granted"
    console.print(f"{verb} ${data['amount']} to {org} (reference {reference}); "
                  f"balance ${data['organization']['balance']}")


@credits.command("show")
def credits_show(org: str = typer.Option(..., "--org", help="Organization name."),
                 url: str = URL, as_json: bool = JSON) -> None:
    """Show an organization's balance."""
    data = _call(url, "GET", f"/api/v1/organizations/{quote(org)}")["data"]
    _print_json(data) if as_json else console.print(_org_table([data]))


def _table(*headers: str) -> Table:
    # Fold rather than cut: an id or a reference cut to "manua…" cannot be pasted back.
    table = Table()
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


@ledger.command("verify")
def ledger_verify(url: str = URL, as_json: bool = JSON,
                  database: Path = typer.Option(None, "--database", help="Check this SQLite file directly "
                                                "(works with the server stopped; skips the live checks).")) -> None:
    """Prove the books balance. Exits 1 on any violation."""
    if database is not None:
        from farebox.ledger.verify import verify_store
        from farebox.store.journal import journal_path, unapplied

        if not database.exists():
            err.print(f"[red]error[/red] {database}: no such file")
            raise typer.Exit(2)
        conn = sqlite3.connect(database, isolation_level=None)
        report = verify_store(conn).wire()
        # A gateway that died may have answered charges it had only journaled; they are
        # not in the database until the next start applies them (store/journal.py).
        journal = journal_path(database)
        pending = unapplied(conn, journal)
        conn.close()
        report["counts"]["journal_unapplied"] = len(pending)
        if pending:
            report["warnings"].append({"journal": str(journal), "unapplied": len(pending),
                                       "note": "answered charges not yet in the database; the next start applies"
                                               " them"})
    else:
        report = _call(url, "GET", "/api/v1/ledger/verify")["data"]
    if as_json:
        _print_json(report)
    else:
        table = _table("check", "violations")
        for check, count in report["checks"].items():
            table.add_row(check, "[green]0[/]" if not count else f"[red]{count}[/]")
        console.print(table)
        for v in report["violations"]:
            console.print(f"[red]violation[/red] {v}")
        for w in report["warnings"]:
            console.print(f"[yellow]warning[/yellow] {w}")
        console.print(f"counts: {report['counts']}")
        console.print("[bold green]ledger ok[/]" if report["ok"] else "[bold red]ledger has violations[/]")
    raise typer.Exit(0 if report["ok"] else 1)
