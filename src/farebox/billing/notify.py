"""Delivering alerts and other account events: email over SMTP and signed webhooks.

Delivery never raises: a failure is retried with exponential backoff, then reported in the
`DeliveryReport` and logged, because an alert is a side effect of a charge and must not
break it. Time is bounded: at most `retries + 1` attempts per target, each limited by a
timeout (`attempt_timeout_s` per webhook POST, the SMTP socket timeout per SMTP step), with
`backoff_s * (2**retries - 1)` seconds of sleep in between.

Webhooks are signed like Stripe's: `Farebox-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256
of "<t>." + body>`, so a receiver checks both authenticity and freshness with `verify`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import smtplib
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import TYPE_CHECKING, Any, Literal

import orjson

from farebox.billing.alerts import Alert, event_id, iso_utc, one_line
from farebox.clock import Clock

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger("farebox.billing")

Verdict = Literal["delivered", "retry", "give_up"]


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    sender: str            # the From address
    username: str = ""     # empty: no AUTH
    password: str = ""
    starttls: bool = False  # when set, a server without STARTTLS is a failure, never a cleartext fallback
    timeout_s: float = 10


@dataclass(frozen=True, slots=True)
class Outcome:
    channel: Literal["email", "webhook"]
    target: str            # the email address or webhook URL
    delivered: bool
    attempts: int          # 0: never tried (e.g. no SMTP configured)
    detail: str            # why it failed (the last attempt's error), "" when delivered


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    event_id: str
    outcomes: tuple[Outcome, ...]   # emails first, then webhooks, each in the order given

    @property
    def delivered(self) -> bool:
        return all(o.delivered for o in self.outcomes)

    @property
    def failures(self) -> tuple[Outcome, ...]:
        return tuple(o for o in self.outcomes if not o.delivered)


@dataclass(frozen=True, slots=True)
class _Try:
    verdict: Verdict
    detail: str = ""
    refused: Mapping[str, str] = field(default_factory=dict)  # email: address -> the server's refusal


def sign(body: bytes, secret: bytes, timestamp: int) -> str:
    """The `Farebox-Signature` header value for `body` sent at `timestamp` (Unix seconds)."""
    return f"t={timestamp},v1={_mac(body, secret, timestamp)}"


def verify(body: bytes, header: str, secret: bytes, *, now: int, tolerance_s: int = 300) -> bool:
    """True when `header` signs exactly `body` with `secret` at a time within `tolerance_s` of
    `now` (either side: clocks differ). A receiver should also drop repeated `Farebox-Event-Id`s,
    since a signature stays valid for the whole tolerance. Several `v1` values may be given (a
    sender rotating secrets); one match is enough. Malformed headers are False, never an error."""
    timestamp = ""
    signatures: list[bytes] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            timestamp = value
        elif key == "v1":
            signatures.append(value.encode())
    if not (timestamp.isascii() and timestamp.isdigit()) or not signatures:
        return False
    sent_at = int(timestamp)
    if abs(now - sent_at) > tolerance_s:
        return False
    expected = _mac(body, secret, sent_at).encode()
    return any(hmac.compare_digest(expected, s) for s in signatures)


def _mac(body: bytes, secret: bytes, timestamp: int) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def webhook_verdict(status: int) -> Verdict:
    """2xx is delivered. 408 and 429 say "later", and 5xx may be passing, so they are retried.
    Other 4xx will answer the same again; so will a 3xx (redirects are not followed: a webhook
    URL that moved must be updated, not chased)."""
    if 200 <= status < 300:
        return "delivered"
    if status in (408, 429) or status >= 500:
        return "retry"
    return "give_up"


def smtp_verdict(error: OSError) -> tuple[Verdict, str]:
    """A failed SMTP exchange: 4xx replies and transport trouble (refused connection, timeout,
    disconnect) may pass, 5xx replies and a missing STARTTLS/AUTH or a bad certificate will not."""
    if isinstance(error, smtplib.SMTPResponseException):
        reply = error.smtp_error
        text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
        return ("retry" if 400 <= error.smtp_code < 500 else "give_up"), f"{error.smtp_code} {text}"
    if isinstance(error, smtplib.SMTPNotSupportedError | ssl.SSLCertVerificationError):
        return "give_up", _describe(error)
    return "retry", _describe(error)


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _send_mail(settings: SmtpSettings, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
    """Blocking: one SMTP session sending `message`; returns the recipients the server refused
    while accepting the others (all refused raises SMTPRecipientsRefused)."""
    with smtplib.SMTP(settings.host, settings.port, timeout=settings.timeout_s) as smtp:
        if settings.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if settings.username:
            smtp.login(settings.username, settings.password)
        return smtp.send_message(message)


def _refusals(recipients: Mapping[str, tuple[int, bytes]]) -> dict[str, str]:
    return {address: f"{code} {reply.decode(errors='replace')}" for address, (code, reply) in recipients.items()}


class Notifier:
    """Sends alerts to their threshold's recipients. `session` returns the caller's HTTP session
    (which the caller closes); it is asked for only when a webhook is posted, so a server that
    sends none never imports aiohttp (issue 7: start-up time and memory).

    Email is ONE message with every recipient in To, not one per recipient: the recipients all
    belong to the same organization, seeing who else was told is useful to them, it is one SMTP
    transaction, and mail clients thread it once. The server's per-recipient refusals are still
    reported per address. A message accepted for some recipients is not retried for the refused
    ones, since resending it would duplicate it for the others."""

    def __init__(self, smtp: SmtpSettings | None, webhook_secret: bytes, session: Callable[[], aiohttp.ClientSession], clock: Clock,
                 retries: int = 3, backoff_s: float = 1.0, *, attempt_timeout_s: float = 10.0) -> None:
        assert webhook_secret, "webhooks must be signed with a non-empty secret"
        assert retries >= 0 and backoff_s >= 0 and attempt_timeout_s > 0
        self._smtp = smtp
        self._secret = webhook_secret
        self._session = session
        self._clock = clock
        self._retries = retries
        self._backoff_s = backoff_s
        self._attempt_timeout_s = attempt_timeout_s

    async def deliver(self, alert: Alert) -> DeliveryReport:
        """Email every address of the alert's threshold and POST `alert.payload()` to every webhook."""
        threshold = alert.threshold
        return await self._send(alert.id, alert.subject(), alert.text(), alert.payload(),
                                threshold.emails, threshold.webhooks)

    async def send_event(self, kind: str, data: Mapping[str, Any], emails: Sequence[str], webhooks: Sequence[str],
                         *, subject: str, text: str) -> DeliveryReport:
        """Any other account event (e.g. kind "auto_topup.failed"): the webhook body is `data` with
        `id`, `type` (= kind) and `created_at` added; the email is `subject` and `text`. The id is
        derived from kind, data and the current time, so it is the same on every retry of this call."""
        assert not {"id", "type", "created_at"} & data.keys(), "data must not set the envelope's fields"
        created_ms = self._clock.now_ms()
        eid = event_id(kind, dict(data), created_ms)
        payload = {"id": eid, "type": kind, "created_at": iso_utc(created_ms), **data}
        return await self._send(eid, subject, text, payload, emails, webhooks)

    async def _send(self, eid: str, subject: str, text: str, payload: dict[str, Any], emails: Sequence[str],
                    webhooks: Sequence[str]) -> DeliveryReport:
        body = orjson.dumps(payload)
        results = await asyncio.gather(self._email(eid, subject, text, emails),
                                       *(self._webhook(eid, url, body) for url in webhooks))
        outcomes = tuple(results[0]) + tuple(results[1:])
        for o in outcomes:
            if not o.delivered:
                log.warning("event %s: %s to %s not delivered after %d attempt(s): %s",
                            eid, o.channel, o.target, o.attempts, o.detail)
        return DeliveryReport(eid, outcomes)

    async def _retrying(self, attempt: Callable[[], Awaitable[_Try]]) -> tuple[_Try, int]:
        number = 1
        while True:
            result = await attempt()
            if result.verdict != "retry" or number > self._retries:
                return result, number
            await asyncio.sleep(self._backoff_s * 2 ** (number - 1))
            number += 1

    async def _email(self, eid: str, subject: str, text: str, emails: Sequence[str]) -> list[Outcome]:
        if not emails:
            return []
        if self._smtp is None:
            return [Outcome("email", a, False, 0, "no SMTP server is configured") for a in emails]
        try:
            message = self._message(self._smtp, eid, subject, text, emails)
        except ValueError as e:  # an address that cannot be a header (e.g. holds a newline)
            return [Outcome("email", a, False, 0, f"cannot build the message: {e}") for a in emails]
        settings = self._smtp

        async def attempt() -> _Try:
            try:
                refused = await asyncio.to_thread(_send_mail, settings, message)
            except smtplib.SMTPRecipientsRefused as e:
                temporary = all(400 <= code < 500 for code, _ in e.recipients.values())
                return _Try("retry" if temporary else "give_up", "every recipient was refused", _refusals(e.recipients))
            except OSError as e:  # smtplib.SMTPException is an OSError
                return _Try(*smtp_verdict(e))
            return _Try("delivered", "", _refusals(refused))

        result, attempts = await self._retrying(attempt)
        outcomes = []
        for address in emails:
            refusal = result.refused.get(parseaddr(address)[1])
            delivered = result.verdict == "delivered" and refusal is None
            detail = "" if delivered else refusal or result.detail
            outcomes.append(Outcome("email", address, delivered, attempts, detail))
        return outcomes

    def _message(self, smtp: SmtpSettings, eid: str, subject: str, text: str, emails: Sequence[str]) -> EmailMessage:
        message = EmailMessage()
        message["From"] = smtp.sender
        message["To"] = ", ".join(emails)
        message["Subject"] = one_line(subject)
        message["Date"] = format_datetime(datetime.fromtimestamp(self._clock.now(), UTC))
        # The event id makes the Message-ID the same on every retry, so a duplicate can be recognised.
        domain = parseaddr(smtp.sender)[1].rpartition("@")[2] or "farebox.invalid"
        message["Message-ID"] = f"<{eid}@{domain}>"
        message["Auto-Submitted"] = "auto-generated"  # RFC 3834: auto-responders must not answer it
        message.set_content(text)
        return message

    async def _webhook(self, eid: str, url: str, body: bytes) -> Outcome:
        result, attempts = await self._retrying(lambda: self._post(eid, url, body))
        delivered = result.verdict == "delivered"
        return Outcome("webhook", url, delivered, attempts, "" if delivered else result.detail)

    async def _post(self, eid: str, url: str, body: bytes) -> _Try:
        # Signed per attempt: a retry after a long backoff must not arrive with a stale timestamp.
        headers = {"Content-Type": "application/json", "Farebox-Event-Id": eid,
                   "Farebox-Signature": sign(body, self._secret, int(self._clock.now()))}
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self._attempt_timeout_s)
        try:
            async with self._session().post(url, data=body, headers=headers, timeout=timeout,
                                            allow_redirects=False) as response:
                status = response.status
        except aiohttp.InvalidURL as e:
            return _Try("give_up", _describe(e))
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return _Try("retry", _describe(e))
        return _Try(webhook_verdict(status), f"HTTP {status}")
