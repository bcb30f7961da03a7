"""`farebox credits ...` beyond grant and show (issue 5): buying, lots, purchases, refunds,
auto top-up, alerts, invoices and statements. Each command acts on one organization
through the HTTP API, with the management key, like the rest of `cli/manage.py`."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import typer
from rich.markup import escape

from farebox.cli.client import ClientError, management_key, query, server_url
from farebox.cli.manage import JSON, URL, _call, _fail, _print_json, _table, console, credits, err

# -- credits (issue 5): each command acts on one organization through the HTTP API ------------

ORG = typer.Option(..., "--org", help="Organization name.")


def _usd(value: Any) -> str:
    """An amount as the exact decimal the server sent: never a float, never 1E-8."""
    return "-" if value is None else format(Decimal(value), "f")


def _when(iso: str | None) -> str:
    """A timestamp to the minute for tables (UTC); --json keeps the full one."""
    return "never" if iso is None else iso[:16].replace("T", " ")





def _download(url: str | None, path: str) -> bytes:
    """GET raw bytes (an invoice, a statement) with the management key; `call` is JSON-only.
    Errors arrive as the API's JSON error, like everywhere else."""
    try:
        request = urllib.request.Request(server_url(url) + path)
        request.add_header("Authorization", f"Bearer {management_key()}")
        with urllib.request.urlopen(request, timeout=60) as response:
            body: bytes = response.read()
            return body
    except ClientError as e:
        _fail(e)
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = str(e.reason)
        _fail(ClientError(e.code, message))
    except urllib.error.URLError as e:
        _fail(ClientError(0, f"Cannot reach Farebox at {server_url(url)}: {e.reason}"))


def _write(data: bytes, out: Path | None, what: str) -> None:
    if out is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        out.write_bytes(data)
    except OSError as e:
        err.print(f"[red]error[/red] cannot write {escape(str(out))}: {escape(e.strerror or str(e))}", soft_wrap=True)
        raise typer.Exit(1) from None
    err.print(f"wrote {what} to {escape(str(out))} ({len(data)} bytes)", soft_wrap=True)


def _quote_line(q: dict[str, Any]) -> str:
    tax = f" + tax ${_usd(q['tax'])}" if q["tax"] else ""
    return (f"${_usd(q['credits'])} of credits by {q['method']}: fee ${_usd(q['fee'])}{tax}, "
            f"charged ${_usd(q['charged'])}; bonus ${_usd(q['bonus'])}, credited ${_usd(q['credited'])}")


@credits.command("packages")
def credits_packages(org: str = typer.Option(None, "--org", help="Organization name (packages are the same "
                                             "for all; accepted for symmetry)."),
                     url: str = URL, as_json: bool = JSON) -> None:
    """The credit packages with their bonuses, the fees per payment method, and the limits."""
    data = _call(url, "GET", f"/api/v1/credits/packages?{query(org)}")["data"]
    if as_json:
        _print_json(data)
        return
    table = _table("amount (USD)", "bonus %", "bonus (USD)")
    for p in data["packages"]:
        table.add_row(_usd(p["amount"]), p["bonus_percent"], _usd(p["bonus"]))
    console.print(table)
    for method, rule in data["fees"].items():
        console.print(f"fee {method}: {rule['percent']}% (minimum ${_usd(rule['minimum'])})")
    console.print(f"purchase between ${_usd(data['minimum'])} and ${_usd(data['maximum'])}; "
                  f"tax {data['tax_percent'] + '%' if data['tax_percent'] else 'none'}; card payments "
                  f"{'available' if data['card_payments'] else 'not configured'}")


@credits.command("quote")
def credits_quote(amount: str = typer.Option(..., "--amount", help="Credits to buy, USD, e.g. 50."),
                  method: str = typer.Option("card", "--method", help="card, bank or crypto."),
                  org: str = typer.Option(None, "--org", help="Organization name (a quote is the same for all)."),
                  url: str = URL, as_json: bool = JSON) -> None:
    """What buying that many credits charges and brings (fee, tax, bonus), before paying."""
    data = _call(url, "GET", f"/api/v1/credits/quote?{query(org, amount=amount, method=method)}")["data"]
    _print_json(data) if as_json else console.print(_quote_line(data))


@credits.command("buy")
def credits_buy(org: str = ORG, amount: str = typer.Option(..., "--amount", help="Credits to buy, USD, e.g. 50."),
                save_card: bool = typer.Option(True, "--save-card/--no-save-card",
                                               help="Keep the card for auto top-up."),
                success_url: str = typer.Option(None, "--success-url", help="Where Checkout returns after paying."),
                cancel_url: str = typer.Option(None, "--cancel-url", help="Where Checkout returns on cancel."),
                url: str = URL, as_json: bool = JSON) -> None:
    """Start a Stripe Checkout for credits; prints the URL to pay at. Credited once paid."""
    body: dict[str, Any] = {"organization": org, "amount": amount, "save_card": save_card}
    if success_url is not None:
        body["success_url"] = success_url
    if cancel_url is not None:
        body["cancel_url"] = cancel_url
    data = _call(url, "POST", "/api/v1/credits/checkout", body)["data"]
    if as_json:
        _print_json(data)
        return
    console.print(f"purchase {data['purchase_id']}: {_quote_line(data)}")
    console.print("pay at:")
    typer.echo(data["url"])   # plain, unwrapped: it is meant to be copied


@credits.command("record")
def credits_record(org: str = ORG, amount: str = typer.Option(..., "--amount", help="Credits paid for, USD."),
                   method: str = typer.Option(..., "--method", help="bank or crypto."),
                   reference: str = typer.Option(..., "--reference", help="The payment's reference (idempotency)."),
                   url: str = URL, as_json: bool = JSON) -> None:
    """Record a bank transfer or crypto payment received outside Stripe. Recording the same
    reference again changes nothing."""
    body = {"amount": amount, "method": method, "reference": reference}
    data = _call(url, "POST", f"/api/v1/organizations/{quote(org, safe='')}/purchases", body)["data"]
    if as_json:
        _print_json(data)
        return
    verb = "already recorded" if data["replayed"] else "recorded"
    console.print(f"{verb} for {escape(org)} (reference {escape(reference)}): {_quote_line(data)}; "
                  f"balance ${_usd(data['organization']['balance'])}", soft_wrap=True)


@credits.command("lots")
def credits_lots(org: str = ORG,
                 everything: bool = typer.Option(False, "--all", help="Include spent and expired lots."),
                 url: str = URL, as_json: bool = JSON) -> None:
    """The lots credit is drawn from, in draw order (promotional first, soonest expiry first)."""
    data = _call(url, "GET", f"/api/v1/credits/lots?{query(org, all='1' if everything else None)}")["data"]
    if as_json:
        _print_json(data)
        return
    table = _table("id", "kind", "amount (USD)", "remaining", "created", "expires", "purchase")
    for lot in data:
        table.add_row(str(lot["id"]), lot["kind"], _usd(lot["amount"]), _usd(lot["remaining"]),
                      _when(lot["created_at"]), _when(lot["expires_at"]), escape(lot["purchase_id"] or "-"))
    console.print(table)


@credits.command("purchases")
def credits_purchases(org: str = ORG, url: str = URL, as_json: bool = JSON) -> None:
    """Purchases (card, bank, crypto, top-ups) with their invoices and refunds."""
    data = _call(url, "GET", f"/api/v1/credits/purchases?{query(org)}")["data"]
    if as_json:
        _print_json(data)
        return
    table = _table("id", "method", "credits (USD)", "fee", "bonus", "reference", "created", "invoice", "refund")
    for p in data:
        refund = p["refund"]
        state = (f"{refund['status']} ${_usd(refund['amount'])}" if refund
                 else "refundable" if p["refundable"] else "-")
        table.add_row(escape(p["id"]), p["method"], _usd(p["credits"]), _usd(p["fee"]), _usd(p["bonus"]),
                      escape(p["reference"] or "-"), _when(p["created_at"]), p["invoice"] or "-", state)
    console.print(table)


@credits.command("refund")
def credits_refund(purchase_id: str = typer.Argument(..., metavar="PURCHASE_ID"), org: str = ORG,
                   url: str = URL, as_json: bool = JSON) -> None:
    """Refund a card purchase's unused credits (within the refund window; the fee stays, the
    bonus is forfeited). Asking again reports the same refund."""
    data = _call(url, "POST", f"/api/v1/credits/purchases/{quote(purchase_id, safe='')}/refund",
                 {"organization": org})["data"]
    if as_json:
        _print_json(data)
        return
    console.print(f"refund of ${_usd(data['amount'])} for {escape(data['purchase_id'])}: {data['status']}; "
                  f"bonus forfeited ${_usd(data['bonus_forfeited'])}", soft_wrap=True)


def _print_topup(data: dict[str, Any]) -> None:
    state = "enabled" if data["enabled"] else "disabled"
    terms = ("no terms set" if data["threshold"] is None or data["amount"] is None
             else f"below ${_usd(data['threshold'])} buy ${_usd(data['amount'])}")
    console.print(f"auto top-up {state}: {terms}; "
                  f"card saved: {'yes' if data['card_saved'] else 'no'}"
                  + (f"; disabled because: {escape(data['disabled_reason'])}" if data["disabled_reason"] else "")
                  + ("; a top-up is running" if data["running"] else ""), soft_wrap=True)


@credits.command("topup")
def credits_topup(org: str = ORG,
                  enabled: bool = typer.Option(None, "--enable/--disable", help="Turn auto top-up on or off."),
                  threshold: str = typer.Option(None, "--threshold", help="Top up when the balance falls below, USD."),
                  amount: str = typer.Option(None, "--amount", help="Credits each top-up buys, USD."),
                  url: str = URL, as_json: bool = JSON) -> None:
    """Show auto top-up, or change it with any of the options (the others keep their value).
    Enabling needs a card saved by an earlier `buy`."""
    if enabled is None and threshold is None and amount is None:
        data = _call(url, "GET", f"/api/v1/credits/auto-topup?{query(org)}")["data"]
    else:
        body: dict[str, Any] = {"organization": org}
        for name, value in (("enabled", enabled), ("threshold", threshold), ("amount", amount)):
            if value is not None:
                body[name] = value
        data = _call(url, "PUT", "/api/v1/credits/auto-topup", body)["data"]
    _print_json(data) if as_json else _print_topup(data)


@credits.command("topups")
def credits_topups(org: str = ORG, url: str = URL, as_json: bool = JSON) -> None:
    """Auto top-up history, newest first."""
    data = _call(url, "GET", f"/api/v1/credits/topups?{query(org)}")["data"]
    if as_json:
        _print_json(data)
        return
    table = _table("id", "status", "credits (USD)", "fee", "bonus", "tax", "attempts", "created", "error")
    for t in data:
        table.add_row(str(t["id"]), t["status"], _usd(t["credits"]), _usd(t["fee"]), _usd(t["bonus"]), _usd(t["tax"]),
                      str(t["attempts"]), _when(t["created_at"]), escape(t["error"] or "-"))
    console.print(table)


def _pairs(values: list[str], option: str) -> list[tuple[str, str]]:
    out = []
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise typer.BadParameter(f"expected NAME=VALUE, got {value!r}", param_hint=option)
        out.append((name, rest))
    return out


@credits.command("alerts")
def credits_alerts(org: str = ORG,
                   thresholds: list[str] = typer.Option(None, "--set", metavar="NAME=USD",
                                                        help="A threshold: alert when the balance falls below USD. "
                                                        "Repeat for several; replaces all thresholds."),
                   emails: list[str] = typer.Option(None, "--email", metavar="NAME=ADDRESS",
                                                    help="Email this address when NAME fires (repeatable)."),
                   webhooks: list[str] = typer.Option(None, "--webhook", metavar="NAME=URL",
                                                      help="Post a signed webhook here when NAME fires (repeatable)."),
                   clear: bool = typer.Option(False, "--clear", help="Remove every threshold."),
                   url: str = URL, as_json: bool = JSON) -> None:
    """Show low-balance alerts, or replace them all (--set ... or --clear). Example:

    --set warning=20 --email warning=ops@example.com --set urgent=5 --webhook urgent=https://hooks.example.com/x"""
    thresholds, emails, webhooks = thresholds or [], emails or [], webhooks or []
    if clear and (thresholds or emails or webhooks):
        raise typer.BadParameter("--clear replaces every threshold with none; give it alone", param_hint="--clear")
    if not thresholds and (emails or webhooks):
        raise typer.BadParameter("name the thresholds with --set: the new list replaces the old one",
                                 param_hint="--set")
    if not clear and not thresholds:
        data = _call(url, "GET", f"/api/v1/credits/alerts?{query(org)}")["data"]
    else:
        items: dict[str, dict[str, Any]] = {}
        for name, below in _pairs(thresholds, "--set"):
            if name in items:
                raise typer.BadParameter(f"threshold {name!r} given twice", param_hint="--set")
            items[name] = {"name": name, "below": below, "emails": [], "webhooks": []}
        for field, option, values in (("emails", "--email", emails), ("webhooks", "--webhook", webhooks)):
            for name, recipient in _pairs(values, option):
                if name not in items:
                    raise typer.BadParameter(f"no --set {name}=USD for {option} {name}={recipient}", param_hint=option)
                items[name][field].append(recipient)
        data = _call(url, "PUT", "/api/v1/credits/alerts", {"organization": org, "thresholds": list(items.values())})
        data = data["data"]
    if as_json:
        _print_json(data)
        return
    if not data["thresholds"]:
        console.print("no low-balance alerts")
        return
    table = _table("name", "below (USD)", "emails", "webhooks", "armed")
    for t in data["thresholds"]:
        table.add_row(escape(t["name"]), _usd(t["below"]), escape(", ".join(t["emails"]) or "-"),
                      escape(", ".join(t["webhooks"]) or "-"), "yes" if t["armed"] else "no (fired)")
    console.print(table)


@credits.command("invoices")
def credits_invoices(org: str = ORG, url: str = URL, as_json: bool = JSON) -> None:
    """Invoices, one per purchase and top-up; download one with `farebox credits invoice N`."""
    data = _call(url, "GET", f"/api/v1/credits/invoices?{query(org)}")["data"]
    if as_json:
        _print_json(data)
        return
    table = _table("n", "number", "purchase", "issued", "paid (USD)", "credited", "payment method")
    for i in data:
        table.add_row(str(i["id"]), i["number"], escape(i["purchase_id"]), _when(i["issued_at"]), _usd(i["paid"]),
                      _usd(i["credited"]), i["payment_method"])
    console.print(table)


@credits.command("invoice")
def credits_invoice(number: int = typer.Argument(..., metavar="N", help="The invoice's n (see `invoices`)."),
                    org: str = ORG,
                    pdf: Path = typer.Option(None, "--pdf", metavar="FILE", help="Write the PDF here."),
                    html: Path = typer.Option(None, "--html", metavar="FILE", help="Write the HTML here."),
                    url: str = URL) -> None:
    """Download an invoice: --pdf FILE and/or --html FILE; with neither, the HTML to stdout."""
    for fmt, out in (("pdf", pdf), ("html", html)):
        if out is not None or (fmt == "html" and pdf is None):
            _write(_download(url, f"/api/v1/credits/invoices/{number}.{fmt}?{query(org)}"), out, f"invoice {number}")


@credits.command("statement")
def credits_statement(org: str = ORG,
                      start: str = typer.Option(None, "--from", metavar="YYYY-MM-DD",
                                                help="First day (UTC; default: 30 days before --to)."),
                      end: str = typer.Option(None, "--to", metavar="YYYY-MM-DD", help="Last day, included "
                                              "(UTC; default: today)."),
                      out: Path = typer.Option(None, "--out", metavar="FILE", help="Write the CSV here, not stdout."),
                      url: str = URL) -> None:
    """Every movement of the balance in a period, with opening and closing balances, as CSV."""
    path = f"/api/v1/credits/statement.csv?{query(org, **{'from': start, 'to': end})}"
    _write(_download(url, path), out, "statement")
