"""A fake Stripe: the slice of Stripe's API the payment rail uses, objects kept in memory,
and webhook events delivered over real HTTP, signed as Stripe signs them.

Faithful to https://docs.stripe.com/api where the rail and Stripe's own SDK can tell:
form-encoded requests in bracket notation, JSON objects with Stripe's fields and id
prefixes, Stripe's error shape and codes, `Request-Id` on every answer. It renders one
API version, `farebox.billing.stripe.STRIPE_VERSION`, whatever `Stripe-Version` asks for.

API (each needs `Authorization: Bearer sk_test_...`; anything else is Stripe's 401):
  POST /v1/customers              email, name, description, phone, metadata
  POST /v1/checkout/sessions      mode=payment, line_items[i][quantity],
                                  line_items[i][price_data][currency|unit_amount|product_data[name]],
                                  success_url, cancel_url, client_reference_id, customer, customer_email,
                                  customer_creation, metadata,
                                  payment_intent_data[description|metadata|setup_future_usage]
  GET  /v1/checkout/sessions/{id}
  POST /v1/payment_intents        amount, currency, customer, payment_method, confirm, off_session,
                                  automatic_payment_methods[enabled|allow_redirects],
                                  payment_method_types, return_url, description, metadata
  GET  /v1/payment_intents/{id}
  POST /v1/refunds                payment_intent | charge, amount, reason, metadata
A parameter not listed is refused as unknown (400 parameter_unknown), as Stripe refuses
misspelt ones: a test cannot silently rely on behaviour the fake does not have.

Idempotency, as Stripe: a POST with `Idempotency-Key` saves the first result once the
request was acted on (a success, or a 402 decline; not a validation error) and replays it
with `Idempotent-Replayed: true`. The same key with other parameters or on another
endpoint is a 400 `idempotency_error`.

Events (Stripe Event objects) go to every registered endpoint enabled for their type:
  a Checkout Session paid      charge.succeeded, payment_intent.succeeded, checkout.session.completed
  a PaymentIntent confirmed    charge.succeeded, payment_intent.succeeded
    ... and declined           charge.failed, payment_intent.payment_failed
  a refund                     charge.refunded, refund.created
Events an API request causes are delivered after its answer, in the background, as Stripe
delivers them (their `request` names the request and its idempotency key); events a test
control causes are delivered before the control answers. A failed delivery is recorded,
not retried: resend it.

Test controls (no auth; JSON bodies; errors in Stripe's shape):
  POST /_fake/webhooks {url, secret?, enabled_events?}   register an endpoint; the secret
                                   (a generated whsec_... unless given) signs its deliveries;
                                   enabled_events defaults to ["*"]
  POST /_fake/checkout/sessions/{id}/complete {payment_method?, email?}
                                   pay the Session as its customer would, with a card that
                                   gets the given pm_ id (or a new one); with
                                   payment_intent_data[setup_future_usage] and a Customer the
                                   card is saved to that Customer -> {session, events}
  GET  /c/pay/{id}                 the Session's `url`: a page whose Pay button completes the
                                   Session as above and redirects to its success_url
  POST /_fake/decline_next {code}  the next PaymentIntent confirmation declines: card_declined,
                                   insufficient_funds, lost_card, stolen_card, fraudulent,
                                   expired_card, incorrect_cvc, processing_error,
                                   authentication_required (several calls queue several)
  POST /_fake/events/{id}/resend   deliver an event again, same body, fresh signature
  POST /_fake/webhooks/flush       wait until background deliveries have finished
  GET  /_fake/events[?type=...]    {"data": [{"event", "deliveries"}, ...]}, oldest first
"""

from __future__ import annotations

import asyncio
import copy
import html
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import orjson
from aiohttp import web

from farebox.billing.stripe import STRIPE_VERSION, sign_webhook
from farebox.clock import Clock
from farebox.ids import Ids

Obj = dict[str, Any]

_DELIVERY_TIMEOUT_S = 10.0
_SESSION_LIFETIME_S = 24 * 3600  # Checkout's default expires_at
_MAX_AMOUNT = 99_999_999  # eight digits, Stripe's limit
# Smallest chargeable amount per currency (https://docs.stripe.com/currencies#minimum-and-maximum-charge-amounts);
# the fake accepts only these currencies.
_MINIMUM_CHARGE = {"usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50, "chf": 50, "jpy": 50}
_METADATA_KEYS_MAX, _METADATA_KEY_MAX, _METADATA_VALUE_MAX = 50, 40, 500
# Test control code -> (error code, decline_code, message), as Stripe's test cards answer.
_DECLINES = {
    "card_declined": ("card_declined", "generic_decline", "Your card was declined."),
    "insufficient_funds": ("card_declined", "insufficient_funds", "Your card has insufficient funds."),
    "lost_card": ("card_declined", "lost_card", "Your card was declined."),
    "stolen_card": ("card_declined", "stolen_card", "Your card was declined."),
    "fraudulent": ("card_declined", "fraudulent", "Your card was declined."),
    "expired_card": ("expired_card", "expired_card", "Your card has expired."),
    "incorrect_cvc": ("incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect."),
    "processing_error": ("processing_error", "processing_error",
                         "An error occurred while processing your card. Try again in a little bit."),
    "authentication_required": ("authentication_required", "authentication_required",
                                "Your card was declined. This transaction requires authentication."),
}
_NO_KEY = ("You did not provide an API key. You need to provide your API key in the Authorization header, "
           "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').")
_NEEDS_RETURN_URL = (
    "This PaymentIntent is configured to accept payment methods enabled in your Dashboard. Because some of these "
    "payment methods might redirect your customer off of your page, you must provide a `return_url`. If you don't "
    "want to accept redirect-based payment methods, set `automatic_payment_methods[enabled]` to `true` and "
    "`automatic_payment_methods[allow_redirects]` to `never` when creating Setup Intents and Payment Intents.")
_UNATTACHED_METHOD = (
    "The provided PaymentMethod was previously used with a PaymentIntent without Customer attachment, shared with "
    "a connected account without Customer attachment, or was detached from a Customer. It may not be used again. "
    "To use a PaymentMethod multiple times, you must attach it to a Customer first.")


class ApiError(Exception):
    """A request refused before anything was done: never saved for idempotent replay."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error: Obj = {"code": code, "message": message, "param": param, "type": type}
        if code is not None:
            self.error["doc_url"] = "https://stripe.com/docs/error-codes/" + code.replace("_", "-")

    def body(self) -> Obj:
        return {"error": {k: v for k, v in self.error.items() if v is not None}}


# ---- request parameters -------------------------------------------------------------------

_NAME = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_INDEX = re.compile(r"\[([^\[\]]*)\]")


def parse_form(body: str) -> Obj:
    """Stripe's bracket notation back into nested dicts: `a[b][0]=x` -> {"a": {"b": {"0": "x"}}}.
    Arrays stay digit-keyed dicts until a parameter's reader asks for an array, because only
    the parameter knows (`metadata[0]` is a hash key). `a[]=x` appends."""
    root: Obj = {}
    for name, value in parse_qsl(body, keep_blank_values=True):
        match = _NAME.fullmatch(name)
        if match is None:
            raise ApiError(400, f"Invalid parameter name: {name}")
        path = [match[1], *_INDEX.findall(match[2])]
        if "" in path[:-1]:
            raise ApiError(400, f"Invalid parameter name: {name}")
        node = root
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ApiError(400, f"Invalid hash: {name} mixes a value and nested parameters", param=name)
        last = path[-1] or str(len(node))
        if isinstance(node.get(last), dict):
            raise ApiError(400, f"Invalid hash: {name} mixes a value and nested parameters", param=name)
        node[last] = value
    return root


def _join(prefix: str, key: str) -> str:
    return f"{prefix}[{key}]" if prefix else key


def _only(params: Obj, allowed: set[str], prefix: str = "") -> None:
    for key in params:
        if key not in allowed:
            name = _join(prefix, key)
            raise ApiError(400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name)


def _required(value: Any, name: str) -> Any:
    if value is None:
        raise ApiError(400, f"Missing required param: {name}.", code="parameter_missing", param=name)
    return value


def _text(params: Obj, key: str, prefix: str = "") -> str | None:
    """A string parameter; empty means absent, as in Stripe."""
    value = params.get(key)
    if isinstance(value, dict):
        raise ApiError(400, f"Invalid string: {_join(prefix, key)} must be a string", param=_join(prefix, key))
    return value or None


def _integer(params: Obj, key: str, prefix: str = "") -> int | None:
    value = _text(params, key, prefix)
    if value is None:
        return None
    if not re.fullmatch(r"-?[0-9]+", value):
        raise ApiError(400, f"Invalid integer: {value}", code="parameter_invalid_integer", param=_join(prefix, key))
    return int(value)


def _boolean(params: Obj, key: str, prefix: str = "") -> bool | None:
    value = _text(params, key, prefix)
    if value is None or value in ("true", "false"):
        return None if value is None else value == "true"
    raise ApiError(400, f"Invalid boolean: {value}", param=_join(prefix, key))


def _enum(params: Obj, key: str, allowed: tuple[str, ...], prefix: str = "") -> str | None:
    value = _text(params, key, prefix)
    if value is not None and value not in allowed:
        name = _join(prefix, key)
        raise ApiError(400, f"Invalid {name}: must be one of {', '.join(allowed)}", param=name)
    return value


def _currency(params: Obj, key: str, prefix: str = "") -> str | None:
    value = _text(params, key, prefix)
    if value is not None and value.lower() not in _MINIMUM_CHARGE:
        raise ApiError(400, f"Invalid currency: {value}. The fake Stripe knows {', '.join(_MINIMUM_CHARGE)}.",
                       param=_join(prefix, key))
    return value.lower() if value is not None else None


def _hash(params: Obj, key: str, prefix: str = "") -> Obj:
    value = params.get(key, {})
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise ApiError(400, f"Invalid object: {_join(prefix, key)} must be a hash", param=_join(prefix, key))
    return value


def _array(params: Obj, key: str, prefix: str = "") -> list[tuple[str, Any]]:
    """(full parameter name, item) for each element of an array parameter, in index order."""
    name = _join(prefix, key)
    value = _hash(params, key, prefix)
    if not all(k.isdigit() for k in value):
        raise ApiError(400, f"Invalid array: {name} must be an array", param=name)
    return [(f"{name}[{k}]", value[k]) for k in sorted(value, key=int)]


def _metadata(params: Obj, key: str = "metadata", prefix: str = "") -> dict[str, str]:
    name = _join(prefix, key)
    metadata = _hash(params, key, prefix)
    for k, v in metadata.items():
        if not isinstance(v, str):
            raise ApiError(400, f"Invalid string: {name}[{k}] must be a string", param=f"{name}[{k}]")
        if len(k) > _METADATA_KEY_MAX or len(v) > _METADATA_VALUE_MAX:
            raise ApiError(400, f"Invalid {name}[{k}]: keys are at most {_METADATA_KEY_MAX} characters and values "
                           f"at most {_METADATA_VALUE_MAX}", param=f"{name}[{k}]")
    if len(metadata) > _METADATA_KEYS_MAX:
        raise ApiError(400, f"Invalid {name}: at most {_METADATA_KEYS_MAX} keys", param=name)
    return {k: v for k, v in metadata.items() if v}  # an empty value unsets its key


def _check_amount(amount: int, currency: str, param: str, what: str) -> None:
    minimum = _MINIMUM_CHARGE[currency]
    if amount < minimum:
        raise ApiError(400, f"{what} must be at least {minimum} {currency} (in the smallest currency unit)",
                       code="amount_too_small", param=param)
    if amount > _MAX_AMOUNT:
        raise ApiError(400, f"{what} must be no more than {_MAX_AMOUNT} {currency} (in the smallest currency unit)",
                       code="amount_too_large", param=param)


def _no_such(kind: str, object_id: str, param: str, status: int = 400) -> ApiError:
    return ApiError(status, f"No such {kind}: '{object_id}'", code="resource_missing", param=param)


# ---- state --------------------------------------------------------------------------------

@dataclass(slots=True)
class _Endpoint:
    id: str
    url: str
    secret: str
    enabled_events: list[str]

    def wants(self, event_type: str) -> bool:
        return "*" in self.enabled_events or event_type in self.enabled_events


@dataclass(slots=True)
class _Sent:
    """An event, its exact JSON body (every delivery of it sends these bytes) and its deliveries."""

    event: Obj
    payload: bytes
    deliveries: list[Obj] = field(default_factory=list)


@dataclass(slots=True)
class _Saved:
    """The first result of an idempotency key."""

    endpoint: str
    params: Obj
    status: int
    body: bytes
    request_id: str


@dataclass(slots=True)
class _Checkout:
    """What a Session holds that its object does not show: the PaymentIntent it will create."""

    item_names: list[str]
    intent_description: str | None
    intent_metadata: dict[str, str]
    setup_future_usage: str | None


@dataclass(slots=True)
class _Call:
    """One request being served, and the events it causes."""

    request_id: str | None
    idempotency_key: str | None
    origin: str
    events: list[_Sent] = field(default_factory=list)


class FakeStripe:
    def __init__(self, clock: Clock, ids: Ids) -> None:
        self.clock, self.ids = clock, ids
        self.customers: dict[str, Obj] = {}
        self.sessions: dict[str, Obj] = {}
        self.checkouts: dict[str, _Checkout] = {}
        self.payment_intents: dict[str, Obj] = {}
        self.payment_methods: dict[str, Obj] = {}
        self.charges: dict[str, Obj] = {}
        self.refunds: dict[str, Obj] = {}
        self.events: dict[str, _Sent] = {}  # insertion order is creation order
        self.endpoints: list[_Endpoint] = []
        self.saved: dict[str, _Saved] = {}
        self.declines: list[str] = []
        self.http: aiohttp.ClientSession | None = None
        self._deliveries: set[asyncio.Task[None]] = set()

    def now(self) -> int:
        return int(self.clock.now())

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{self.ids.hex(12)}"

    # -- objects ---------------------------------------------------------------------------

    def _new_customer(self, *, email: str | None, name: str | None, description: str | None, phone: str | None,
                      metadata: dict[str, str]) -> Obj:
        customer = {
            "id": self.new_id("cus"), "object": "customer", "address": None, "balance": 0, "created": self.now(),
            "currency": None, "default_source": None, "delinquent": False, "description": description,
            "email": email, "invoice_prefix": self.ids.hex(4).upper(),
            "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None,
                                 "rendering_options": None},
            "livemode": False, "metadata": metadata, "name": name, "next_invoice_sequence": 1, "phone": phone,
            "preferred_locales": [], "shipping": None, "tax_exempt": "none", "test_clock": None,
        }
        self.customers[customer["id"]] = customer
        return customer

    def _new_payment_method(self, pm_id: str, email: str | None) -> Obj:
        created = self.now()
        method = {
            "id": pm_id, "object": "payment_method", "allow_redisplay": "unspecified",
            "billing_details": {"address": {"city": None, "country": None, "line1": None, "line2": None,
                                            "postal_code": None, "state": None},
                                "email": email, "name": None, "phone": None},
            "card": {"brand": "visa", "checks": {"address_line1_check": None, "address_postal_code_check": None,
                                                 "cvc_check": "pass"},
                     "country": "US", "display_brand": "visa", "exp_month": 12,
                     "exp_year": time.gmtime(created).tm_year + 3, "fingerprint": self.ids.hex(8),
                     "funding": "credit", "generated_from": None, "last4": "4242",
                     "networks": {"available": ["visa"], "preferred": None},
                     "three_d_secure_usage": {"supported": True}, "wallet": None},
            "created": created, "customer": None, "livemode": False, "metadata": {}, "type": "card",
        }
        self.payment_methods[pm_id] = method
        return method

    def _new_payment_intent(self, *, amount: int, currency: str, customer: str | None, description: str | None,
                            metadata: dict[str, str], payment_method: str | None, setup_future_usage: str | None,
                            automatic_payment_methods: Obj | None, payment_method_types: list[str]) -> Obj:
        pi_id = self.new_id("pi")
        intent = {
            "id": pi_id, "object": "payment_intent", "amount": amount, "amount_capturable": 0,
            "amount_details": {"tip": {}}, "amount_received": 0, "application": None,
            "application_fee_amount": None, "automatic_payment_methods": automatic_payment_methods,
            "canceled_at": None, "cancellation_reason": None, "capture_method": "automatic_async",
            "client_secret": f"{pi_id}_secret_{self.ids.hex(12)}", "confirmation_method": "automatic",
            "created": self.now(), "currency": currency, "customer": customer, "description": description,
            "last_payment_error": None, "latest_charge": None, "livemode": False, "metadata": metadata,
            "next_action": None, "on_behalf_of": None, "payment_method": payment_method,
            "payment_method_configuration_details": None,
            "payment_method_options": {"card": {"installments": None, "mandate_options": None, "network": None,
                                                "request_three_d_secure": "automatic"}},
            "payment_method_types": payment_method_types, "processing": None, "receipt_email": None, "review": None,
            "setup_future_usage": setup_future_usage, "shipping": None, "source": None,
            "statement_descriptor": None, "statement_descriptor_suffix": None,
            "status": "requires_confirmation" if payment_method else "requires_payment_method",
            "transfer_data": None, "transfer_group": None,
        }
        self.payment_intents[pi_id] = intent
        return intent

    def _new_charge(self, intent: Obj, method: Obj, decline: tuple[str, str, str] | None) -> Obj:
        paid = decline is None
        card = method["card"]
        outcome = ({"network_status": "approved_by_network", "reason": None, "risk_level": "normal",
                    "risk_score": 20, "seller_message": "Payment complete.", "type": "authorized"} if paid else
                   {"network_status": "declined_by_network", "reason": decline[1], "risk_level": "normal",
                    "risk_score": 20, "seller_message": "The bank did not return any further details with this "
                    "decline.", "type": "issuer_declined"})
        charge = {
            "id": self.new_id("ch"), "object": "charge", "amount": intent["amount"],
            "amount_captured": intent["amount"] if paid else 0, "amount_refunded": 0, "application": None,
            "application_fee": None, "application_fee_amount": None,
            "balance_transaction": self.new_id("txn") if paid else None,
            "billing_details": method["billing_details"], "calculated_statement_descriptor": "FAREBOX",
            "captured": paid, "created": self.now(), "currency": intent["currency"], "customer": intent["customer"],
            "description": intent["description"], "disputed": False, "failure_balance_transaction": None,
            "failure_code": None if paid else decline[0], "failure_message": None if paid else decline[2],
            "fraud_details": {}, "livemode": False, "metadata": intent["metadata"], "on_behalf_of": None,
            "outcome": outcome, "paid": paid, "payment_intent": intent["id"], "payment_method": method["id"],
            "payment_method_details": {"card": {"brand": card["brand"], "country": card["country"],
                                                "exp_month": card["exp_month"], "exp_year": card["exp_year"],
                                                "fingerprint": card["fingerprint"], "funding": card["funding"],
                                                "last4": card["last4"], "network": "visa"},
                                       "type": "card"},
            "receipt_email": None, "receipt_number": None, "refunded": False, "review": None, "shipping": None,
            "source_transfer": None, "statement_descriptor": None, "statement_descriptor_suffix": None,
            "status": "succeeded" if paid else "failed", "transfer_data": None, "transfer_group": None,
        }
        self.charges[charge["id"]] = charge
        return charge

    # -- events ----------------------------------------------------------------------------

    def emit(self, call: _Call, event_type: str, obj: Obj) -> None:
        """Record the event Stripe would create, with a snapshot of `obj` as it is now."""
        event = {
            "id": self.new_id("evt"), "object": "event", "api_version": STRIPE_VERSION, "created": self.now(),
            "data": {"object": copy.deepcopy(obj)}, "livemode": False,
            "pending_webhooks": sum(e.wants(event_type) for e in self.endpoints),
            "request": {"id": call.request_id, "idempotency_key": call.idempotency_key}, "type": event_type,
        }
        sent = _Sent(event, orjson.dumps(event))
        self.events[event["id"]] = sent
        call.events.append(sent)

    async def deliver(self, sent: _Sent) -> list[Obj]:
        """POST the event to each endpoint enabled for it; the delivery records."""
        return [await self._post(sent, endpoint) for endpoint in self.endpoints if endpoint.wants(sent.event["type"])]

    async def _post(self, sent: _Sent, endpoint: _Endpoint) -> Obj:
        assert self.http is not None, "the app is not running"
        now = self.now()
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
                   "Stripe-Signature": sign_webhook(sent.payload, endpoint.secret, now)}
        record: Obj = {"endpoint": endpoint.id, "url": endpoint.url, "attempted": now, "status": None, "error": None}
        try:
            async with self.http.post(endpoint.url, data=sent.payload, headers=headers) as response:
                await response.read()
                record["status"] = response.status
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            record["error"] = f"{type(e).__name__}: {e}"
        sent.deliveries.append(record)
        return record

    def deliver_later(self, events: list[_Sent]) -> None:
        if not events:
            return

        async def deliver_in_order() -> None:
            for sent in events:
                await self.deliver(sent)

        task = asyncio.get_running_loop().create_task(deliver_in_order())
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def flush(self) -> None:
        while self._deliveries:
            await asyncio.gather(*self._deliveries)

    async def close(self) -> None:
        for task in self._deliveries:
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        if self.http is not None:
            await self.http.close()

    # -- API -------------------------------------------------------------------------------

    def create_customer(self, call: _Call, params: Obj) -> tuple[int, Obj]:
        _only(params, {"email", "name", "description", "phone", "metadata"})
        return 200, self._new_customer(email=_text(params, "email"), name=_text(params, "name"),
                                       description=_text(params, "description"), phone=_text(params, "phone"),
                                       metadata=_metadata(params))

    def create_checkout_session(self, call: _Call, params: Obj) -> tuple[int, Obj]:
        _only(params, {"mode", "line_items", "success_url", "cancel_url", "client_reference_id", "customer",
                       "customer_email", "customer_creation", "metadata", "payment_intent_data"})
        mode = _required(_enum(params, "mode", ("payment", "setup", "subscription")), "mode")
        if mode != "payment":
            raise ApiError(400, f"The fake Stripe implements only mode=payment, not mode={mode}.", param="mode")
        items = _array(params, "line_items")
        if not items:
            raise ApiError(400, "Missing required param: line_items.", code="parameter_missing", param="line_items")
        currency, total, names = None, 0, []
        for name, item in items:
            if not isinstance(item, dict):
                raise ApiError(400, f"Invalid object: {name} must be a hash", param=name)
            _only(item, {"price_data", "quantity"}, name)
            quantity = _required(_integer(item, "quantity", name), f"{name}[quantity]")
            price_name = f"{name}[price_data]"
            price = _hash(item, "price_data", name)
            _only(_required(price or None, price_name), {"currency", "unit_amount", "product_data"}, price_name)
            item_currency = _required(_currency(price, "currency", price_name), f"{price_name}[currency]")
            unit_amount = _required(_integer(price, "unit_amount", price_name), f"{price_name}[unit_amount]")
            product = _hash(price, "product_data", price_name)
            _only(product, {"name", "description"}, f"{price_name}[product_data]")
            product_name = _required(_text(product, "name", f"{price_name}[product_data]"),
                                     f"{price_name}[product_data][name]")
            if quantity < 1 or unit_amount < 0:
                raise ApiError(400, f"Invalid {name}: quantity must be positive and unit_amount not negative",
                               param=name)
            if currency not in (None, item_currency):
                raise ApiError(400, "All line items must be in the same currency.", param="line_items")
            currency, total = item_currency, total + quantity * unit_amount
            names.append(product_name)
        assert currency is not None
        _check_amount(total, currency, "line_items", "The Checkout Session's total amount due")
        customer = _text(params, "customer")
        if customer is not None and customer not in self.customers:
            raise _no_such("customer", customer, "customer")
        customer_creation = _enum(params, "customer_creation", ("always", "if_required"))
        if customer is not None and customer_creation is not None:
            raise ApiError(400, "You may only specify one of these parameters: customer, customer_creation.",
                           param="customer_creation")
        intent = _hash(params, "payment_intent_data")
        _only(intent, {"description", "metadata", "setup_future_usage"}, "payment_intent_data")
        created = self.now()
        session_id = self.new_id("cs_test")
        session = {
            "id": session_id, "object": "checkout.session", "after_expiration": None, "allow_promotion_codes": None,
            "amount_subtotal": total, "amount_total": total,
            "automatic_tax": {"enabled": False, "liability": None, "status": None},
            "billing_address_collection": None, "cancel_url": _text(params, "cancel_url"),
            "client_reference_id": _text(params, "client_reference_id"), "client_secret": None, "consent": None,
            "consent_collection": None, "created": created, "currency": currency, "custom_fields": [],
            "custom_text": {"after_submit": None, "shipping_address": None, "submit": None,
                            "terms_of_service_acceptance": None},
            "customer": customer,
            "customer_creation": None if customer is not None else customer_creation or "if_required",
            "customer_details": None, "customer_email": _text(params, "customer_email"),
            "expires_at": created + _SESSION_LIFETIME_S, "invoice": None, "livemode": False, "locale": None,
            "metadata": _metadata(params), "mode": "payment", "payment_intent": None, "payment_link": None,
            "payment_method_collection": "if_required", "payment_method_options": {},
            "payment_method_types": ["card"], "payment_status": "unpaid", "phone_number_collection": {"enabled": False},
            "recovered_from": None, "setup_intent": None, "shipping_address_collection": None, "shipping_cost": None,
            "status": "open", "submit_type": None, "subscription": None, "success_url": _text(params, "success_url"),
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}, "ui_mode": "hosted",
            "url": f"{call.origin}/c/pay/{session_id}",
        }
        self.checkouts[session_id] = _Checkout(
            item_names=names, intent_description=_text(intent, "description", "payment_intent_data"),
            intent_metadata=_metadata(intent, "metadata", "payment_intent_data"),
            setup_future_usage=_enum(intent, "setup_future_usage", ("on_session", "off_session"),
                                     "payment_intent_data"))
        self.sessions[session_id] = session
        return 200, session

    def complete_checkout(self, call: _Call, session_id: str, pm_id: str | None, email: str | None) -> Obj:
        """The customer pays on the hosted page: a card, a PaymentIntent that succeeds, and
        (when asked to save it and a Customer exists or is created) the card on that Customer."""
        session, checkout = self.sessions[session_id], self.checkouts[session_id]
        if session["status"] != "open":
            raise ApiError(400, f"Checkout Session {session_id} is {session['status']}, not open.")
        pm_id = pm_id or self.new_id("pm")
        if not pm_id.startswith("pm_") or pm_id in self.payment_methods:
            raise ApiError(400, f"payment_method must be a new pm_ id, not {pm_id!r}", param="payment_method")
        email = email or session["customer_email"]
        customer = session["customer"]
        if customer is None and session["customer_creation"] == "always":
            customer = self._new_customer(email=email, name=None, description=None, phone=None, metadata={})["id"]
        method = self._new_payment_method(pm_id, email)
        intent = self._new_payment_intent(
            amount=session["amount_total"], currency=session["currency"], customer=customer,
            description=checkout.intent_description, metadata=checkout.intent_metadata, payment_method=pm_id,
            setup_future_usage=checkout.setup_future_usage, automatic_payment_methods=None,
            payment_method_types=["card"])
        self._succeed(call, intent, method)
        session.update(status="complete", payment_status="paid", payment_intent=intent["id"], customer=customer,
                       url=None, customer_details={"address": None, "email": email, "name": None, "phone": None,
                                                   "tax_exempt": "none", "tax_ids": []})
        self.emit(call, "checkout.session.completed", session)
        return session

    def get_checkout_session(self, call: _Call, params: Obj, session_id: str) -> tuple[int, Obj]:
        _only(params, set())
        if session_id not in self.sessions:
            raise _no_such("checkout.session", session_id, "session", 404)
        return 200, self.sessions[session_id]

    def create_payment_intent(self, call: _Call, params: Obj) -> tuple[int, Obj]:
        _only(params, {"amount", "currency", "customer", "payment_method", "confirm", "off_session",
                       "automatic_payment_methods", "payment_method_types", "return_url", "description",
                       "metadata"})
        amount = _required(_integer(params, "amount"), "amount")
        currency = _required(_currency(params, "currency"), "currency")
        _check_amount(amount, currency, "amount", "Amount")
        customer = _text(params, "customer")
        if customer is not None and customer not in self.customers:
            raise _no_such("customer", customer, "customer")
        pm_id = _text(params, "payment_method")
        if pm_id is not None and pm_id not in self.payment_methods:
            raise _no_such("PaymentMethod", pm_id, "payment_method")
        confirm = bool(_boolean(params, "confirm"))
        # off_session also takes one_off/recurring, which mean true.
        off_session = _enum(params, "off_session", ("true", "false", "one_off", "recurring")) not in (None, "false")
        automatic = _hash(params, "automatic_payment_methods")
        _only(automatic, {"enabled", "allow_redirects"}, "automatic_payment_methods")
        redirects = _enum(automatic, "allow_redirects", ("always", "never"), "automatic_payment_methods")
        types = []
        for name, item in _array(params, "payment_method_types"):
            if item != "card":
                raise ApiError(400, f"The fake Stripe implements only card payments, not {item!r}.", param=name)
            types.append(item)
        if off_session and not confirm:
            raise ApiError(400, "You can only pass `off_session` when `confirm=true`.", param="off_session")
        if confirm and pm_id is None:
            raise ApiError(400, "You cannot confirm this PaymentIntent because it's missing a payment method.",
                           code="payment_intent_unexpected_state", param="payment_method")
        if confirm and not types and redirects != "never" and _text(params, "return_url") is None:
            raise ApiError(400, _NEEDS_RETURN_URL, param="return_url")
        if pm_id is not None:
            owner = self.payment_methods[pm_id]["customer"]
            if owner is None:  # every fake card was used once, by its Checkout Session
                raise ApiError(400, _UNATTACHED_METHOD, param="payment_method")
            if owner != customer:
                raise ApiError(400, f"The PaymentMethod {pm_id} belongs to Customer {owner}, not to "
                               f"{customer or 'no Customer'}; pass the Customer it is attached to.",
                               param="customer")
        intent = self._new_payment_intent(
            amount=amount, currency=currency, customer=customer, description=_text(params, "description"),
            metadata=_metadata(params), payment_method=pm_id, setup_future_usage=None,
            automatic_payment_methods=({"allow_redirects": redirects or "always", "enabled": True}
                                       if _boolean(automatic, "enabled", "automatic_payment_methods") else None),
            payment_method_types=types or ["card"])
        if not confirm:
            return 200, intent
        method = self.payment_methods[pm_id]
        if self.declines:
            return self._decline(call, intent, method, _DECLINES[self.declines.pop(0)])
        self._succeed(call, intent, method)
        return 200, intent

    def _succeed(self, call: _Call, intent: Obj, method: Obj) -> None:
        charge = self._new_charge(intent, method, None)
        intent.update(status="succeeded", amount_received=intent["amount"], latest_charge=charge["id"])
        if intent["setup_future_usage"] is not None and intent["customer"] is not None:
            method["customer"] = intent["customer"]
        self.emit(call, "charge.succeeded", charge)
        self.emit(call, "payment_intent.succeeded", intent)

    def _decline(self, call: _Call, intent: Obj, method: Obj, decline: tuple[str, str, str]) -> tuple[int, Obj]:
        charge = self._new_charge(intent, method, decline)
        code, decline_code, message = decline
        error = {"charge": charge["id"], "code": code, "decline_code": decline_code,
                 "doc_url": "https://stripe.com/docs/error-codes/" + code.replace("_", "-"), "message": message,
                 "payment_method": copy.deepcopy(method), "type": "card_error"}
        # A failed attempt leaves the intent waiting for another payment method.
        intent.update(status="requires_payment_method", last_payment_error=error, latest_charge=charge["id"],
                      payment_method=None)
        self.emit(call, "charge.failed", charge)
        self.emit(call, "payment_intent.payment_failed", intent)
        return 402, {"error": {**error, "payment_intent": copy.deepcopy(intent),
                               "request_log_url": f"https://dashboard.stripe.com/test/logs/{call.request_id}"}}

    def get_payment_intent(self, call: _Call, params: Obj, intent_id: str) -> tuple[int, Obj]:
        _only(params, set())
        if intent_id not in self.payment_intents:
            raise _no_such("payment_intent", intent_id, "intent", 404)
        return 200, self.payment_intents[intent_id]

    def create_refund(self, call: _Call, params: Obj) -> tuple[int, Obj]:
        _only(params, {"payment_intent", "charge", "amount", "reason", "metadata"})
        intent_id, charge_id = _text(params, "payment_intent"), _text(params, "charge")
        if (intent_id is None) == (charge_id is None):
            raise ApiError(400, "Pass exactly one of payment_intent or charge.", param="payment_intent")
        if intent_id is not None:
            intent = self.payment_intents.get(intent_id)
            if intent is None:
                raise _no_such("payment_intent", intent_id, "payment_intent")
            if intent["status"] != "succeeded":
                raise ApiError(400, f"This PaymentIntent ({intent_id}) does not have a successful charge to refund.",
                               param="payment_intent")
            charge_id = intent["latest_charge"]
        assert charge_id is not None
        charge = self.charges.get(charge_id)
        if charge is None:
            raise _no_such("charge", charge_id, "charge")
        if not charge["paid"]:
            raise ApiError(400, f"Charge {charge_id} did not succeed and cannot be refunded.", param="charge")
        unrefunded = charge["amount"] - charge["amount_refunded"]
        if unrefunded == 0:
            raise ApiError(400, f"Charge {charge_id} has already been refunded.", code="charge_already_refunded")
        amount = _integer(params, "amount")
        if amount is not None and amount < 1:
            raise ApiError(400, "Invalid positive integer", code="parameter_invalid_integer", param="amount")
        amount = unrefunded if amount is None else amount
        if amount > unrefunded:
            raise ApiError(400, f"Refund amount ({amount} {charge['currency']}) is greater than unrefunded amount on "
                           f"charge ({unrefunded} {charge['currency']})", param="amount")
        refund = {
            "id": self.new_id("re"), "object": "refund", "amount": amount,
            "balance_transaction": self.new_id("txn"), "charge": charge_id, "created": self.now(),
            "currency": charge["currency"],
            "destination_details": {"card": {"reference_status": "pending",
                                             "reference_type": "acquirer_reference_number", "type": "refund"},
                                    "type": "card"},
            "metadata": _metadata(params), "payment_intent": charge["payment_intent"],
            "reason": _enum(params, "reason", ("duplicate", "fraudulent", "requested_by_customer")),
            "receipt_number": None, "source_transfer_reversal": None, "status": "succeeded",
            "transfer_reversal": None,
        }
        self.refunds[refund["id"]] = refund
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        self.emit(call, "charge.refunded", charge)
        self.emit(call, "refund.created", refund)
        return 200, refund


FAKE = web.AppKey("farebox_fake_stripe", FakeStripe)


# ---- HTTP ---------------------------------------------------------------------------------

def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json", headers=headers)


def _authenticate(request: web.Request) -> None:
    header = request.headers.get("Authorization", "")
    if not header:
        raise ApiError(401, _NO_KEY)
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.startswith("sk_test_"):
        masked = key[:8] + "*" * max(len(key) - 12, 0) + key[-4:] if len(key) > 12 else "****"
        raise ApiError(401, f"Invalid API Key provided: {masked}")


Create = Callable[[FakeStripe, _Call, Obj], tuple[int, Obj]]
Retrieve = Callable[[FakeStripe, _Call, Obj, str], tuple[int, Obj]]


def _api(create: Create | None = None, retrieve: Retrieve | None = None) -> Callable[..., Any]:
    """An API route: authentication, parameters, idempotency, Stripe's error shape, and
    delivery of the events the request caused once it has been answered."""
    assert (create is None) != (retrieve is None)

    async def serve(request: web.Request) -> web.Response:
        fake = request.app[FAKE]
        request_id = fake.new_id("req")
        headers = {"Request-Id": request_id, "Stripe-Version": request.headers.get("Stripe-Version", STRIPE_VERSION)}
        key = request.headers.get("Idempotency-Key") if request.method == "POST" else None
        if key is not None:
            headers["Idempotency-Key"] = key
        call = _Call(request_id, key, f"{request.scheme}://{request.host}")
        endpoint = f"{request.method} {request.path}"
        try:
            _authenticate(request)
            if retrieve is not None:
                params = parse_form(request.query_string)
                status, obj = retrieve(fake, call, params, request.match_info["id"])
            else:
                assert create is not None
                params = parse_form((await request.read()).decode("utf-8", "replace"))
                saved = fake.saved.get(key) if key is not None else None
                if saved is not None:
                    return _replay(saved, endpoint, params, key, headers)
                status, obj = create(fake, call, params)
        except ApiError as e:
            return _json(e.body(), e.status, headers)
        body = orjson.dumps(obj)
        if key is not None:
            fake.saved[key] = _Saved(endpoint, params, status, body, request_id)
        fake.deliver_later(call.events)
        return web.Response(body=body, status=status, content_type="application/json", headers=headers)

    return serve


def _replay(saved: _Saved, endpoint: str, params: Obj, key: str | None, headers: dict[str, str]) -> web.Response:
    if saved.endpoint != endpoint:
        raise ApiError(400, f"Keys for idempotent requests can only be used for the same endpoint they were first "
                       f"used for ('{saved.endpoint}' vs '{endpoint}'). Try using a key other than '{key}' if you "
                       f"meant to execute a different request.", type="idempotency_error")
    if saved.params != params:
        raise ApiError(400, f"Keys for idempotent requests can only be used with the same parameters they were "
                       f"first used with. Try using a key other than '{key}' if you meant to execute a different "
                       f"request.", type="idempotency_error")
    return web.Response(body=saved.body, status=saved.status, content_type="application/json",
                        headers={**headers, "Idempotent-Replayed": "true", "Original-Request": saved.request_id})


async def _unrecognized(request: web.Request) -> web.Response:
    error = ApiError(404, f"Unrecognized request URL ({request.method}: {request.path}). The fake Stripe serves "
                     f"only the routes in farebox.sim.stripe's docstring.")
    return _json(error.body(), 404, {"Request-Id": request.app[FAKE].new_id("req")})


def _control(handle: Callable[[FakeStripe, web.Request, Obj], Any]) -> Callable[..., Any]:
    """A test control: a JSON (or, from the pay page, form) body in, JSON out."""

    async def serve(request: web.Request) -> web.StreamResponse:
        fake = request.app[FAKE]
        try:
            raw = await request.read()
            if request.content_type == "application/x-www-form-urlencoded":
                body: Any = dict(parse_qsl(raw.decode("utf-8", "replace")))
            else:
                try:
                    body = orjson.loads(raw) if raw else {}
                except orjson.JSONDecodeError:
                    raise ApiError(400, "The body of a test control must be a JSON object.") from None
            if not isinstance(body, dict):
                raise ApiError(400, "The body of a test control must be a JSON object.")
            return await handle(fake, request, body)
        except ApiError as e:
            return _json(e.body(), e.status)

    return serve


def _summary(sent: _Sent) -> Obj:
    return {"id": sent.event["id"], "type": sent.event["type"], "deliveries": sent.deliveries}


async def _register_webhook(fake: FakeStripe, request: web.Request, body: Obj) -> web.Response:
    url, secret, enabled = body.get("url"), body.get("secret"), body.get("enabled_events", ["*"])
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ApiError(400, "url must be an http(s) URL", param="url")
    if secret is not None and (not isinstance(secret, str) or not secret):
        raise ApiError(400, "secret must be a non-empty string", param="secret")
    if not isinstance(enabled, list) or not enabled or not all(isinstance(e, str) for e in enabled):
        raise ApiError(400, "enabled_events must be a non-empty list of event types", param="enabled_events")
    endpoint = _Endpoint(fake.new_id("we"), url, secret or f"whsec_{fake.ids.hex(16)}", enabled)
    fake.endpoints.append(endpoint)
    return _json({"id": endpoint.id, "object": "webhook_endpoint", "url": url, "secret": endpoint.secret,
                  "enabled_events": enabled})


async def _complete_checkout(fake: FakeStripe, request: web.Request, body: Obj) -> web.StreamResponse:
    session_id = request.match_info["id"]
    if session_id not in fake.sessions:
        raise _no_such("checkout.session", session_id, "session", 404)
    pm_id, email = body.get("payment_method"), body.get("email")
    if not isinstance(pm_id, str | None) or not isinstance(email, str | None):
        raise ApiError(400, "payment_method and email must be strings")
    call = _Call(None, None, f"{request.scheme}://{request.host}")
    session = fake.complete_checkout(call, session_id, pm_id or None, email or None)
    for sent in call.events:
        await fake.deliver(sent)
    if request.content_type == "application/x-www-form-urlencoded" and session["success_url"]:
        # The hosted page's Pay button: back to the merchant, as Checkout redirects.
        raise web.HTTPSeeOther(session["success_url"].replace("{CHECKOUT_SESSION_ID}", session_id))
    return _json({"session": session, "events": [_summary(sent) for sent in call.events]})


async def _pay_page(request: web.Request) -> web.Response:
    fake = request.app[FAKE]
    session_id = request.match_info["id"]
    session = fake.sessions.get(session_id)
    if session is None:
        return web.Response(status=404, text="No such Checkout Session.")
    if session["status"] != "open":
        return web.Response(text="This Checkout Session is no longer active.")
    checkout = fake.checkouts[session_id]
    what = html.escape(", ".join(checkout.item_names))
    amount = f"{session['amount_total']} {session['currency']} (smallest unit)"
    cancel = html.escape(session["cancel_url"] or "")
    page = (f"<!doctype html><html><head><title>Fake Stripe Checkout</title></head><body>"
            f"<h1>{what}</h1><p>Total: {html.escape(amount)}</p>"
            f"<form method=\"post\" action=\"/_fake/checkout/sessions/{html.escape(session_id)}/complete\">"
            f"<button type=\"submit\">Pay</button></form>"
            + (f"<p><a href=\"{cancel}\">Cancel</a></p>" if cancel else "") + "</body></html>")
    return web.Response(text=page, content_type="text/html")


async def _decline_next(fake: FakeStripe, request: web.Request, body: Obj) -> web.Response:
    code = body.get("code")
    if code not in _DECLINES:
        raise ApiError(400, f"code must be one of {', '.join(_DECLINES)}", param="code")
    fake.declines.append(code)
    return _json({"queued": fake.declines})


async def _resend(fake: FakeStripe, request: web.Request, body: Obj) -> web.Response:
    sent = fake.events.get(request.match_info["id"])
    if sent is None:
        raise _no_such("event", request.match_info["id"], "id", 404)
    await fake.deliver(sent)
    return _json(_summary(sent))


async def _flush(fake: FakeStripe, request: web.Request, body: Obj) -> web.Response:
    await fake.flush()
    return _json({"in_flight": 0})


async def _list_events(request: web.Request) -> web.Response:
    wanted = request.query.get("type")
    sent = [s for s in request.app[FAKE].events.values() if wanted is None or s.event["type"] == wanted]
    return _json({"object": "list", "data": [{"event": s.event, "deliveries": s.deliveries} for s in sent]})


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    fake = app[FAKE]
    fake.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_DELIVERY_TIMEOUT_S))
    yield
    await fake.close()


def create_app(clock: Clock | None = None, ids: Ids | None = None) -> web.Application:
    app = web.Application()
    app[FAKE] = FakeStripe(clock or Clock(), ids or Ids())
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_post("/v1/customers", _api(create=FakeStripe.create_customer))
    app.router.add_post("/v1/checkout/sessions", _api(create=FakeStripe.create_checkout_session))
    app.router.add_get("/v1/checkout/sessions/{id}", _api(retrieve=FakeStripe.get_checkout_session))
    app.router.add_post("/v1/payment_intents", _api(create=FakeStripe.create_payment_intent))
    app.router.add_get("/v1/payment_intents/{id}", _api(retrieve=FakeStripe.get_payment_intent))
    app.router.add_post("/v1/refunds", _api(create=FakeStripe.create_refund))
    app.router.add_route("*", "/v1/{tail:.*}", _unrecognized)  # after the real routes: first match wins
    app.router.add_get("/c/pay/{id}", _pay_page)
    app.router.add_post("/_fake/webhooks", _control(_register_webhook))
    app.router.add_post("/_fake/webhooks/flush", _control(_flush))
    app.router.add_post("/_fake/checkout/sessions/{id}/complete", _control(_complete_checkout))
    app.router.add_post("/_fake/decline_next", _control(_decline_next))
    app.router.add_post("/_fake/events/{id}/resend", _control(_resend))
    app.router.add_get("/_fake/events", _list_events)
    return app


async def start(host: str = "127.0.0.1", port: int = 12111, *, clock: Clock | None = None,
                ids: Ids | None = None) -> tuple[web.AppRunner, int]:
    """Start serving in the running loop; returns the runner and the bound port (12111 is
    stripe-mock's port, a familiar place for a fake Stripe)."""
    runner = web.AppRunner(create_app(clock, ids), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]
