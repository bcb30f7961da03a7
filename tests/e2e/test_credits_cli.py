"""`farebox credits ...` against a real gateway: each command runs as its own `python -m
farebox` process and reaches the server over HTTP with the management key, as an operator's
shell would. Amounts are compared exactly (Decimal), and errors must carry the server's
message and exit 1."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from farebox.sim.stripe import start as start_fake_stripe
from tests.e2e.procs import Gateway, http
from tests.simthread import running_sim

WEBHOOK_SECRET = "whsec_cli_test"


def cli(gw: Gateway, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FAREBOX_MANAGEMENT_KEY=gw.management_key, COLUMNS="300")
    env.pop("FAREBOX_URL", None)   # --url, not the environment, names the server
    return subprocess.run([sys.executable, "-m", "farebox", "credits", *args, "--url", gw.url], env=env,
                          capture_output=True, text=True, timeout=60)


def ok(gw: Gateway, *args: str) -> str:
    out = cli(gw, *args)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def as_json(gw: Gateway, *args: str) -> Any:
    return json.loads(ok(gw, *args, "--json"), parse_float=Decimal)


def fails(gw: Gateway, *args: str) -> str:
    """Runs a command that must fail as the server refused it: exit 1, the message on stderr."""
    out = cli(gw, *args)
    assert out.returncode == 1, (args, out.stdout, out.stderr)
    assert out.stdout == "", out.stdout
    return out.stderr


def test_packages_and_quotes_are_exact(gateway: Gateway) -> None:
    data = as_json(gateway, "packages")
    assert [(p["amount"], Decimal(p["bonus_percent"])) for p in data["packages"]] == [
        (10, 0), (25, 0), (50, 10), (100, 15), (250, 20), (500, 25)]
    assert data["fees"]["card"] == {"percent": "5.5", "minimum": Decimal("0.8")}
    assert data["card_payments"] is False
    table = ok(gateway, "packages")
    assert "fee card: 5.5% (minimum $0.8)" in table and "card payments not configured" in table

    quote = as_json(gateway, "quote", "--amount", "50")
    assert quote == {"method": "card", "credits": 50, "fee": Decimal("2.75"), "bonus": 5, "tax": 0,
                     "charged": Decimal("52.75"), "credited": 55}
    # The minimum card fee ($0.80) applies to $10; crypto pays 5%.
    assert "fee $0.8, charged $10.8; bonus $0, credited $10" in ok(gateway, "quote", "--amount", "10")
    assert as_json(gateway, "quote", "--amount", "100", "--method", "crypto")["fee"] == 5


def test_a_bad_amount_exits_1_with_the_servers_message(gateway: Gateway, org_name: str) -> None:
    gateway.org(org_name)
    assert "amount is not a decimal number: 'abc'" in fails(gateway, "quote", "--amount", "abc")
    assert "amount must be more than zero" in fails(gateway, "record", "--org", org_name, "--amount", "0",
                                                    "--method", "bank", "--reference", "zero")
    assert "method must be bank or crypto" in fails(gateway, "record", "--org", org_name, "--amount", "50",
                                                    "--method", "card", "--reference", "card")
    assert "No organization named 'no-such-org' (HTTP 404)" in fails(gateway, "lots", "--org", "no-such-org")
    assert gateway.balance(org_name) == 0


def test_buy_without_stripe_exits_1_with_not_configured(gateway: Gateway, org_name: str) -> None:
    gateway.org(org_name)
    err = fails(gateway, "buy", "--org", org_name, "--amount", "50")
    assert "Card payments are not configured on this Farebox (set stripe_secret_key)" in err
    assert as_json(gateway, "purchases", "--org", org_name) == []


def test_a_recorded_bank_transfer_shows_in_purchases_lots_invoices_and_statement(
        gateway: Gateway, org_name: str, tmp_path: Path) -> None:
    gw = gateway
    gw.org(org_name)
    args = ("record", "--org", org_name, "--amount", "100", "--method", "bank", "--reference", "wire-42")
    line = ok(gw, *args)
    assert line.startswith(f"recorded for {org_name} (reference wire-42): $100 of credits by bank: fee $0")
    assert "bonus $15, credited $115; balance $115" in line
    assert ok(gw, *args).startswith("already recorded")   # idempotent on the reference
    assert gw.balance(org_name) == 115

    [purchase] = as_json(gw, "purchases", "--org", org_name)
    assert (purchase["method"], purchase["credits"], purchase["fee"], purchase["bonus"]) == ("bank", 100, 0, 15)
    assert purchase["reference"] == "wire-42" and purchase["refundable"] is False
    assert purchase["id"] in ok(gw, "purchases", "--org", org_name)
    # Only card purchases are refunded through the rail: the server says so, nothing moves.
    assert "Only card purchases are refunded" in fails(gw, "refund", purchase["id"], "--org", org_name)
    assert gw.balance(org_name) == 115

    lots = as_json(gw, "lots", "--org", org_name)
    assert sorted((lot["kind"], lot["amount"], lot["remaining"]) for lot in lots) == [
        ("bonus", 15, 15), ("purchase", 100, 100)]
    assert {lot["purchase_id"] for lot in lots} == {purchase["id"]}
    assert as_json(gw, "lots", "--org", org_name, "--all") == lots   # nothing spent or expired yet
    assert "bonus" in ok(gw, "lots", "--org", org_name)

    [invoice] = as_json(gw, "invoices", "--org", org_name)
    assert invoice["purchase_id"] == purchase["id"] and invoice["number"] == purchase["invoice"]
    assert invoice["paid"] == 100 and invoice["credited"] == 115
    assert invoice["number"] in ok(gw, "invoices", "--org", org_name)

    pdf, page = tmp_path / "invoice.pdf", tmp_path / "invoice.html"
    ok(gw, "invoice", str(invoice["id"]), "--org", org_name, "--pdf", str(pdf), "--html", str(page))
    assert pdf.read_bytes().startswith(b"%PDF")
    assert invoice["number"] in page.read_text()
    assert invoice["number"] in ok(gw, "invoice", str(invoice["id"]), "--org", org_name)   # HTML to stdout
    assert "Invoice 999999 not found" in fails(gw, "invoice", "999999", "--org", org_name)

    today = dt.datetime.now(dt.UTC).date()
    period = ("--from", str(today - dt.timedelta(days=1)), "--to", str(today + dt.timedelta(days=1)))
    out = tmp_path / "statement.csv"
    ok(gw, "statement", "--org", org_name, *period, "--out", str(out))
    text = out.read_bytes().decode("utf-8")
    assert text.startswith("date,kind,") and text.endswith("\r\n")   # RFC 4180 lines, written as sent
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert [(r["kind"], r["amount_usd"]) for r in rows[1:-1]] == [("purchase", "100"), ("bonus", "15")]
    assert rows[0]["kind"] == "opening balance" and rows[0]["balance_usd"] == "0"
    assert rows[-1]["kind"] == "closing balance" and rows[-1]["balance_usd"] == "115"
    # Without --out, the same CSV on stdout (read here in text mode, so with \n line ends).
    assert ok(gw, "statement", "--org", org_name, *period) == text.replace("\r\n", "\n")
    assert "from must not be after to" in fails(gw, "statement", "--org", org_name, "--from", "2026-02-01",
                                                "--to", "2026-01-01")


def test_auto_topup_shows_and_refuses_without_a_saved_card(gateway: Gateway, org_name: str) -> None:
    gateway.org(org_name)
    shown = as_json(gateway, "topup", "--org", org_name)
    assert shown["enabled"] is False and shown["card_saved"] is False
    assert "auto top-up disabled" in ok(gateway, "topup", "--org", org_name)
    err = fails(gateway, "topup", "--org", org_name, "--enable", "--threshold", "10", "--amount", "50")
    assert "Save a card first" in err
    # Terms can be stored while disabled; what was not given keeps its value.
    assert as_json(gateway, "topup", "--org", org_name, "--threshold", "10", "--amount", "50") == {
        **shown, "threshold": 10, "amount": 50}
    assert as_json(gateway, "topup", "--org", org_name, "--threshold", "12.5")["amount"] == 50
    assert as_json(gateway, "topups", "--org", org_name) == []


def test_alerts_set_show_and_clear(gateway: Gateway, org_name: str) -> None:
    gateway.org(org_name)
    for address in ("ops@example.com", "cfo@example.com"):   # alert recipients are members
        gateway.admin("POST", "/organization/members", {"organization": org_name, "email": address,
                                                        "password": "alerts-only-1", "role": "viewer"})
    assert "no low-balance alerts" in ok(gateway, "alerts", "--org", org_name)
    set_ = as_json(gateway, "alerts", "--org", org_name, "--set", "warning=20", "--set", "urgent=0.000000001",
                   "--email", "warning=ops@example.com", "--email", "warning=cfo@example.com",
                   "--webhook", "urgent=https://hooks.example.com/farebox")
    expected = [{"name": "warning", "below": 20, "emails": ["ops@example.com", "cfo@example.com"], "webhooks": [],
                 "armed": True},
                {"name": "urgent", "below": Decimal("0.000000001"), "emails": [],
                 "webhooks": ["https://hooks.example.com/farebox"], "armed": True}]
    assert set_["thresholds"] == expected
    assert as_json(gateway, "alerts", "--org", org_name)["thresholds"] == expected
    table = ok(gateway, "alerts", "--org", org_name)
    assert "ops@example.com, cfo@example.com" in table and "0.000000001" in table   # exact, not 1E-9

    # The server validates; its message comes back verbatim ("thresholds[0]" is not markup).
    err = fails(gateway, "alerts", "--org", org_name, "--set", "warning=twenty")
    assert "thresholds[0].below" in err
    err = fails(gateway, "alerts", "--org", org_name, "--set", "warning=20", "--email", "warning=stranger@example.com")
    assert "stranger@example.com is not the email of an active member" in err
    # A recipient for a threshold not being set is the user's mistake: a usage error, nothing sent.
    usage = cli(gateway, "alerts", "--org", org_name, "--set", "warning=20", "--email", "urgnet=ops@example.com")
    assert usage.returncode == 2 and "urgnet" in usage.stderr
    assert as_json(gateway, "alerts", "--org", org_name)["thresholds"] == expected

    assert as_json(gateway, "alerts", "--org", org_name, "--clear") == {"thresholds": []}


# -- with Stripe: buy through Checkout, then refund --------------------------------------------

@pytest.fixture
def stripe_url() -> Iterator[str]:
    with running_sim(lambda: start_fake_stripe(port=0)) as url:
        yield url


def test_buy_pay_enable_topup_and_refund(make_gateway: Any, stripe_url: str, org_name: str) -> None:
    gw = make_gateway(stripe_secret_key="sk_test_cli", stripe_webhook_secret=WEBHOOK_SECRET,
                      stripe_api_base=stripe_url)
    status, _, _ = http("POST", f"{stripe_url}/_fake/webhooks",
                        {"url": f"{gw.api}/stripe/webhook", "secret": WEBHOOK_SECRET})
    assert status < 300
    gw.org(org_name)

    out = ok(gw, "buy", "--org", org_name, "--amount", "50")
    assert "$50 of credits by card: fee $2.75, charged $52.75; bonus $5, credited $55" in out
    checkout_url = out.strip().splitlines()[-1]
    assert checkout_url.startswith(stripe_url)
    started = as_json(gw, "buy", "--org", org_name, "--amount", "50", "--no-save-card")   # a second, left unpaid
    assert started["charged"] == Decimal("52.75") and started["url"] != checkout_url
    # Pay the first Checkout only; the fake delivers the signed events before it answers.
    session = checkout_url.rstrip("/").rsplit("/", 1)[-1]
    status, paid, _ = http("POST", f"{stripe_url}/_fake/checkout/sessions/{session}/complete", {})
    assert status == 200, paid
    assert gw.balance(org_name) == 55

    [purchase] = as_json(gw, "purchases", "--org", org_name)
    assert purchase["method"] == "card" and purchase["refundable"] is True and purchase["id"] != started["purchase_id"]
    assert "refundable" in ok(gw, "purchases", "--org", org_name)

    enabled = as_json(gw, "topup", "--org", org_name, "--enable", "--threshold", "10", "--amount", "25")
    assert enabled["enabled"] is True and enabled["card_saved"] is True and enabled["threshold"] == 10
    assert "auto top-up enabled: below $10 buy $25; card saved: yes" in ok(gw, "topup", "--org", org_name)
    assert as_json(gw, "topup", "--org", org_name, "--disable")["enabled"] is False  # so the refund buys nothing

    refunded = as_json(gw, "refund", purchase["id"], "--org", org_name)
    assert refunded["purchase_id"] == purchase["id"]
    assert refunded["amount"] == 50 and refunded["bonus_forfeited"] == 5
    again = ok(gw, "refund", purchase["id"], "--org", org_name)   # idempotent: the same refund, reported again
    assert f"refund of $50 for {purchase['id']}" in again
    assert gw.balance(org_name) == 0
    [after] = as_json(gw, "purchases", "--org", org_name)
    assert after["refund"]["amount"] == 50 and after["refundable"] is False
    assert as_json(gw, "topups", "--org", org_name) == []
