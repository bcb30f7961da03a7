"""Low-balance alerts and statements, end to end (issue 5, points 6 and 7): a real gateway
spends through real chat requests, sends its alerts to a real SMTP server (aiosmtpd) and a
real webhook receiver (aiohttp), both started here, and serves statements as CSV."""

from __future__ import annotations

import csv
import datetime as dt
import email
import email.policy
import io
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from email.message import EmailMessage
from typing import Any

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller

from farebox.billing import notify
from tests.e2e.conftest import client
from tests.e2e.procs import Gateway, http, member_token
from tests.simthread import running_sim

SECRET = "whsec_test_alerts"
DELIVERY_WAIT_S = 30       # a deadline for polling, never a measurement: waits end as soon as the mail is in
DAY_MS = 86_400_000
NANO = Decimal("0.000000001")


# -- the recipients: a real SMTP server and a real webhook receiver ------------------------------

@dataclass
class Inbox:
    """What the SMTP server and the webhook receiver got, appended from their own threads."""

    emails: list[EmailMessage] = field(default_factory=list)
    envelopes: list[tuple[str, list[str]]] = field(default_factory=list)
    hooks: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)
    smtp_port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def emails_for(self, threshold: str) -> list[EmailMessage]:
        # The subject names the threshold ("Farebox warning: ..."), the recipients differ per threshold.
        with self.lock:
            return [m for m in self.emails if m["Subject"].startswith(f"Farebox {threshold}:")]

    def hooks_for(self, threshold: str) -> list[tuple[bytes, dict[str, str]]]:
        with self.lock:
            return [(b, h) for b, h in self.hooks
                    if json.loads(b).get("threshold", {}).get("name") == threshold]

    def wait(self, threshold: str, count: int) -> None:
        """Poll until `count` emails and `count` webhooks for `threshold` are in, or fail at the deadline."""
        deadline = time.monotonic() + DELIVERY_WAIT_S
        while time.monotonic() < deadline:
            if len(self.emails_for(threshold)) >= count and len(self.hooks_for(threshold)) >= count:
                return
            time.sleep(0.02)
        raise AssertionError(f"{threshold}: wanted {count} email(s) and webhook(s), got "
                             f"{len(self.emails_for(threshold))} and {len(self.hooks_for(threshold))}")


class _Recorder:
    """aiosmtpd handler: keeps every message it accepts."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self.inbox.lock:
            self.inbox.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self.inbox.emails.append(message)  # type: ignore[arg-type]
        return "250 OK"


def _free_port() -> int:
    # aiosmtpd 1.4 cannot bind port 0 (it connects to the port it was given to check it is up).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    box = Inbox()
    controller = Controller(_Recorder(box), hostname="127.0.0.1", port=_free_port())
    controller.start()
    box.smtp_port = controller.port
    try:
        yield box
    finally:
        controller.stop()


@pytest.fixture
def hook_url(inbox: Inbox) -> Iterator[str]:
    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        with inbox.lock:
            inbox.hooks.append((body, dict(request.headers)))
        return web.Response(status=204)

    async def start() -> tuple[web.AppRunner, int]:
        app = web.Application()
        app.router.add_post("/{tail:.*}", receive)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, runner.addresses[0][1]

    with running_sim(start) as base:
        yield f"{base}/hooks/farebox"


@pytest.fixture
def alerting(make_gateway: Callable[..., Gateway], inbox: Inbox, hook_url: str) -> Gateway:
    return make_gateway(smtp_host="127.0.0.1", smtp_port=inbox.smtp_port,
                        alert_webhook_secret=SECRET, alert_retry_s=0.01)


# -- helpers ---------------------------------------------------------------------------------------

def spend(gw: Gateway, key: str, output_tokens: int) -> str:
    """One real chat request that writes `output_tokens` tokens (a simulator directive), so it costs
    about output_tokens x $0.0000006; returns its generation id."""
    response = client(gw, key).chat.completions.create(
        model="sim/small", messages=[{"role": "user", "content": f"[[sim output_tokens={output_tokens}]] go on"}],
        extra_body={"max_tokens": output_tokens})
    assert response.usage is not None and response.usage.completion_tokens == output_tokens
    return response.id


def put_alerts(gw: Gateway, org: str, thresholds: Any) -> tuple[int, Any]:
    status, body, _ = http("PUT", f"{gw.api}/credits/alerts", {"organization": org, "thresholds": thresholds},
                           gw.management_key)
    return status, body


def recipients(gw: Gateway, org: str, *emails: str) -> None:
    """Alert recipients are members: make each email a (viewer) member of `org`."""
    for address in emails:
        gw.admin("POST", "/organization/members", {"organization": org, "email": address,
                                                   "password": "alerts-only-1", "role": "viewer"})


def get_alerts(gw: Gateway, org: str) -> list[dict[str, Any]]:
    status, body, _ = http("GET", f"{gw.api}/credits/alerts?organization={org}", key=gw.management_key)
    assert status == 200, body
    return body["data"]["thresholds"]


def armed(gw: Gateway, org: str) -> dict[str, bool]:
    return {t["name"]: t["armed"] for t in get_alerts(gw, org)}


def grant(gw: Gateway, org: str, amount: str, reference: str) -> None:
    gw.admin("POST", f"/organizations/{org}/credits", {"amount": amount, "reference": reference})


def nanos(usd: Decimal | str) -> int:
    value = Decimal(usd) / NANO
    assert value == value.to_integral_value(), usd
    return int(value)


def runs_out_on(balance: int, average: int, at_ms: int) -> str:
    """The UTC date a balance reaches zero at `average` a day, from `at_ms` (ceil to the millisecond),
    worked out here independently of the product's code."""
    ms_left = -(-balance * DAY_MS // average)
    return (dt.date(1970, 1, 1) + dt.timedelta(days=(at_ms + ms_left) // DAY_MS)).isoformat()


def iso_ms(text: str) -> int:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)


# -- 1. one alert per downward crossing ------------------------------------------------------------

def test_each_threshold_alerts_once_by_email_and_signed_webhook(alerting: Gateway, inbox: Inbox, hook_url: str):
    gw = alerting
    gw.org("acme", "5.00")
    key, _ = gw.key("acme")
    recipients(gw, "acme", "warn@acme.example", "oncall@acme.example", "cfo@acme.example")
    status, body = put_alerts(gw, "acme", [
        {"name": "warning", "below": "4.9999", "emails": ["warn@acme.example"], "webhooks": [hook_url]},
        {"name": "urgent", "below": "4.98", "emails": ["oncall@acme.example", "cfo@acme.example"],
         "webhooks": [hook_url]}])
    assert status == 200, body
    assert [(t["name"], t["below"], t["armed"]) for t in body["data"]["thresholds"]] == [
        ("warning", Decimal("4.9999"), True), ("urgent", Decimal("4.98"), True)]

    # One request of 1,000 output tokens (~$0.0006) takes $5.00 below $4.9999, and not below $4.98.
    spend(gw, key, 1000)
    balance = gw.balance("acme")
    assert Decimal("4.98") <= balance < Decimal("4.9999")
    inbox.wait("warning", 1)
    assert armed(gw, "acme") == {"warning": False, "urgent": True}

    [(raw, headers)] = inbox.hooks_for("warning")
    assert notify.verify(raw, headers["Farebox-Signature"], SECRET.encode(), now=int(time.time()))
    assert not notify.verify(raw + b" ", headers["Farebox-Signature"], SECRET.encode(), now=int(time.time()))
    hook = json.loads(raw, parse_float=Decimal)
    assert headers["Farebox-Event-Id"] == hook["id"]
    assert hook["type"] == "balance.low" and hook["org"]["name"] == "acme"
    assert hook["threshold"] == {"name": "warning", "below": "4.9999"}
    assert Decimal(hook["balance"]) == balance
    # A new organization's average is over the one day it has existed: all it spent, today.
    spent = 5 - balance
    assert Decimal(hook["avg_daily_spend"]) == spent
    expected_date = runs_out_on(nanos(balance), nanos(spent), iso_ms(hook["created_at"]))
    assert hook["runs_out_on"] == expected_date

    [mail] = inbox.emails_for("warning")
    assert mail["To"] == "warn@acme.example"
    text = mail.get_content()
    assert f"Average daily spend: ${spent}" in text
    assert f"Projected run-out date: {expected_date}" in text
    assert f"Balance: ${balance}" in text

    # More spending below $4.9999 (still above $4.98) sends nothing more for "warning" ...
    spend(gw, key, 1000)
    spend(gw, key, 1000)
    assert gw.balance("acme") >= Decimal("4.98")
    assert armed(gw, "acme") == {"warning": False, "urgent": True}
    # ... and crossing $4.98 sends exactly one "urgent", one message to both of its addresses. Its
    # arrival is the barrier: a repeated "warning" from the requests above would have been sent first.
    while gw.balance("acme") >= Decimal("4.98"):
        spend(gw, key, 10000)
    inbox.wait("urgent", 1)
    spend(gw, key, 1000)   # below both now: still nothing new
    spend(gw, key, 1000)
    assert armed(gw, "acme") == {"warning": False, "urgent": False}
    grant(gw, "acme", "0.000000001", "barrier-up")   # not enough to re-arm either threshold
    spend(gw, key, 1000)
    gw.wait_idle()
    assert len(inbox.emails_for("warning")) == len(inbox.hooks_for("warning")) == 1
    assert len(inbox.emails_for("urgent")) == len(inbox.hooks_for("urgent")) == 1
    [urgent] = inbox.emails_for("urgent")
    assert sorted(a.addr_spec for a in urgent["To"].addresses) == ["cfo@acme.example", "oncall@acme.example"]
    urgent_rcpts = [rcpts for _, rcpts in inbox.envelopes if "oncall@acme.example" in rcpts]
    assert urgent_rcpts == [["oncall@acme.example", "cfo@acme.example"]]
    urgent_hook = json.loads(inbox.hooks_for("urgent")[0][0])
    assert urgent_hook["threshold"]["below"] == "4.98" and Decimal(urgent_hook["balance"]) < Decimal("4.98")
    assert urgent_hook["id"] != hook["id"]


def test_an_alert_skips_recipients_no_longer_members(alerting: Gateway, inbox: Inbox, hook_url: str):
    """Recipients are checked when the alert goes out, not only when the thresholds were saved."""
    gw = alerting
    gw.org("bravo", "5.00")
    key, _ = gw.key("bravo")
    recipients(gw, "bravo", "stays@bravo.example", "leaves@bravo.example")
    status, body = put_alerts(gw, "bravo", [{"name": "warning", "below": "4.9999",
                                             "emails": ["stays@bravo.example", "leaves@bravo.example"],
                                             "webhooks": [hook_url]}])
    assert status == 200, body
    members = gw.admin("GET", "/organization/members?organization=bravo")["data"]
    leaving = next(m["id"] for m in members if m["email"] == "leaves@bravo.example")
    gw.admin("DELETE", f"/organization/members/{leaving}?organization=bravo")
    spend(gw, key, 1000)
    inbox.wait("warning", 1)
    [mail] = inbox.emails_for("warning")
    assert [a.addr_spec for a in mail["To"].addresses] == ["stays@bravo.example"]
    assert not any("leaves@bravo.example" in rcpts for _, rcpts in inbox.envelopes)


# -- 2. re-arming ---------------------------------------------------------------------------------

def test_a_threshold_rearms_when_the_balance_rises_above_it(alerting: Gateway, inbox: Inbox, hook_url: str):
    gw = alerting
    gw.org("rearm", "5.00")
    key, _ = gw.key("rearm")
    recipients(gw, "rearm", "ops@rearm.example")
    status, body = put_alerts(gw, "rearm", [{"name": "low", "below": "4.99", "emails": ["ops@rearm.example"],
                                             "webhooks": [hook_url]}])
    assert status == 200, body

    while gw.balance("rearm") >= Decimal("4.99"):   # ~$0.006 a request
        spend(gw, key, 10000)
    inbox.wait("low", 1)
    assert armed(gw, "rearm") == {"low": False}

    # A grant that leaves the balance below the threshold does not re-arm it ...
    short = Decimal("4.99") - gw.balance("rearm") - NANO
    grant(gw, "rearm", str(short), "almost")
    assert gw.balance("rearm") == Decimal("4.99") - NANO
    assert armed(gw, "rearm") == {"low": False}
    spend(gw, key, 10)
    # ... one that lifts it above does.
    grant(gw, "rearm", "0.05", "lift")
    assert gw.balance("rearm") > Decimal("4.99")
    assert armed(gw, "rearm") == {"low": True}
    assert len(inbox.emails_for("low")) == len(inbox.hooks_for("low")) == 1

    while gw.balance("rearm") >= Decimal("4.99"):
        spend(gw, key, 10000)
    inbox.wait("low", 2)
    spend(gw, key, 10000)
    gw.wait_idle()
    assert armed(gw, "rearm") == {"low": False}
    assert len(inbox.emails_for("low")) == len(inbox.hooks_for("low")) == 2
    first, second = (json.loads(b, parse_float=Decimal) for b, _ in inbox.hooks_for("low"))
    assert first["id"] != second["id"]
    assert Decimal(second["balance"]) < Decimal("4.99") and second["threshold"]["below"] == "4.99"
    for raw, headers in inbox.hooks_for("low"):
        assert notify.verify(raw, headers["Farebox-Signature"], SECRET.encode(), now=int(time.time()))


# -- 3. validation ------------------------------------------------------------------------------------

BAD_THRESHOLDS: list[tuple[str, Any]] = [
    ("not a list", {"name": "warning", "below": "1"}),
    ("a string", "warning"),
    ("duplicate names", [{"name": "a", "below": "2"}, {"name": "a", "below": "1"}]),
    ("negative below", [{"name": "a", "below": "-1"}]),
    ("malformed below", [{"name": "a", "below": "one dollar"}]),
    ("below with more than nano precision", [{"name": "a", "below": "1.0000000001"}]),
    ("missing below", [{"name": "a"}]),
    ("email without @", [{"name": "a", "below": "1", "emails": ["ops.example.com"]}]),
    ("webhook not http(s)", [{"name": "a", "below": "1", "webhooks": ["ftp://hooks.example/x"]}]),
    ("webhook without a scheme", [{"name": "a", "below": "1", "webhooks": ["hooks.example/x"]}]),
    ("name missing", [{"below": "1"}]),
    ("second threshold bad", [{"name": "a", "below": "1"}, {"name": "b", "below": "-1"}]),
    ("emails not a list", [{"name": "a", "below": "1", "emails": "ops@example.com"}]),
    ("email of no member", [{"name": "a", "below": "1", "emails": ["stranger@example.com"]}]),
    ("email of a disabled member", [{"name": "a", "below": "1", "emails": ["gone@example.com"]}]),
]


@pytest.mark.parametrize(("case", "thresholds"), BAD_THRESHOLDS, ids=[c for c, _ in BAD_THRESHOLDS])
def test_bad_thresholds_are_refused_and_change_nothing(gateway: Gateway, org_name: str, case: str,
                                                       thresholds: Any):
    gw = gateway
    gw.org(org_name, "1.00")
    recipients(gw, org_name, "ops@example.com", "gone@example.com")
    [gone] = [m for m in gw.admin("GET", f"/organization/members?organization={org_name}")["data"]
              if m["email"] == "gone@example.com"]
    gw.admin("PATCH", f"/organization/members/{gone['id']}", {"organization": org_name, "disabled": True})
    good = [{"name": "warning", "below": "0.5", "emails": ["ops@example.com"],
             "webhooks": ["https://hooks.example/farebox"]}]
    assert put_alerts(gw, org_name, good)[0] == 200
    before = get_alerts(gw, org_name)

    status, body = put_alerts(gw, org_name, thresholds)
    assert status == 400, (case, body)
    assert body["error"]["code"] == 400 and isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert get_alerts(gw, org_name) == before

    # Through an admin's session too (no `organization` needed, and the same answer) ...
    admin = member_token(gw, org_name, "admin")
    status, body, _ = http("PUT", f"{gw.api}/credits/alerts", {"thresholds": thresholds}, admin)
    assert status == 400 and body["error"]["code"] == 400
    assert get_alerts(gw, org_name) == before
    # ... while the organization's API key may not change alerts at all, valid or not.
    key, _ = gw.key(org_name)
    for attempt in (thresholds, good):
        status, body, _ = http("PUT", f"{gw.api}/credits/alerts", {"thresholds": attempt}, key)
        assert status == 403 and body["error"]["metadata"]["required"] == "credits.write", body
    assert get_alerts(gw, org_name) == before


# -- 4. statements -----------------------------------------------------------------------------------

def statement(gw: Gateway, key: str, query: str) -> tuple[int, Any, dict[str, str]]:
    """(status, body, headers with lower-case names)."""
    status, body, headers = http("GET", f"{gw.api}/credits/statement.csv?{query}", key=key)
    return status, body, {k.lower(): v for k, v in headers.items()}


def test_statement_accounts_for_every_movement(gateway: Gateway, org_name: str):
    gw = gateway
    gw.org(org_name, "2.00")
    key, _ = gw.key(org_name)
    generations = [spend(gw, key, 100), spend(gw, key, 2000)]
    grant(gw, org_name, "0.123456789", f"{org_name}-second")
    generations.append(spend(gw, key, 500))
    gw.wait_idle()
    today = dt.datetime.now(dt.UTC).date().isoformat()
    # The statement covers the whole organization's wallet: an API key (limited to its
    # workspace) may not read it; an owner may.
    status, body, _ = statement(gw, key, f"from={today}&to={today}")
    assert status == 403, body
    key = member_token(gw, org_name, "owner")

    status, body, headers = statement(gw, key, f"from={today}&to={today}")
    assert status == 200, body
    assert headers["content-type"].startswith("text/csv")
    assert isinstance(body, str), body
    rows = list(csv.DictReader(io.StringIO(body)))
    assert list(rows[0]) == ["date", "kind", "description", "model", "generation_id", "key", "reference",
                             "amount_usd", "balance_usd"]
    opening, *movements, closing = rows
    assert opening["kind"] == "opening balance" and closing["kind"] == "closing balance"
    assert opening["date"] == f"{today}T00:00:00.000Z"
    assert Decimal(opening["balance_usd"]) == 0   # the organization was made today

    charges = [r for r in movements if r["kind"] == "charge"]
    assert [r["generation_id"] for r in charges] == generations
    assert all(r["model"] == "sim/small" for r in charges)
    assert all(Decimal(r["amount_usd"]) < 0 for r in charges)
    assert sorted(Decimal(r["amount_usd"]) for r in movements if r["kind"] == "grant") == [
        Decimal("0.123456789"), Decimal("2")]

    total = sum((Decimal(r["amount_usd"]) for r in movements), Decimal(0))
    assert Decimal(opening["balance_usd"]) + total == Decimal(closing["balance_usd"]) == gw.balance(org_name)
    running = Decimal(opening["balance_usd"])
    for row in movements:   # every row's running balance, exactly
        running += Decimal(row["amount_usd"])
        assert Decimal(row["balance_usd"]) == running, row

    for query in ("from=yesterday", "from=2026-13-01", f"from={today}&to=not-a-date"):
        status, err, _ = statement(gw, key, query)
        assert status == 400 and err["error"]["code"] == 400, (query, err)


def test_a_member_reads_only_its_own_organizations_statement(gateway: Gateway, org_name: str):
    gw = gateway
    a, b = f"{org_name}-a", f"{org_name}-b"
    gw.org(a, "1.00")
    gw.org(b, "7.00")
    key_a = member_token(gw, a, "viewer")
    key_b, _ = gw.key(b)
    secret_b = spend(gw, key_b, 50)
    gw.wait_idle()
    today = dt.datetime.now(dt.UTC).date().isoformat()

    def closing_and_generations(key: str, query: str) -> tuple[Decimal, str, set[str]]:
        status, body, headers = statement(gw, key, query)
        assert status == 200, body
        rows = list(csv.DictReader(io.StringIO(body)))
        return (Decimal(rows[-1]["balance_usd"]), headers["content-disposition"],
                {r["generation_id"] for r in rows if r["generation_id"]})

    own = closing_and_generations(key_a, f"from={today}&to={today}")
    assert own[0] == Decimal("1") and a in own[1] and own[2] == set()
    for query in (f"from={today}&to={today}&organization={b}", f"organization={b}"):
        # Naming another organization answers exactly as for one that does not exist.
        status, body, _ = statement(gw, key_a, query)
        assert status == 404 and body["error"]["message"] == f"No organization named {b!r}", body
        assert secret_b not in json.dumps(body)
        status, missing, _ = statement(gw, key_a, query.replace(f"organization={b}", "organization=no-such-org"))
        assert status == 404 and missing["error"]["message"] == "No organization named 'no-such-org'"
    # The management key naming B does get B's.
    closing, disposition, gens = closing_and_generations(gw.management_key, f"from={today}&to={today}&organization={b}")
    assert closing == gw.balance(b) and secret_b in gens and f"statement-{b}-" in disposition
