"""The fake Stripe: signed webhook deliveries to a real receiver (which our verifier and
Stripe's own library accept), its test controls, Stripe's validation and idempotency
rules, and Stripe's own SDK as a client of it."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import stripe
from aiohttp import web

from farebox.billing.stripe import STRIPE_VERSION, Stripe, encode_form, verify_webhook
from farebox.clock import Clock
from farebox.sim.stripe import start
from farebox.sim.stripe_params import ApiError, parse_form
from tests.simthread import running_sim

SECRET = "whsec_fake_test"
KEY = "sk_test_farebox"
AUTH = {"Authorization": f"Bearer {KEY}"}


@dataclass
class Receiver:
    """A webhook endpoint: what it was sent, and the status it answers with."""

    url: str
    status: int = 200
    got: list[tuple[bytes, str | None]] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        return [verify_webhook(body, header, SECRET, now=Clock().now()) for body, header in self.got]


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    app = web.Application()
    runner = web.AppRunner(app)
    box: list[Receiver] = []

    async def hook(request: web.Request) -> web.Response:
        box[0].got.append((await request.read(), request.headers.get("Stripe-Signature")))
        return web.Response(status=box[0].status)

    app.router.add_post("/hook", hook)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    box.append(Receiver(f"http://127.0.0.1:{runner.addresses[0][1]}/hook"))
    try:
        yield box[0]
    finally:
        await runner.cleanup()


@dataclass
class Env:
    base: str
    client: Stripe
    http: aiohttp.ClientSession  # to the fake, no auth: for the controls and raw requests
    hook: Receiver

    async def control(self, path: str, body: dict[str, Any] | None = None, status: int = 200) -> dict[str, Any]:
        async with self.http.post(path, json=body or {}) as r:
            assert r.status == status, await r.text()
            return await r.json()

    async def events(self, event_type: str | None = None) -> list[dict[str, Any]]:
        async with self.http.get("/_fake/events", params={"type": event_type} if event_type else {}) as r:
            return (await r.json())["data"]

    async def session(self, *, save: bool = True, customer: str | None = None, key: str = "cs-1") -> dict[str, Any]:
        return await self.client.create_checkout_session(
            amount_cents=1500, customer=customer, client_reference_id="org_1", description="Farebox credits",
            success_url="https://fb.example/ok?s={CHECKOUT_SESSION_ID}", cancel_url="https://fb.example/no",
            metadata={"org": "org_1"}, save_payment_method=save, idempotency_key=key)

    async def paid(self, pm: str = "pm_saved") -> dict[str, Any]:
        session = await self.session()
        return (await self.control(f"/_fake/checkout/sessions/{session['id']}/complete",
                                   {"payment_method": pm}))["session"]


def run(scenario: Callable[[Env], Awaitable[None]], *, enabled_events: list[str] | None = None) -> None:
    async def main() -> None:
        runner, port = await start(port=0)
        base = f"http://127.0.0.1:{port}"
        client = Stripe(base, KEY, timeout_s=10)
        try:
            async with receiver() as hook, aiohttp.ClientSession(base) as http:
                env = Env(base, client, http, hook)
                await env.control("/_fake/webhooks", {"url": hook.url, "secret": SECRET,
                                                      "enabled_events": enabled_events or ["*"]})
                await scenario(env)
        finally:
            await client.close()
            await runner.cleanup()

    asyncio.run(main())


def test_completing_a_session_delivers_signed_events_that_stripe_accepts():
    async def scenario(env: Env) -> None:
        session = await env.session()
        answer = await env.control(f"/_fake/checkout/sessions/{session['id']}/complete",
                                   {"payment_method": "pm_saved", "email": "ops@acme.example"})
        assert [e["type"] for e in answer["events"]] == [
            "charge.succeeded", "payment_intent.succeeded", "checkout.session.completed"]
        assert all(e["deliveries"][0]["status"] == 200 for e in answer["events"])  # delivered before answering
        events = env.hook.events()
        assert [e["id"] for e in events] == [e["id"] for e in answer["events"]]
        for body, header in env.hook.got:  # and Stripe's own library agrees
            assert stripe.Webhook.construct_event(body, header, SECRET).id in {e["id"] for e in events}
        charge, intent, completed = events
        for event in events:
            assert event["id"].startswith("evt_") and event["object"] == "event"
            assert (event["api_version"], event["livemode"], event["pending_webhooks"]) == (STRIPE_VERSION, False, 1)
            assert event["request"] == {"id": None, "idempotency_key": None}  # the customer did it, not an API call
        paid = completed["data"]["object"]
        assert paid == answer["session"] == await env.client.retrieve_checkout_session(session["id"])
        assert (paid["status"], paid["payment_status"], paid["url"]) == ("complete", "paid", None)
        assert paid["customer"].startswith("cus_") and paid["customer_details"]["email"] == "ops@acme.example"
        assert (paid["client_reference_id"], paid["metadata"]) == ("org_1", {"org": "org_1"})
        pi = intent["data"]["object"]
        assert paid["payment_intent"] == pi["id"] and charge["data"]["object"]["payment_intent"] == pi["id"]
        assert (pi["status"], pi["amount_received"], pi["payment_method"]) == ("succeeded", 1500, "pm_saved")
        assert (pi["customer"], pi["setup_future_usage"]) == (paid["customer"], "off_session")
        assert (pi["metadata"], pi["description"]) == ({"org": "org_1"}, "Farebox credits")
        parsed = stripe.Webhook.construct_event(env.hook.got[-1][0], env.hook.got[-1][1], SECRET)
        assert isinstance(parsed.data.object, stripe.checkout.Session)
        assert parsed.data.object.payment_status == "paid"

    run(scenario)


def test_resend_delivers_the_same_event_with_a_fresh_valid_signature():
    async def scenario(env: Env) -> None:
        await env.paid()
        first_body, _ = env.hook.got[-1]
        completed = env.hook.events()[-1]
        resent = await env.control(f"/_fake/events/{completed['id']}/resend")
        assert resent["id"] == completed["id"] and len(resent["deliveries"]) == 2
        body, header = env.hook.got[-1]
        assert body == first_body and verify_webhook(body, header, SECRET, now=Clock().now()) == completed
        await env.control("/_fake/events/evt_nope/resend", status=404)

    run(scenario)


def test_an_endpoint_receives_only_the_events_it_enabled():
    async def scenario(env: Env) -> None:
        await env.paid()
        assert [e["type"] for e in env.hook.events()] == ["checkout.session.completed"]
        assert len(await env.events()) == 3  # the others happened, they were just not sent here

    run(scenario, enabled_events=["checkout.session.completed"])


def test_events_an_api_call_causes_arrive_after_its_answer_and_name_the_request():
    async def scenario(env: Env) -> None:
        session = await env.paid()
        intent = await env.client.charge_off_session(
            customer=session["customer"], payment_method="pm_saved", amount_cents=2500, description="Auto top-up",
            metadata={"org": "org_1"}, idempotency_key="topup-7")
        await env.control("/_fake/webhooks/flush")
        charge, succeeded = env.hook.events()[3:]
        assert (charge["type"], succeeded["type"]) == ("charge.succeeded", "payment_intent.succeeded")
        assert succeeded["data"]["object"] == intent
        assert succeeded["request"]["idempotency_key"] == "topup-7"
        assert succeeded["request"]["id"].startswith("req_")
        assert charge["data"]["object"]["paid"] and charge["data"]["object"]["amount"] == 2500

    run(scenario)


def test_a_declined_charge_sends_payment_failed():
    async def scenario(env: Env) -> None:
        session = await env.paid()
        queued = await env.control("/_fake/decline_next", {"code": "expired_card"})
        assert queued == {"queued": ["expired_card"]}
        await env.control("/_fake/decline_next", {"code": "no_such_code"}, status=400)
        async with env.http.post("/v1/payment_intents", headers=AUTH, data=encode_form({
                "amount": 900, "currency": "usd", "customer": session["customer"], "payment_method": "pm_saved",
                "confirm": True, "off_session": True,
                "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"}})) as r:
            assert r.status == 402
            error = (await r.json())["error"]
        assert (error["type"], error["code"], error["decline_code"]) == ("card_error", "expired_card", "expired_card")
        assert error["charge"].startswith("ch_") and error["payment_method"]["id"] == "pm_saved"
        await env.control("/_fake/webhooks/flush")
        failed_charge, failed = env.hook.events()[3:]
        assert (failed_charge["type"], failed["type"]) == ("charge.failed", "payment_intent.payment_failed")
        assert failed["data"]["object"] == error["payment_intent"]
        assert failed["data"]["object"]["last_payment_error"]["code"] == "expired_card"
        assert failed_charge["data"]["object"]["status"] == "failed"
        # The queue held one decline: the next charge goes through.
        ok = await env.client.charge_off_session(customer=session["customer"], payment_method="pm_saved",
                                                 amount_cents=900, description="retry", metadata={},
                                                 idempotency_key="after-decline")
        assert ok["status"] == "succeeded"

    run(scenario)


def test_a_refund_sends_charge_refunded():
    async def scenario(env: Env) -> None:
        session = await env.paid()
        refund = await env.client.refund(payment_intent=session["payment_intent"], amount_cents=500, metadata={},
                                         idempotency_key="refund-1")
        await env.control("/_fake/webhooks/flush")
        refunded, created = env.hook.events()[3:]
        assert (refunded["type"], created["type"]) == ("charge.refunded", "refund.created")
        charge = refunded["data"]["object"]
        assert (charge["id"], charge["amount_refunded"], charge["refunded"]) == (refund["charge"], 500, False)
        assert created["data"]["object"] == refund

    run(scenario)


def test_failed_deliveries_are_recorded_not_retried():
    async def scenario(env: Env) -> None:
        env.hook.status = 500
        await env.control("/_fake/webhooks", {"url": "http://127.0.0.1:9/nowhere", "secret": "whsec_x",
                                              "enabled_events": ["checkout.session.completed"]})
        await env.paid()
        listed = await env.events("checkout.session.completed")
        assert len(listed) == 1 and listed[0]["event"]["pending_webhooks"] == 2
        ours, nowhere = listed[0]["deliveries"]
        assert (ours["status"], ours["error"]) == (500, None)
        assert nowhere["status"] is None and nowhere["error"]
        assert len(env.hook.got) == 3  # one attempt each

    run(scenario)


def test_without_a_secret_test_key_stripe_answers_401_in_its_error_shape():
    async def scenario(env: Env) -> None:
        for headers, says in (({}, "You did not provide an API key"),
                              ({"Authorization": "Bearer pk_test_publishable"}, "Invalid API Key provided"),
                              ({"Authorization": "Basic c2tfdGVzdF94Og=="}, "Invalid API Key provided")):
            async with env.http.get("/v1/payment_intents/pi_1", headers=headers) as r:
                assert r.status == 401 and r.headers["Request-Id"].startswith("req_")
                error = (await r.json())["error"]
            assert error["type"] == "invalid_request_error" and says in error["message"]

    run(scenario)


async def _post(env: Env, path: str, params: dict[str, Any], key: str | None = None) -> tuple[int, dict[str, Any]]:
    headers = {**AUTH, **({"Idempotency-Key": key} if key else {})}
    async with env.http.post(path, headers=headers, data=encode_form(params)) as r:
        return r.status, await r.json()


def test_requests_are_validated_as_stripe_validates_them():
    async def scenario(env: Env) -> None:
        cases = [
            ("/v1/customers", {"emial": "typo@x"}, "parameter_unknown", "emial"),
            ("/v1/customers", {"metadata": {"k" * 41: "v"}}, None, f"metadata[{'k' * 41}]"),
            ("/v1/payment_intents", {"currency": "usd"}, "parameter_missing", "amount"),
            ("/v1/payment_intents", {"amount": "ten", "currency": "usd"}, "parameter_invalid_integer", "amount"),
            ("/v1/payment_intents", {"amount": 49, "currency": "usd"}, "amount_too_small", "amount"),
            ("/v1/payment_intents", {"amount": 100, "currency": "usd", "customer": "cus_nope"},
             "resource_missing", "customer"),
            ("/v1/payment_intents", {"amount": 100, "currency": "usd", "off_session": True}, None, "off_session"),
            ("/v1/checkout/sessions", {"mode": "payment"}, "parameter_missing", "line_items"),
            ("/v1/checkout/sessions", {"mode": "payment", "line_items": [{"quantity": 1, "price": "price_1"}]},
             "parameter_unknown", "line_items[0][price]"),
            ("/v1/checkout/sessions", {"mode": "payment", "line_items": [
                {"quantity": 1, "price_data": {"currency": "usd", "unit_amount": 10,
                                               "product_data": {"name": "x"}}}]},
             "amount_too_small", "line_items"),
            ("/v1/refunds", {"payment_intent": "pi_nope"}, "resource_missing", "payment_intent"),
        ]
        for path, params, code, param in cases:
            status, body = await _post(env, path, params)
            assert status == 400, (path, params, body)
            assert (body["error"].get("code"), body["error"]["param"]) == (code, param), (path, params, body)
            assert body["error"]["type"] == "invalid_request_error"
        async with env.http.get("/v1/checkout/sessions/cs_test_nope", headers=AUTH) as r:
            assert r.status == 404 and (await r.json())["error"]["code"] == "resource_missing"
        async with env.http.get("/v1/balance", headers=AUTH) as r:
            assert r.status == 404 and "Unrecognized request URL" in (await r.json())["error"]["message"]

    run(scenario)


def test_a_confirmed_intent_needs_a_return_url_unless_redirects_are_off():
    async def scenario(env: Env) -> None:
        session = await env.paid()
        charge = {"amount": 700, "currency": "usd", "customer": session["customer"], "payment_method": "pm_saved",
                  "confirm": True, "off_session": True}
        status, body = await _post(env, "/v1/payment_intents", charge)
        assert (status, body["error"]["param"]) == (400, "return_url")
        status, body = await _post(env, "/v1/payment_intents", {**charge, "payment_method_types": ["card"]})
        assert (status, body["status"]) == (200, "succeeded")

    run(scenario)


def test_only_a_saved_card_on_its_own_customer_can_be_charged_off_session():
    async def scenario(env: Env) -> None:
        saved = await env.paid()
        other = await env.client.create_customer(email=None, name="Other", metadata={}, idempotency_key="other")
        unsaved = await env.session(save=False, customer=other["id"], key="cs-unsaved")
        await env.control(f"/_fake/checkout/sessions/{unsaved['id']}/complete", {"payment_method": "pm_once"})
        attempts = [(other["id"], "pm_saved", "customer"), (saved["customer"], "pm_nope", "payment_method"),
                    (other["id"], "pm_once", "payment_method")]
        for customer, pm, param in attempts:
            status, body = await _post(env, "/v1/payment_intents", {
                "amount": 700, "currency": "usd", "customer": customer, "payment_method": pm, "confirm": True,
                "off_session": True, "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"}})
            assert (status, body["error"]["param"]) == (400, param), body

    run(scenario)


def test_idempotency_follows_stripes_rules():
    async def scenario(env: Env) -> None:
        status, first = await _post(env, "/v1/customers", {"name": "A"}, key="k1")
        async with env.http.post("/v1/customers", headers={**AUTH, "Idempotency-Key": "k1"},
                                 data=encode_form({"name": "A"})) as r:
            assert r.headers["Idempotent-Replayed"] == "true" and await r.json() == first
        status, body = await _post(env, "/v1/customers", {"name": "B"}, key="k1")
        assert (status, body["error"]["type"]) == (400, "idempotency_error")
        status, body = await _post(env, "/v1/refunds", {"name": "A"}, key="k1")
        assert (status, body["error"]["type"]) == (400, "idempotency_error")
        assert "same endpoint" in body["error"]["message"]
        # A request refused by validation did nothing, so its key is still free.
        status, _ = await _post(env, "/v1/customers", {"nmae": "C"}, key="k2")
        status2, created = await _post(env, "/v1/customers", {"name": "C"}, key="k2")
        assert (status, status2, created["name"]) == (400, 200, "C")

    run(scenario)


def test_the_pay_page_completes_the_session_and_returns_to_the_merchant():
    async def scenario(env: Env) -> None:
        session = await env.session()
        async with env.http.get(session["url"]) as r:
            page = await r.text()
        assert r.status == 200 and "Farebox credits" in page and "Pay</button>" in page
        async with env.http.post(f"/_fake/checkout/sessions/{session['id']}/complete", data={},
                                 allow_redirects=False) as r:
            assert r.status == 303
            assert r.headers["Location"] == f"https://fb.example/ok?s={session['id']}"
        assert (await env.client.retrieve_checkout_session(session["id"]))["payment_status"] == "paid"
        assert [e["type"] for e in env.hook.events()][-1] == "checkout.session.completed"
        await env.control(f"/_fake/checkout/sessions/{session['id']}/complete", status=400)  # paid already
        await env.control("/_fake/checkout/sessions/cs_test_nope/complete", status=404)

    run(scenario)


def test_parse_form_reads_back_what_the_client_encodes():
    params = {"mode": "payment", "metadata": {"org": "org_1", "0": "digit key"},
              "line_items": [{"price_data": {"unit_amount": 5, "product_data": {"name": "a&b=c"}}, "quantity": 1}],
              "confirm": True}
    assert parse_form(encode_form(params).decode()) == {
        "mode": "payment", "metadata": {"org": "org_1", "0": "digit key"},
        "line_items": {"0": {"price_data": {"unit_amount": "5", "product_data": {"name": "a&b=c"}},
                             "quantity": "1"}},
        "confirm": "true"}
    assert parse_form("types[]=card&types[]=link") == {"types": {"0": "card", "1": "link"}}
    for bad in ("a=1&a[b]=2", "a[b]=2&a=1", "[x]=1", "a[][b]=1"):
        with pytest.raises(ApiError):
            parse_form(bad)


def _control_sync(base: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(base + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_stripes_own_sdk_is_a_client_of_the_fake():
    with running_sim(lambda: start(port=0)) as base:
        client = stripe.StripeClient(KEY, base_addresses={"api": base}, max_network_retries=0)
        customer = client.v1.customers.create(params={"email": "ops@acme.example", "name": "Acme",
                                                      "metadata": {"org": "org_1"}})
        assert isinstance(customer, stripe.Customer) and customer.metadata["org"] == "org_1"
        session = client.v1.checkout.sessions.create(params={
            "mode": "payment", "customer": customer.id, "client_reference_id": "org_1",
            "success_url": "https://fb.example/ok", "cancel_url": "https://fb.example/no",
            "line_items": [{"price_data": {"currency": "usd", "unit_amount": 1200,
                                           "product_data": {"name": "Credits"}}, "quantity": 2}],
            "payment_intent_data": {"setup_future_usage": "off_session"}})
        assert isinstance(session, stripe.checkout.Session) and session.amount_total == 2400
        _control_sync(base, f"/_fake/checkout/sessions/{session.id}/complete", {"payment_method": "pm_sdk"})
        paid = client.v1.checkout.sessions.retrieve(session.id)
        assert paid.payment_status == "paid" and paid.customer == customer.id
        charge = {"amount": 800, "currency": "usd", "customer": customer.id, "payment_method": "pm_sdk",
                  "confirm": True, "off_session": True}
        intent = client.v1.payment_intents.create(params={**charge, "payment_method_types": ["card"]},
                                                  options={"idempotency_key": "sdk-1"})
        assert isinstance(intent, stripe.PaymentIntent) and intent.status == "succeeded"
        replay = client.v1.payment_intents.create(params={**charge, "payment_method_types": ["card"]},
                                                  options={"idempotency_key": "sdk-1"})
        assert replay.id == intent.id
        with pytest.raises(stripe.IdempotencyError):
            client.v1.payment_intents.create(params={**charge, "amount": 900, "payment_method_types": ["card"]},
                                             options={"idempotency_key": "sdk-1"})
        _control_sync(base, "/_fake/decline_next", {"code": "insufficient_funds"})
        with pytest.raises(stripe.CardError) as declined:
            client.v1.payment_intents.create(params={**charge, "payment_method_types": ["card"]})
        assert declined.value.code == "card_declined" and declined.value.http_status == 402
        assert declined.value.error is not None and declined.value.error.decline_code == "insufficient_funds"
        assert declined.value.error.payment_intent.status == "requires_payment_method"
        refund = client.v1.refunds.create(params={"payment_intent": intent.id, "amount": 300,
                                                  "reason": "requested_by_customer"})
        assert isinstance(refund, stripe.Refund) and (refund.amount, refund.status) == (300, "succeeded")
        assert client.v1.payment_intents.retrieve(intent.id).amount_received == 800
        with pytest.raises(stripe.AuthenticationError):
            stripe.StripeClient("sk_live_nope", base_addresses={"api": base}, max_network_retries=0
                                ).v1.customers.create(params={"name": "x"})
        with pytest.raises(stripe.InvalidRequestError) as missing:
            client.v1.payment_intents.retrieve("pi_nope")
        assert missing.value.http_status == 404 and missing.value.code == "resource_missing"
