"""The fake Stripe's objects, kept in memory, and what each API call does to them: customers,
Checkout Sessions, PaymentIntents, charges and refunds, and the webhook events they cause,
delivered over real HTTP and signed as Stripe signs them. The HTTP surface is sim/stripe.py.
"""

from __future__ import annotations

import asyncio
import copy
import time
from dataclasses import dataclass, field

import aiohttp
import orjson

from farebox.billing.stripe import STRIPE_VERSION, sign_webhook
from farebox.clock import Clock
from farebox.ids import Ids
from farebox.sim import stripe_params as p
from farebox.sim.stripe_params import ApiError, Obj

DELIVERY_TIMEOUT_S = 10.0
_SESSION_LIFETIME_S = 24 * 3600  # Checkout's default expires_at


# ---- state --------------------------------------------------------------------------------

@dataclass(slots=True)
class WebhookEndpoint:
    id: str
    url: str
    secret: str
    enabled_events: list[str]

    def wants(self, event_type: str) -> bool:
        return "*" in self.enabled_events or event_type in self.enabled_events


@dataclass(slots=True)
class Sent:
    """An event, its exact JSON body (every delivery of it sends these bytes) and its deliveries."""

    event: Obj
    payload: bytes
    deliveries: list[Obj] = field(default_factory=list)


@dataclass(slots=True)
class Saved:
    """The first result of an idempotency key."""

    endpoint: str
    params: Obj
    status: int
    body: bytes
    request_id: str


@dataclass(slots=True)
class Checkout:
    """What a Session holds that its object does not show: the PaymentIntent it will create."""

    item_names: list[str]
    intent_description: str | None
    intent_metadata: dict[str, str]
    setup_future_usage: str | None


@dataclass(slots=True)
class Call:
    """One request being served, and the events it causes."""

    request_id: str | None
    idempotency_key: str | None
    origin: str
    events: list[Sent] = field(default_factory=list)


class FakeStripe:
    def __init__(self, clock: Clock, ids: Ids) -> None:
        self.clock, self.ids = clock, ids
        self.customers: dict[str, Obj] = {}
        self.sessions: dict[str, Obj] = {}
        self.checkouts: dict[str, Checkout] = {}
        self.payment_intents: dict[str, Obj] = {}
        self.payment_methods: dict[str, Obj] = {}
        self.charges: dict[str, Obj] = {}
        self.refunds: dict[str, Obj] = {}
        self.events: dict[str, Sent] = {}  # insertion order is creation order
        self.endpoints: list[WebhookEndpoint] = []
        self.saved: dict[str, Saved] = {}
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

    def emit(self, call: Call, event_type: str, obj: Obj) -> None:
        """Record the event Stripe would create, with a snapshot of `obj` as it is now."""
        event = {
            "id": self.new_id("evt"), "object": "event", "api_version": STRIPE_VERSION, "created": self.now(),
            "data": {"object": copy.deepcopy(obj)}, "livemode": False,
            "pending_webhooks": sum(e.wants(event_type) for e in self.endpoints),
            "request": {"id": call.request_id, "idempotency_key": call.idempotency_key}, "type": event_type,
        }
        sent = Sent(event, orjson.dumps(event))
        self.events[event["id"]] = sent
        call.events.append(sent)

    async def deliver(self, sent: Sent) -> list[Obj]:
        """POST the event to each endpoint enabled for it; the delivery records."""
        return [await self._post(sent, endpoint) for endpoint in self.endpoints if endpoint.wants(sent.event["type"])]

    async def _post(self, sent: Sent, endpoint: WebhookEndpoint) -> Obj:
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

    def deliver_later(self, events: list[Sent]) -> None:
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

    def create_customer(self, call: Call, params: Obj) -> tuple[int, Obj]:
        p.only(params, {"email", "name", "description", "phone", "metadata"})
        return 200, self._new_customer(email=p.text(params, "email"), name=p.text(params, "name"),
                                       description=p.text(params, "description"), phone=p.text(params, "phone"),
                                       metadata=p.metadata(params))

    def create_checkout_session(self, call: Call, params: Obj) -> tuple[int, Obj]:
        p.only(params, {"mode", "line_items", "success_url", "cancel_url", "client_reference_id", "customer",
                        "customer_email", "customer_creation", "metadata", "payment_intent_data"})
        mode = p.required(p.enum(params, "mode", ("payment", "setup", "subscription")), "mode")
        if mode != "payment":
            raise ApiError(400, f"The fake Stripe implements only mode=payment, not mode={mode}.", param="mode")
        items = p.array(params, "line_items")
        if not items:
            raise ApiError(400, "Missing required param: line_items.", code="parameter_missing", param="line_items")
        currency, total, names = None, 0, []
        for name, item in items:
            if not isinstance(item, dict):
                raise ApiError(400, f"Invalid object: {name} must be a hash", param=name)
            p.only(item, {"price_data", "quantity"}, name)
            quantity = p.required(p.integer(item, "quantity", name), f"{name}[quantity]")
            price_name = f"{name}[price_data]"
            price = p.mapping(item, "price_data", name)
            p.only(p.required(price or None, price_name), {"currency", "unit_amount", "product_data"}, price_name)
            item_currency = p.required(p.currency(price, "currency", price_name), f"{price_name}[currency]")
            unit_amount = p.required(p.integer(price, "unit_amount", price_name), f"{price_name}[unit_amount]")
            product = p.mapping(price, "product_data", price_name)
            p.only(product, {"name", "description"}, f"{price_name}[product_data]")
            product_name = p.required(p.text(product, "name", f"{price_name}[product_data]"),
                                      f"{price_name}[product_data][name]")
            if quantity < 1 or unit_amount < 0:
                raise ApiError(400, f"Invalid {name}: quantity must be positive and unit_amount not negative",
                               param=name)
            if currency not in (None, item_currency):
                raise ApiError(400, "All line items must be in the same currency.", param="line_items")
            currency, total = item_currency, total + quantity * unit_amount
            names.append(product_name)
        assert currency is not None
        p.check_amount(total, currency, "line_items", "The Checkout Session's total amount due")
        customer = p.text(params, "customer")
        if customer is not None and customer not in self.customers:
            raise p.no_such("customer", customer, "customer")
        customer_creation = p.enum(params, "customer_creation", ("always", "if_required"))
        if customer is not None and customer_creation is not None:
            raise ApiError(400, "You may only specify one of these parameters: customer, customer_creation.",
                           param="customer_creation")
        intent = p.mapping(params, "payment_intent_data")
        p.only(intent, {"description", "metadata", "setup_future_usage"}, "payment_intent_data")
        created = self.now()
        session_id = self.new_id("cs_test")
        session = {
            "id": session_id, "object": "checkout.session", "after_expiration": None, "allow_promotion_codes": None,
            "amount_subtotal": total, "amount_total": total,
            "automatic_tax": {"enabled": False, "liability": None, "status": None},
            "billing_address_collection": None, "cancel_url": p.text(params, "cancel_url"),
            "client_reference_id": p.text(params, "client_reference_id"), "client_secret": None, "consent": None,
            "consent_collection": None, "created": created, "currency": currency, "custom_fields": [],
            "custom_text": {"after_submit": None, "shipping_address": None, "submit": None,
                            "terms_of_service_acceptance": None},
            "customer": customer,
            "customer_creation": None if customer is not None else customer_creation or "if_required",
            "customer_details": None, "customer_email": p.text(params, "customer_email"),
            "expires_at": created + _SESSION_LIFETIME_S, "invoice": None, "livemode": False, "locale": None,
            "metadata": p.metadata(params), "mode": "payment", "payment_intent": None, "payment_link": None,
            "payment_method_collection": "if_required", "payment_method_options": {},
            "payment_method_types": ["card"], "payment_status": "unpaid", "phone_number_collection": {"enabled": False},
            "recovered_from": None, "setup_intent": None, "shipping_address_collection": None, "shipping_cost": None,
            "status": "open", "submit_type": None, "subscription": None, "success_url": p.text(params, "success_url"),
            "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}, "ui_mode": "hosted",
            "url": f"{call.origin}/c/pay/{session_id}",
        }
        self.checkouts[session_id] = Checkout(
            item_names=names, intent_description=p.text(intent, "description", "payment_intent_data"),
            intent_metadata=p.metadata(intent, "metadata", "payment_intent_data"),
            setup_future_usage=p.enum(intent, "setup_future_usage", ("on_session", "off_session"),
                                      "payment_intent_data"))
        self.sessions[session_id] = session
        return 200, session

    def complete_checkout(self, call: Call, session_id: str, pm_id: str | None, email: str | None) -> Obj:
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

    def get_checkout_session(self, call: Call, params: Obj, session_id: str) -> tuple[int, Obj]:
        p.only(params, set())
        if session_id not in self.sessions:
            raise p.no_such("checkout.session", session_id, "session", 404)
        return 200, self.sessions[session_id]

    def create_payment_intent(self, call: Call, params: Obj) -> tuple[int, Obj]:
        p.only(params, {"amount", "currency", "customer", "payment_method", "confirm", "off_session",
                        "automatic_payment_methods", "payment_method_types", "return_url", "description",
                        "metadata"})
        amount = p.required(p.integer(params, "amount"), "amount")
        currency = p.required(p.currency(params, "currency"), "currency")
        p.check_amount(amount, currency, "amount", "Amount")
        customer = p.text(params, "customer")
        if customer is not None and customer not in self.customers:
            raise p.no_such("customer", customer, "customer")
        pm_id = p.text(params, "payment_method")
        if pm_id is not None and pm_id not in self.payment_methods:
            raise p.no_such("PaymentMethod", pm_id, "payment_method")
        confirm = bool(p.boolean(params, "confirm"))
        # off_session also takes one_off/recurring, which mean true.
        off_session = p.enum(params, "off_session", ("true", "false", "one_off", "recurring")) not in (None, "false")
        automatic = p.mapping(params, "automatic_payment_methods")
        p.only(automatic, {"enabled", "allow_redirects"}, "automatic_payment_methods")
        redirects = p.enum(automatic, "allow_redirects", ("always", "never"), "automatic_payment_methods")
        types = []
        for name, item in p.array(params, "payment_method_types"):
            if item != "card":
                raise ApiError(400, f"The fake Stripe implements only card payments, not {item!r}.", param=name)
            types.append(item)
        if off_session and not confirm:
            raise ApiError(400, "You can only pass `off_session` when `confirm=true`.", param="off_session")
        if confirm and pm_id is None:
            raise ApiError(400, "You cannot confirm this PaymentIntent because it's missing a payment method.",
                           code="payment_intent_unexpected_state", param="payment_method")
        if confirm and not types and redirects != "never" and p.text(params, "return_url") is None:
            raise ApiError(400, p.NEEDS_RETURN_URL, param="return_url")
        if pm_id is not None:
            owner = self.payment_methods[pm_id]["customer"]
            if owner is None:  # every fake card was used once, by its Checkout Session
                raise ApiError(400, p.UNATTACHED_METHOD, param="payment_method")
            if owner != customer:
                raise ApiError(400, f"The PaymentMethod {pm_id} belongs to Customer {owner}, not to "
                               f"{customer or 'no Customer'}; pass the Customer it is attached to.",
                               param="customer")
        intent = self._new_payment_intent(
            amount=amount, currency=currency, customer=customer, description=p.text(params, "description"),
            metadata=p.metadata(params), payment_method=pm_id, setup_future_usage=None,
            automatic_payment_methods=({"allow_redirects": redirects or "always", "enabled": True}
                                       if p.boolean(automatic, "enabled", "automatic_payment_methods") else None),
            payment_method_types=types or ["card"])
        if not confirm:
            return 200, intent
        method = self.payment_methods[pm_id]
        if self.declines:
            return self._decline(call, intent, method, p.DECLINES[self.declines.pop(0)])
        self._succeed(call, intent, method)
        return 200, intent

    def _succeed(self, call: Call, intent: Obj, method: Obj) -> None:
        charge = self._new_charge(intent, method, None)
        intent.update(status="succeeded", amount_received=intent["amount"], latest_charge=charge["id"])
        if intent["setup_future_usage"] is not None and intent["customer"] is not None:
            method["customer"] = intent["customer"]
        self.emit(call, "charge.succeeded", charge)
        self.emit(call, "payment_intent.succeeded", intent)

    def _decline(self, call: Call, intent: Obj, method: Obj, decline: tuple[str, str, str]) -> tuple[int, Obj]:
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

    def get_payment_intent(self, call: Call, params: Obj, intent_id: str) -> tuple[int, Obj]:
        p.only(params, set())
        if intent_id not in self.payment_intents:
            raise p.no_such("payment_intent", intent_id, "intent", 404)
        return 200, self.payment_intents[intent_id]

    def create_refund(self, call: Call, params: Obj) -> tuple[int, Obj]:
        p.only(params, {"payment_intent", "charge", "amount", "reason", "metadata"})
        intent_id, charge_id = p.text(params, "payment_intent"), p.text(params, "charge")
        if (intent_id is None) == (charge_id is None):
            raise ApiError(400, "Pass exactly one of payment_intent or charge.", param="payment_intent")
        if intent_id is not None:
            intent = self.payment_intents.get(intent_id)
            if intent is None:
                raise p.no_such("payment_intent", intent_id, "payment_intent")
            if intent["status"] != "succeeded":
                raise ApiError(400, f"This PaymentIntent ({intent_id}) does not have a successful charge to refund.",
                               param="payment_intent")
            charge_id = intent["latest_charge"]
        assert charge_id is not None
        charge = self.charges.get(charge_id)
        if charge is None:
            raise p.no_such("charge", charge_id, "charge")
        if not charge["paid"]:
            raise ApiError(400, f"Charge {charge_id} did not succeed and cannot be refunded.", param="charge")
        unrefunded = charge["amount"] - charge["amount_refunded"]
        if unrefunded == 0:
            raise ApiError(400, f"Charge {charge_id} has already been refunded.", code="charge_already_refunded")
        amount = p.integer(params, "amount")
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
            "metadata": p.metadata(params), "payment_intent": charge["payment_intent"],
            "reason": p.enum(params, "reason", ("duplicate", "fraudulent", "requested_by_customer")),
            "receipt_number": None, "source_transfer_reversal": None, "status": "succeeded",
            "transfer_reversal": None,
        }
        self.refunds[refund["id"]] = refund
        charge["amount_refunded"] += amount
        charge["refunded"] = charge["amount_refunded"] == charge["amount"]
        self.emit(call, "charge.refunded", charge)
        self.emit(call, "refund.created", refund)
        return 200, refund
