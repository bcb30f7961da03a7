"""Alert delivery against real servers: an aiosmtpd SMTP server and an aiohttp webhook
receiver, both on free ports in the test's own event loop (the port is the OS's choice, so
there is no window in which another process can take it)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import smtplib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date
from email import message_from_bytes
from email import policy as email_policy
from email.message import EmailMessage
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from farebox.billing.alerts import Alert, Threshold
from farebox.billing.notify import (
    DeliveryReport,
    Notifier,
    Outcome,
    SmtpSettings,
    sign,
    smtp_verdict,
    verify,
    webhook_verdict,
)
from farebox.clock import FakeClock

SECRET = b"whsec-test"
USD = 10**9
NOW = 1_767_225_600  # FakeClock's start, 2026-01-01T00:00:00Z


# -- signatures (pure) ----------------------------------------------------------------------------------------

def test_sign_follows_the_documented_scheme():
    mac = hmac.new(SECRET, b"1700000000." + b'{"a":1}', hashlib.sha256).hexdigest()
    assert sign(b'{"a":1}', SECRET, 1700000000) == f"t=1700000000,v1={mac}"


def test_verify_accepts_the_signed_body_within_tolerance_only():
    body = b'{"type":"balance.low"}'
    header = sign(body, SECRET, NOW)
    assert verify(body, header, SECRET, now=NOW)
    assert verify(body, header, SECRET, now=NOW + 300)
    assert verify(body, header, SECRET, now=NOW - 300)          # the sender's clock may run ahead
    assert not verify(body, header, SECRET, now=NOW + 301)      # too old: a replay
    assert not verify(body, header, SECRET, now=NOW - 301)
    assert verify(body, header, SECRET, now=NOW + 1000, tolerance_s=1000)
    assert not verify(body + b" ", header, SECRET, now=NOW)     # tampered body
    assert not verify(body, header, b"other", now=NOW)           # wrong secret
    forged_time = header.replace(f"t={NOW}", f"t={NOW + 100}")
    assert not verify(body, forged_time, SECRET, now=NOW + 100)  # the timestamp is signed too


def test_verify_takes_any_matching_v1_and_refuses_malformed_headers():
    body = b"{}"
    good = sign(body, SECRET, NOW)
    mac = good.split("v1=")[1]
    assert verify(body, f"t={NOW},v1={'0' * 64},v1={mac}", SECRET, now=NOW)
    assert verify(body, f" v1={mac} , t={NOW} ", SECRET, now=NOW)
    for header in ["", "garbage", f"t={NOW}", f"v1={mac}", f"t=abc,v1={mac}", f"t=-{NOW},v1={mac}",
                   f"t=²,v1={mac}", f"t={NOW},v1=é{mac[1:]}", f"t={NOW},v1="]:
        assert not verify(body, header, SECRET, now=NOW), header


# -- verdicts (pure) ------------------------------------------------------------------------------------------

def test_webhook_statuses():
    assert [webhook_verdict(s) for s in (200, 202, 204, 299)] == ["delivered"] * 4
    assert [webhook_verdict(s) for s in (408, 429, 500, 502, 503, 504)] == ["retry"] * 6
    assert [webhook_verdict(s) for s in (301, 302, 400, 401, 403, 404, 410, 422)] == ["give_up"] * 8


def test_smtp_errors():
    assert smtp_verdict(smtplib.SMTPSenderRefused(451, b"try later", "a@b"))[0] == "retry"
    assert smtp_verdict(smtplib.SMTPDataError(554, b"rejected")) == ("give_up", "554 rejected")
    assert smtp_verdict(smtplib.SMTPAuthenticationError(535, b"bad credentials"))[0] == "give_up"
    assert smtp_verdict(smtplib.SMTPNotSupportedError("STARTTLS extension not supported"))[0] == "give_up"
    assert smtp_verdict(ssl.SSLCertVerificationError("self-signed"))[0] == "give_up"
    assert smtp_verdict(smtplib.SMTPServerDisconnected("gone"))[0] == "retry"
    assert smtp_verdict(ConnectionRefusedError(111, "refused"))[0] == "retry"
    assert smtp_verdict(TimeoutError())[0] == "retry"


# -- real servers ---------------------------------------------------------------------------------------------

@dataclass
class MailBox:
    """An aiosmtpd handler that keeps what it receives, refusing the addresses in `refuse`."""
    refuse: dict[str, str] = field(default_factory=dict)
    envelopes: list[Envelope] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if address in self.refuse:
            return self.refuse[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted"

    def authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                     data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        ok = data == LoginPassword(b"farebox", b"s3cret")
        if ok:
            self.logins.append(data.login.decode())
        return AuthResult(success=ok, handled=False)  # not handled: the server answers 535 itself


def received(envelope: Envelope) -> EmailMessage:
    assert isinstance(envelope.content, bytes)
    message = message_from_bytes(envelope.content, policy=email_policy.default)
    assert isinstance(message, EmailMessage)
    return message


def text_of(message: EmailMessage) -> str:
    """The plain-text body with the wire's CRLF line ends back to the "\\n" it was written with."""
    return message.get_content().replace("\r\n", "\n")


@asynccontextmanager
async def smtp_server(box: MailBox, **smtp_options: Any) -> AsyncIterator[int]:
    server = await asyncio.get_running_loop().create_server(lambda: SMTP(box, **smtp_options), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


@dataclass
class Receiver:
    """A webhook endpoint answering with `statuses` in turn (the last one from then on)."""
    statuses: list[int] = field(default_factory=lambda: [200])
    delay_s: float = 0.0
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        await asyncio.sleep(self.delay_s)
        return web.Response(status=self.statuses[min(len(self.requests), len(self.statuses)) - 1])


@asynccontextmanager
async def webhook_server(receiver: Receiver) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    finally:
        await runner.cleanup()


def closed_port() -> int:
    """A port nothing listens on: connections to it are refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def notifier(smtp: SmtpSettings | None = None, **options: Any) -> AsyncIterator[tuple[Notifier, FakeClock]]:
    clock = FakeClock()
    async with aiohttp.ClientSession() as session:
        yield Notifier(smtp, SECRET, lambda: session, clock, **{"backoff_s": 0.01, **options}), clock


def an_alert(emails: tuple[str, ...] = (), webhooks: tuple[str, ...] = ()) -> Alert:
    threshold = Threshold("warning", 20 * USD, emails=emails, webhooks=webhooks)
    return Alert(7, "Acme Corp", threshold, 19_500_000_001, 3_250_000_000, date(2026, 1, 7), NOW * 1000)


def run(scenario: Callable[[], Any]) -> Any:
    return asyncio.run(scenario())


def test_the_alert_email_reaches_a_real_smtp_server():
    box = MailBox()
    alert = an_alert(emails=("ops@acme.test", "cfo@acme.test"))

    async def scenario() -> DeliveryReport:
        async with smtp_server(box) as port, notifier(SmtpSettings("127.0.0.1", port, "alerts@farebox.test")) as (n, _):
            return await n.deliver(alert)

    report = run(scenario)
    assert report.delivered and report.event_id == alert.id
    assert report.outcomes == (Outcome("email", "ops@acme.test", True, 1, ""),
                               Outcome("email", "cfo@acme.test", True, 1, ""))
    [envelope] = box.envelopes                  # one message, every recipient in To
    assert envelope.mail_from == "alerts@farebox.test"
    assert envelope.rcpt_tos == ["ops@acme.test", "cfo@acme.test"]
    message = received(envelope)
    assert message["Subject"] == alert.subject()
    assert message["To"] == "ops@acme.test, cfo@acme.test"
    assert message["From"] == "alerts@farebox.test"
    assert message["Message-ID"] == f"<{alert.id}@farebox.test>"
    assert message["Date"] == "Thu, 01 Jan 2026 00:00:00 +0000"   # the clock's time, not the wall's
    assert message["Auto-Submitted"] == "auto-generated"
    body = text_of(message)
    assert body == alert.text()
    for part in ("Acme Corp", "warning", "$19.500000001", "$3.25", "2026-01-07", "auto top-up"):
        assert part in body


def test_smtp_login_is_used_when_a_username_is_set():
    box = MailBox()

    async def scenario() -> DeliveryReport:
        async with smtp_server(box, authenticator=box.authenticate, auth_require_tls=False) as port:
            settings = SmtpSettings("127.0.0.1", port, "alerts@farebox.test", username="farebox", password="s3cret")
            async with notifier(settings) as (n, _):
                return await n.deliver(an_alert(emails=("ops@acme.test",)))

    assert run(scenario).delivered
    assert box.logins == ["farebox"] and len(box.envelopes) == 1


def test_wrong_smtp_credentials_are_reported_without_retrying():
    box = MailBox()

    async def scenario() -> DeliveryReport:
        async with smtp_server(box, authenticator=box.authenticate, auth_require_tls=False) as port:
            settings = SmtpSettings("127.0.0.1", port, "alerts@farebox.test", username="farebox", password="wrong")
            async with notifier(settings) as (n, _):
                return await n.deliver(an_alert(emails=("ops@acme.test",)))

    [failure] = run(scenario).failures
    assert failure.attempts == 1 and failure.detail.startswith("535")
    assert box.envelopes == []


def test_starttls_asked_of_a_server_without_it_fails_rather_than_sending_in_clear():
    box = MailBox()

    async def scenario() -> DeliveryReport:
        async with (smtp_server(box) as port,
                    notifier(SmtpSettings("127.0.0.1", port, "a@f.test", starttls=True)) as (n, _)):
            return await n.deliver(an_alert(emails=("ops@acme.test",)))

    [failure] = run(scenario).failures
    assert failure.attempts == 1 and "STARTTLS" in failure.detail
    assert box.envelopes == []


def test_recipients_the_server_refuses_are_reported_and_the_others_get_the_mail():
    box = MailBox(refuse={"gone@acme.test": "550 No such user"})

    async def scenario() -> DeliveryReport:
        async with smtp_server(box) as port, notifier(SmtpSettings("127.0.0.1", port, "a@f.test")) as (n, _):
            return await n.deliver(an_alert(emails=("ops@acme.test", "gone@acme.test")))

    report = run(scenario)
    assert report.outcomes == (Outcome("email", "ops@acme.test", True, 1, ""),
                               Outcome("email", "gone@acme.test", False, 1, "550 No such user"))
    assert len(box.envelopes) == 1 and box.envelopes[0].rcpt_tos == ["ops@acme.test"]


def test_recipients_refused_for_now_are_retried():
    box = MailBox(refuse={"ops@acme.test": "450 Mailbox busy"})

    async def scenario() -> DeliveryReport:
        async with smtp_server(box) as port, notifier(SmtpSettings("127.0.0.1", port, "a@f.test"), retries=2) as (n, _):
            return await n.deliver(an_alert(emails=("ops@acme.test",)))

    assert run(scenario).outcomes == (Outcome("email", "ops@acme.test", False, 3, "450 Mailbox busy"),)


def test_an_unreachable_smtp_server_is_reported_not_raised():
    async def scenario() -> DeliveryReport:
        async with notifier(SmtpSettings("127.0.0.1", closed_port(), "a@f.test", timeout_s=2), retries=2) as (n, _):
            return await n.deliver(an_alert(emails=("ops@acme.test",)))

    [failure] = run(scenario).failures
    assert failure.channel == "email" and failure.attempts == 3
    assert "ConnectionRefusedError" in failure.detail


def test_emails_without_an_smtp_server_configured_are_reported():
    async def scenario() -> DeliveryReport:
        async with notifier(None) as (n, _):
            return await n.deliver(an_alert(emails=("ops@acme.test",)))

    assert run(scenario).outcomes == (Outcome("email", "ops@acme.test", False, 0, "no SMTP server is configured"),)


def test_the_webhook_gets_a_signed_post_that_verify_accepts():
    receiver = Receiver()
    alert = an_alert()   # the same alert, whatever its delivery targets: they are not part of its id or payload

    async def scenario() -> DeliveryReport:
        async with webhook_server(receiver) as url, notifier() as (n, _):
            return await n.deliver(an_alert(webhooks=(url,)))

    report = run(scenario)
    assert report.delivered and report.outcomes[0].attempts == 1
    [(headers, body)] = receiver.requests
    assert headers["Content-Type"] == "application/json"
    assert headers["Farebox-Event-Id"] == report.event_id == alert.id
    assert headers["Farebox-Signature"].startswith(f"t={NOW},v1=")
    assert verify(body, headers["Farebox-Signature"], SECRET, now=NOW + 10)
    assert not verify(body.replace(b"19.500000001", b"99.500000001"), headers["Farebox-Signature"], SECRET, now=NOW)
    assert not verify(body, headers["Farebox-Signature"], SECRET, now=NOW + 301)
    payload = orjson.loads(body)
    assert payload == alert.payload()
    assert payload["id"] == alert.id and payload["type"] == "balance.low"
    assert payload["balance"] == "19.500000001" and payload["avg_daily_spend"] == "3.25"
    assert payload["runs_out_on"] == "2026-01-07"


def test_a_failing_webhook_is_retried_until_it_succeeds_with_the_same_event_id():
    receiver = Receiver(statuses=[500, 503, 200])

    async def scenario() -> DeliveryReport:
        async with webhook_server(receiver) as url, notifier(retries=3) as (n, _):
            return await n.deliver(an_alert(webhooks=(url,)))

    report = run(scenario)
    assert report.outcomes[0].delivered and report.outcomes[0].attempts == 3
    assert len({headers["Farebox-Event-Id"] for headers, _ in receiver.requests}) == 1
    assert len({body for _, body in receiver.requests}) == 1   # the same body: receivers can dedupe it


def test_retries_are_bounded():
    receiver = Receiver(statuses=[429])

    async def scenario() -> DeliveryReport:
        async with webhook_server(receiver) as url, notifier(retries=2) as (n, _):
            return await n.deliver(an_alert(webhooks=(url,)))

    [failure] = run(scenario).failures
    assert (failure.attempts, failure.detail) == (3, "HTTP 429") and len(receiver.requests) == 3


def test_a_400_is_not_retried():
    receiver = Receiver(statuses=[400, 200])

    async def scenario() -> DeliveryReport:
        async with webhook_server(receiver) as url, notifier(retries=3) as (n, _):
            return await n.deliver(an_alert(webhooks=(url,)))

    [failure] = run(scenario).failures
    assert (failure.attempts, failure.detail) == (1, "HTTP 400") and len(receiver.requests) == 1


def test_a_hanging_receiver_is_cut_off_by_the_attempt_timeout():
    receiver = Receiver(delay_s=5)

    async def scenario() -> DeliveryReport:
        async with webhook_server(receiver) as url, notifier(retries=1, attempt_timeout_s=0.2) as (n, _):
            return await n.deliver(an_alert(webhooks=(url,)))

    started = time.monotonic()
    [failure] = run(scenario).failures
    assert time.monotonic() - started < 3
    assert failure.attempts == 2 and "Timeout" in failure.detail


def test_unreachable_and_invalid_webhook_urls_are_reported_not_raised():
    refused = f"http://127.0.0.1:{closed_port()}/hook"

    async def scenario() -> DeliveryReport:
        async with notifier(retries=1) as (n, _):
            return await n.deliver(an_alert(webhooks=(refused, "not a url")))

    unreachable, invalid = run(scenario).outcomes
    assert not unreachable.delivered and unreachable.attempts == 2
    assert not invalid.delivered and invalid.attempts == 1


def test_email_and_webhooks_are_all_delivered_and_one_failure_does_not_stop_the_others():
    box = MailBox()
    ok, broken = Receiver(), Receiver(statuses=[404])

    async def scenario() -> DeliveryReport:
        async with (smtp_server(box) as port, webhook_server(ok) as ok_url, webhook_server(broken) as broken_url,
                    notifier(SmtpSettings("127.0.0.1", port, "a@f.test")) as (n, _)):
            return await n.deliver(an_alert(emails=("ops@acme.test",), webhooks=(broken_url, ok_url)))

    report = run(scenario)
    assert [(o.channel, o.delivered) for o in report.outcomes] == [
        ("email", True), ("webhook", False), ("webhook", True)]
    assert len(box.envelopes) == 1 and len(ok.requests) == 1


def test_send_event_carries_other_events_such_as_a_failed_auto_top_up():
    box = MailBox()
    receiver = Receiver()
    data = {"org": {"id": 7, "name": "Acme Corp"}, "amount": "50", "reason": "card_declined"}

    async def scenario() -> DeliveryReport:
        async with (smtp_server(box) as port, webhook_server(receiver) as url,
                    notifier(SmtpSettings("127.0.0.1", port, "a@f.test")) as (n, clock)):
            clock.advance(90)
            return await n.send_event("auto_topup.failed", data, ["ops@acme.test"], [url],
                                      subject="Farebox: auto top-up failed\nfor Acme Corp",
                                      text="The card was declined.\n")

    report = run(scenario)
    assert report.delivered
    [(headers, body)] = receiver.requests
    assert verify(body, headers["Farebox-Signature"], SECRET, now=NOW + 90)
    assert orjson.loads(body) == {"id": report.event_id, "type": "auto_topup.failed",
                                  "created_at": "2026-01-01T00:01:30.000Z", **data}
    message = received(box.envelopes[0])
    assert message["Subject"] == "Farebox: auto top-up failed for Acme Corp"   # a newline cannot start a header
    assert text_of(message) == "The card was declined.\n"
