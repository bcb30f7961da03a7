"""Stripe, spoken over plain HTTP: the API calls the payment rail makes, and webhook signatures.

The `stripe` SDK is not a runtime dependency: these few calls are form-encoded POSTs with
JSON replies (https://docs.stripe.com/api), and owning them keeps the rail on our aiohttp
and our error model. Every write takes an idempotency key, sent as `Idempotency-Key`:
Stripe saves the first result per key and replays it, so a caller that did not hear the
answer (timeout, crash) retries with the same key and cannot pay or refund twice.

Webhooks (https://docs.stripe.com/webhooks#verify-manually): Stripe signs each delivery
with `Stripe-Signature: t=<unix>,v1=<hex HMAC-SHA256 of "<t>.<raw body>" under the
endpoint secret>`; a header may carry several v1 values while a secret is being rotated.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import orjson

if TYPE_CHECKING:
    import aiohttp

# The API version our requests are rendered in (and the fake Stripe renders). Pinned so an
# account-level upgrade in the Stripe dashboard cannot change the shapes we read.
STRIPE_VERSION = "2025-03-31.basil"
DEFAULT_TOLERANCE_S = 300  # Stripe's libraries' default webhook timestamp tolerance


class StripeError(Exception):
    """A failed Stripe call. `status` is None when no HTTP answer arrived; `type` is Stripe's
    error type (`card_error`, `invalid_request_error`, `idempotency_error`, `api_error`) or
    `api_connection_error` for transport failures, as Stripe's libraries name it.

    `retryable`: trying again later, with the same idempotency key, may succeed (network
    trouble, 409 conflicts, 429, 5xx, `lock_timeout`). Declines and invalid requests are not.
    `payment_intent` is the PaymentIntent Stripe returns with a declined charge."""

    def __init__(self, message: str, *, status: int | None, type: str, retryable: bool,
                 code: str | None = None, decline_code: str | None = None, param: str | None = None,
                 payment_intent: dict[str, Any] | None = None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.retryable = retryable
        self.code = code
        self.decline_code = decline_code
        self.param = param
        self.payment_intent = payment_intent
        self.request_id = request_id

    def __str__(self) -> str:
        detail = ", ".join(x for x in (self.type, self.code, self.decline_code) if x)
        return f"Stripe {self.status or 'unreachable'} ({detail}): {self.message}"


class WebhookSignatureError(Exception):
    """The request is not a webhook Stripe signed for us: answer it 400 and do nothing."""


def encode_form(params: Mapping[str, Any]) -> bytes:
    """Stripe's request encoding: nested dicts and lists in bracket notation
    (`metadata[org]=1`, `line_items[0][quantity]=1`), booleans as true/false, None omitted
    (absent, as in Stripe's own libraries). Amounts are integers: a float is refused."""
    return urlencode(list(_form_pairs(params, None))).encode()


def _form_pairs(params: Mapping[str, Any], prefix: str | None) -> Iterator[tuple[str, str]]:
    for key, value in params.items():
        name = f"{prefix}[{key}]" if prefix is not None else str(key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            yield from _form_pairs(value, name)
        elif isinstance(value, list | tuple):
            yield from _form_pairs(dict(enumerate(value)), name)
        elif isinstance(value, bool):  # before int: bool is an int
            yield name, "true" if value else "false"
        elif isinstance(value, int | str):
            yield name, str(value)
        else:
            raise TypeError(f"cannot form-encode {name}={value!r} ({type(value).__name__})")


def checkout_session_params(*, amount_cents: int, currency: str, customer: str | None, client_reference_id: str,
                            description: str, success_url: str, cancel_url: str, metadata: Mapping[str, str],
                            save_payment_method: bool) -> dict[str, Any]:
    """A one-item payment-mode Session. The metadata goes on the Session and on the
    PaymentIntent it creates: Stripe copies neither to the other, and both events matter."""
    _check_amount(amount_cents, currency)
    intent: dict[str, Any] = {"description": description, "metadata": dict(metadata)}
    if save_payment_method:
        intent["setup_future_usage"] = "off_session"
    return {
        "mode": "payment",
        "line_items": [{"price_data": {"currency": currency, "unit_amount": amount_cents,
                                       "product_data": {"name": description}},
                        "quantity": 1}],
        "client_reference_id": client_reference_id,
        "customer": customer,
        # A saved method is attached only to a Customer; without one given, have Checkout
        # create one, or the method could never be charged off-session.
        "customer_creation": "always" if save_payment_method and customer is None else None,
        "success_url": success_url,
        "cancel_url": cancel_url,
        "metadata": dict(metadata),
        "payment_intent_data": intent,
    }


def customer_params(*, email: str | None, name: str, metadata: Mapping[str, str]) -> dict[str, Any]:
    return {"email": email, "name": name, "metadata": dict(metadata)}


def off_session_charge_params(*, customer: str, payment_method: str, amount_cents: int, currency: str,
                              description: str, metadata: Mapping[str, str]) -> dict[str, Any]:
    """A PaymentIntent created and confirmed in one call, with no customer present."""
    _check_amount(amount_cents, currency)
    return {
        "amount": amount_cents,
        "currency": currency,
        "customer": customer,
        "payment_method": payment_method,
        "confirm": True,
        "off_session": True,
        # Without this, confirming needs a return_url for redirect-based methods, which an
        # off-session charge has nowhere to send.
        "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
        "description": description,
        "metadata": dict(metadata),
    }


def refund_params(*, payment_intent: str, amount_cents: int, metadata: Mapping[str, str]) -> dict[str, Any]:
    assert isinstance(amount_cents, int) and not isinstance(amount_cents, bool) and amount_cents > 0, amount_cents
    return {"payment_intent": payment_intent, "amount": amount_cents, "metadata": dict(metadata)}


def _check_amount(amount_cents: int, currency: str) -> None:
    assert isinstance(amount_cents, int) and not isinstance(amount_cents, bool) and amount_cents > 0, amount_cents
    assert len(currency) == 3 and currency.isalpha() and currency.islower(), currency


def read_error(status: int, body: bytes, should_retry: str | None, request_id: str | None = None) -> StripeError:
    """The StripeError for an HTTP error answer. Stripe's `Stripe-Should-Retry` header, when
    present, decides retryability, as in Stripe's own libraries."""
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = None
    error = parsed.get("error") if isinstance(parsed, dict) else None
    if not isinstance(error, dict):
        text = body[:200].decode("utf-8", "replace")
        return StripeError(f"HTTP {status} without a Stripe error body: {text}", status=status, type="api_error",
                           retryable=_retryable(status, None, should_retry), request_id=request_id)
    code = error.get("code")
    intent = error.get("payment_intent")
    return StripeError(str(error.get("message") or f"HTTP {status}"), status=status,
                       type=str(error.get("type") or "api_error"), retryable=_retryable(status, code, should_retry),
                       code=code, decline_code=error.get("decline_code"), param=error.get("param"),
                       payment_intent=intent if isinstance(intent, dict) else None, request_id=request_id)


def _retryable(status: int, code: str | None, should_retry: str | None) -> bool:
    if should_retry in ("true", "false"):
        return should_retry == "true"
    return status in (409, 429) or status >= 500 or code == "lock_timeout"


class Stripe:
    """The calls the payment rail makes. `base_url` is Stripe's API origin (a setting, so
    tests point it at the fake): https://api.stripe.com. Pass a shared `session` or let the
    client own one (then `close()` it)."""

    def __init__(self, base_url: str, secret_key: str, session: aiohttp.ClientSession | None = None,
                 timeout_s: float = 30) -> None:
        assert secret_key, "a Stripe secret key is required"
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {secret_key}", "Stripe-Version": STRIPE_VERSION,
                         "User-Agent": "farebox"}
        self._session = session
        self._owns_session = session is None
        self._timeout_s = timeout_s

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def create_checkout_session(self, *, amount_cents: int, currency: str = "usd", customer: str | None,
                                      client_reference_id: str, description: str, success_url: str,
                                      cancel_url: str, metadata: Mapping[str, str], save_payment_method: bool,
                                      idempotency_key: str) -> dict[str, Any]:
        params = checkout_session_params(
            amount_cents=amount_cents, currency=currency, customer=customer, client_reference_id=client_reference_id,
            description=description, success_url=success_url, cancel_url=cancel_url, metadata=metadata,
            save_payment_method=save_payment_method)
        return await self._call("POST", "/v1/checkout/sessions", "checkout.session", params, idempotency_key)

    async def retrieve_checkout_session(self, session_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/checkout/sessions/{_segment(session_id)}", "checkout.session")

    async def create_customer(self, *, email: str | None, name: str, metadata: Mapping[str, str],
                              idempotency_key: str) -> dict[str, Any]:
        params = customer_params(email=email, name=name, metadata=metadata)
        return await self._call("POST", "/v1/customers", "customer", params, idempotency_key)

    async def charge_off_session(self, *, customer: str, payment_method: str, amount_cents: int,
                                 currency: str = "usd", description: str, metadata: Mapping[str, str],
                                 idempotency_key: str) -> dict[str, Any]:
        """The succeeded PaymentIntent; a decline raises StripeError (402 `card_error`, with
        `decline_code` and the failed `payment_intent`)."""
        params = off_session_charge_params(customer=customer, payment_method=payment_method,
                                           amount_cents=amount_cents, currency=currency, description=description,
                                           metadata=metadata)
        return await self._call("POST", "/v1/payment_intents", "payment_intent", params, idempotency_key)

    async def refund(self, *, payment_intent: str, amount_cents: int, metadata: Mapping[str, str],
                     idempotency_key: str) -> dict[str, Any]:
        params = refund_params(payment_intent=payment_intent, amount_cents=amount_cents, metadata=metadata)
        return await self._call("POST", "/v1/refunds", "refund", params, idempotency_key)

    async def retrieve_payment_intent(self, payment_intent_id: str) -> dict[str, Any]:
        return await self._call("GET", f"/v1/payment_intents/{_segment(payment_intent_id)}", "payment_intent")

    async def _call(self, method: str, path: str, kind: str, params: Mapping[str, Any] | None = None,
                    idempotency_key: str | None = None) -> dict[str, Any]:
        headers = dict(self._headers)
        body = None
        if method == "POST":
            assert idempotency_key, "every Stripe write carries an idempotency key"
            headers["Idempotency-Key"] = idempotency_key
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = encode_form(params or {})
        # Imported here, not with the module: a server with no Stripe key never needs aiohttp.
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.request(method, self._base + path, data=body, headers=headers,
                                             timeout=aiohttp.ClientTimeout(total=self._timeout_s)) as response:
                raw = await response.read()
                status, reply_headers = response.status, response.headers
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            # Whether Stripe acted is unknown: a retry with the same key finds out safely.
            text = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            raise StripeError(f"could not reach Stripe: {text}", status=None, type="api_connection_error",
                              retryable=True) from None
        request_id = reply_headers.get("Request-Id")
        if status >= 400:
            raise read_error(status, raw, reply_headers.get("Stripe-Should-Retry"), request_id)
        try:
            reply = orjson.loads(raw)
        except orjson.JSONDecodeError:
            reply = None
        if not isinstance(reply, dict) or reply.get("object") != kind:
            raise StripeError(f"expected a {kind} object from {method} {path}, got: {raw[:200]!r}", status=status,
                              type="api_error", retryable=False, request_id=request_id)
        return reply


def _segment(object_id: str) -> str:
    assert object_id, "an object id is required"
    return quote(object_id, safe="")


def sign_webhook(payload: bytes, secret: str, timestamp: int) -> str:
    """The `Stripe-Signature` header value Stripe would send with `payload`."""
    return f"t={timestamp},v1={_signature(payload, secret, timestamp)}"


def verify_webhook(payload: bytes, header: str | None, secret: str, *, now: float,
                   tolerance_s: int = DEFAULT_TOLERANCE_S) -> dict[str, Any]:
    """The Stripe Event in `payload` once its signature checks out, or WebhookSignatureError.
    `payload` must be the raw request body: re-serialized JSON does not verify. A timestamp
    more than `tolerance_s` from `now`, either way, is refused: an old delivery replayed by
    someone who captured it is the attack the timestamp exists to stop."""
    if not secret:
        raise ValueError("no webhook signing secret configured")  # an empty key would verify forgeries
    if not header:
        raise WebhookSignatureError("no Stripe-Signature header")
    timestamp, signatures = _parse_signature_header(header)
    expected = _signature(payload, secret, timestamp).encode()
    # Every v1 value is compared (in constant time): during a secret rotation Stripe signs
    # with both secrets, and either may be ours.
    if not any(hmac.compare_digest(expected, s.encode(errors="replace")) for s in signatures):
        raise WebhookSignatureError("no v1 signature matches the payload")
    if abs(now - timestamp) > tolerance_s:
        raise WebhookSignatureError(f"signature timestamp {timestamp} is outside the {tolerance_s} s tolerance")
    try:
        event = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise WebhookSignatureError("the signed payload is not JSON") from None
    if not isinstance(event, dict) or event.get("object") != "event" or not isinstance(event.get("id"), str):
        raise WebhookSignatureError("the signed payload is not a Stripe event")
    return event


def _parse_signature_header(header: str) -> tuple[int, list[str]]:
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep and key == "t":
            timestamps.append(value)
        elif sep and key == "v1":
            signatures.append(value)
        # Other schemes (v0: test-mode signatures) are not ours to check.
    if len(timestamps) != 1 or not (timestamps[0].isascii() and timestamps[0].isdigit()):
        raise WebhookSignatureError("Stripe-Signature has no single valid timestamp")
    if not signatures:
        raise WebhookSignatureError("Stripe-Signature has no v1 signature")
    return int(timestamps[0]), signatures


def _signature(payload: bytes, secret: str, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
