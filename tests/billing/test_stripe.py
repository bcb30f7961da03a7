"""The Stripe rail's client: webhook signatures (ours and Stripe's own library's agree),
request building (pure), error reading, and the client against the fake Stripe over real
sockets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import orjson
import pytest
import stripe
from aiohttp import web
from stripe._encode import _api_encode

from farebox.billing.stripe import (
    STRIPE_VERSION,
    Stripe,
    StripeError,
    WebhookSignatureError,
    checkout_session_params,
    encode_form,
    off_session_charge_params,
    read_error,
    refund_params,
    sign_webhook,
    verify_webhook,
)
from farebox.clock import Clock
from farebox.sim.stripe import start

SECRET = "whsec_test_0123456789"
NOW = 1_767_225_600
EVENT = orjson.dumps({"id": "evt_1", "object": "event", "type": "checkout.session.completed",
                      "data": {"object": {"id": "cs_test_1", "object": "checkout.session"}}})
KEY = "sk_test_farebox"


# ---- webhook signatures ----------------------------------------------------------------

def test_a_signed_event_verifies_and_comes_back_parsed():
    header = sign_webhook(EVENT, SECRET, NOW)
    assert header.startswith(f"t={NOW},v1=") and len(header.split("v1=")[1]) == 64
    assert verify_webhook(EVENT, header, SECRET, now=NOW + 10) == orjson.loads(EVENT)


def test_the_tolerance_holds_both_ways_up_to_its_edge():
    header = sign_webhook(EVENT, SECRET, NOW)
    for now in (NOW - 300, NOW + 300):
        verify_webhook(EVENT, header, SECRET, now=now)
    for now in (NOW - 301, NOW + 301):  # from the future is as suspect as stale
        with pytest.raises(WebhookSignatureError, match="tolerance"):
            verify_webhook(EVENT, header, SECRET, now=now)
    with pytest.raises(WebhookSignatureError, match="tolerance"):
        verify_webhook(EVENT, header, SECRET, now=NOW + 11, tolerance_s=10)


def _v1(payload: bytes, secret: str, timestamp: int = NOW) -> str:
    return sign_webhook(payload, secret, timestamp).split(",v1=")[1]


@pytest.mark.parametrize("payload, header, reason", [
    (EVENT.replace(b"evt_1", b"evt_2"), sign_webhook(EVENT, SECRET, NOW), "no v1 signature matches"),
    (EVENT, sign_webhook(EVENT, "whsec_other", NOW), "no v1 signature matches"),
    # The timestamp is signed too: moving it to pass the tolerance breaks the signature.
    (EVENT, f"t={NOW + 1000},v1={_v1(EVENT, SECRET)}", "no v1 signature matches"),
    (EVENT, None, "no Stripe-Signature header"),
    (EVENT, "", "no Stripe-Signature header"),
    (EVENT, f"t={NOW}", "no v1 signature"),
    (EVENT, f"t={NOW},v0={_v1(EVENT, SECRET)}", "no v1 signature"),  # other schemes are not ours
    (EVENT, f"v1={_v1(EVENT, SECRET)}", "no single valid timestamp"),
    (EVENT, f"t=soon,v1={_v1(EVENT, SECRET)}", "no single valid timestamp"),
    (EVENT, f"t={NOW},t={NOW},v1={_v1(EVENT, SECRET)}", "no single valid timestamp"),
    (EVENT, f"t={NOW},v1=caf\u00e9", "no v1 signature matches"),
    (b"[1]", sign_webhook(b"[1]", SECRET, NOW), "not a Stripe event"),
    (b"not json", sign_webhook(b"not json", SECRET, NOW), "not JSON"),
])
def test_what_is_refused(payload: bytes, header: str | None, reason: str):
    with pytest.raises(WebhookSignatureError, match=reason):
        verify_webhook(payload, header, SECRET, now=NOW)


def test_any_of_several_v1_signatures_may_match_as_during_secret_rotation():
    header = f"t={NOW},v1={_v1(EVENT, 'whsec_old')},v0=ignored,v1={_v1(EVENT, SECRET)}"
    assert verify_webhook(EVENT, header, SECRET, now=NOW)["id"] == "evt_1"
    assert verify_webhook(EVENT, header, "whsec_old", now=NOW)["id"] == "evt_1"
    with pytest.raises(WebhookSignatureError):
        verify_webhook(EVENT, header, "whsec_third", now=NOW)


def test_an_empty_secret_is_a_configuration_error_not_a_pass():
    with pytest.raises(ValueError):
        verify_webhook(EVENT, sign_webhook(EVENT, "", NOW), "", now=NOW)


def test_stripes_own_library_and_ours_agree_on_signatures():
    now = int(Clock().now())  # the library checks its tolerance against the wall clock
    event = stripe.Webhook.construct_event(EVENT, sign_webhook(EVENT, SECRET, now), SECRET)
    assert event.id == "evt_1" and isinstance(event.data.object, stripe.checkout.Session)
    theirs = stripe.WebhookSignature.generate_signature_header(EVENT.decode(), SECRET, timestamp=NOW)
    assert theirs == sign_webhook(EVENT, SECRET, NOW)
    assert verify_webhook(EVENT, theirs, SECRET, now=NOW)["id"] == "evt_1"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(EVENT, sign_webhook(EVENT, "whsec_other", now), SECRET)


# ---- request building --------------------------------------------------------------------

def test_form_encoding_is_bracket_notation_with_booleans_and_no_nones():
    body = encode_form({"amount": 500, "confirm": True, "capture": False, "customer": None,
                        "metadata": {"org": "org_1", "note": "a&b=c"}, "empty": {},
                        "line_items": [{"price_data": {"unit_amount": 5, "product_data": {"name": "Credits"}},
                                        "quantity": 1}],
                        "payment_method_types": ["card", "link"]})
    assert b"%5B" in body and b"[" not in body  # brackets percent-encoded, as Stripe's libraries send them
    assert parse_qsl(body.decode(), keep_blank_values=True) == [
        ("amount", "500"), ("confirm", "true"), ("capture", "false"),
        ("metadata[org]", "org_1"), ("metadata[note]", "a&b=c"),
        ("line_items[0][price_data][unit_amount]", "5"), ("line_items[0][price_data][product_data][name]", "Credits"),
        ("line_items[0][quantity]", "1"),
        ("payment_method_types[0]", "card"), ("payment_method_types[1]", "link"),
    ]


def test_form_encoding_matches_stripes_own_encoder():
    params = checkout_session_params(
        amount_cents=2500, currency="eur", customer=None, client_reference_id="org_1", description="Credits",
        success_url="https://fb.example/ok?s={CHECKOUT_SESSION_ID}", cancel_url="https://fb.example/no",
        metadata={"org": "org_1", "purchase": "p_9"}, save_payment_method=True)
    assert encode_form(params) == urlencode(list(_api_encode(params))).encode()


def test_form_encoding_refuses_what_stripe_has_no_encoding_for():
    for value in (1.5, b"bytes", {1, 2}):
        with pytest.raises(TypeError):
            encode_form({"amount": value})


def test_checkout_session_params_saving_the_card_without_a_customer():
    params = checkout_session_params(
        amount_cents=1000, currency="usd", customer=None, client_reference_id="org_1", description="Farebox credits",
        success_url="https://fb.example/ok", cancel_url="https://fb.example/no", metadata={"org": "org_1"},
        save_payment_method=True)
    assert params == {
        "mode": "payment",
        "line_items": [{"price_data": {"currency": "usd", "unit_amount": 1000,
                                       "product_data": {"name": "Farebox credits"}}, "quantity": 1}],
        "client_reference_id": "org_1", "customer": None, "customer_creation": "always",
        "success_url": "https://fb.example/ok", "cancel_url": "https://fb.example/no",
        "metadata": {"org": "org_1"},
        "payment_intent_data": {"description": "Farebox credits", "metadata": {"org": "org_1"},
                                "setup_future_usage": "off_session"},
    }


def test_checkout_session_params_for_a_known_customer_not_saving():
    params = checkout_session_params(
        amount_cents=1000, currency="usd", customer="cus_1", client_reference_id="org_1", description="Credits",
        success_url="https://fb.example/ok", cancel_url="https://fb.example/no", metadata={},
        save_payment_method=False)
    assert params["customer"] == "cus_1" and params["customer_creation"] is None
    assert "setup_future_usage" not in params["payment_intent_data"]


def test_off_session_charge_params_confirm_now_without_redirects():
    params = off_session_charge_params(customer="cus_1", payment_method="pm_1", amount_cents=2000, currency="usd",
                                       description="Auto top-up", metadata={"org": "org_1"})
    assert params == {"amount": 2000, "currency": "usd", "customer": "cus_1", "payment_method": "pm_1",
                      "confirm": True, "off_session": True,
                      "automatic_payment_methods": {"enabled": True, "allow_redirects": "never"},
                      "description": "Auto top-up", "metadata": {"org": "org_1"}}


def test_amounts_are_positive_integers_of_the_smallest_unit():
    for bad in (0, -5, 10.0, True):
        with pytest.raises(AssertionError):
            refund_params(payment_intent="pi_1", amount_cents=bad, metadata={})
        with pytest.raises(AssertionError):
            off_session_charge_params(customer="c", payment_method="p", amount_cents=bad, currency="usd",
                                      description="d", metadata={})
    with pytest.raises(AssertionError):
        off_session_charge_params(customer="c", payment_method="p", amount_cents=100, currency="USD",
                                  description="d", metadata={})


# ---- reading errors ----------------------------------------------------------------------

def _error(type_: str, code: str | None = None, **more: Any) -> bytes:
    return orjson.dumps({"error": {"type": type_, "code": code, "message": "m", **more}})


@pytest.mark.parametrize("status, body, should_retry, retryable", [
    (500, _error("api_error"), None, True),
    (503, b"Service Unavailable", None, True),
    (429, _error("invalid_request_error", "rate_limit"), None, True),
    (409, _error("idempotency_error"), None, True),  # the same key is still in flight
    (400, _error("invalid_request_error", "lock_timeout"), None, True),
    (402, _error("card_error", "card_declined", decline_code="insufficient_funds"), None, False),
    (400, _error("invalid_request_error", "parameter_missing"), None, False),
    (400, _error("idempotency_error"), None, False),
    (401, _error("invalid_request_error"), None, False),
    (500, _error("api_error"), "false", False),  # Stripe's header decides when it is there
    (400, _error("invalid_request_error"), "true", True),
])
def test_read_error_decides_retryability(status: int, body: bytes, should_retry: str | None, retryable: bool):
    assert read_error(status, body, should_retry).retryable is retryable


def test_read_error_keeps_stripes_fields():
    intent = {"id": "pi_1", "object": "payment_intent", "status": "requires_payment_method"}
    e = read_error(402, _error("card_error", "card_declined", decline_code="insufficient_funds", param=None,
                               payment_intent=intent), None, "req_1")
    assert (e.status, e.type, e.code, e.decline_code, e.message, e.request_id) == (
        402, "card_error", "card_declined", "insufficient_funds", "m", "req_1")
    assert e.payment_intent == intent and not e.retryable
    assert "insufficient_funds" in str(e)
    bare = read_error(502, b"<html>Bad Gateway</html>", None)
    assert (bare.type, bare.code, bare.retryable) == ("api_error", None, True) and "Bad Gateway" in bare.message


# ---- the client against the fake Stripe ----------------------------------------------------

@asynccontextmanager
async def fake() -> AsyncIterator[tuple[str, Stripe, aiohttp.ClientSession]]:
    """The fake Stripe on a free port, our client for it, and a session for its controls."""
    runner, port = await start(port=0)
    base = f"http://127.0.0.1:{port}"
    client = Stripe(base, KEY, timeout_s=10)
    try:
        async with aiohttp.ClientSession(base) as controls:
            yield base, client, controls
    finally:
        await client.close()
        await runner.cleanup()


def run(scenario: Callable[[str, Stripe, aiohttp.ClientSession], Awaitable[None]]) -> None:
    async def main() -> None:
        async with fake() as (base, client, controls):
            await scenario(base, client, controls)

    asyncio.run(main())


async def checkout(client: Stripe, *, amount: int = 1000, save: bool = True, customer: str | None = None,
                   key: str = "checkout-1") -> dict[str, Any]:
    return await client.create_checkout_session(
        amount_cents=amount, customer=customer, client_reference_id="org_1", description="Farebox credits",
        success_url="https://fb.example/ok?s={CHECKOUT_SESSION_ID}", cancel_url="https://fb.example/no",
        metadata={"org": "org_1", "purchase": "p_1"}, save_payment_method=save, idempotency_key=key)


async def paid_checkout(client: Stripe, controls: aiohttp.ClientSession, pm: str = "pm_card_1") -> dict[str, Any]:
    """A Session completed by its customer with card `pm`, saved for later."""
    session = await checkout(client)
    async with controls.post(f"/_fake/checkout/sessions/{session['id']}/complete", json={"payment_method": pm}) as r:
        assert r.status == 200
        return (await r.json())["session"]


def test_checkout_session_is_created_as_asked():
    async def scenario(base: str, client: Stripe, controls: aiohttp.ClientSession) -> None:
        session = await checkout(client)
        assert session["id"].startswith("cs_test_") and session["object"] == "checkout.session"
        assert (session["mode"], session["status"], session["payment_status"]) == ("payment", "open", "unpaid")
        assert (session["amount_total"], session["currency"], session["livemode"]) == (1000, "usd", False)
        assert session["client_reference_id"] == "org_1"
        assert session["metadata"] == {"org": "org_1", "purchase": "p_1"}
        assert session["customer"] is None and session["customer_creation"] == "always"
        assert session["payment_intent"] is None  # created when the customer pays, as since 2022-08-01
        assert session["url"] == f"{base}/c/pay/{session['id']}"
        assert await client.retrieve_checkout_session(session["id"]) == session

    run(scenario)


def test_customer_is_created():
    async def scenario(base: str, client: Stripe, controls: aiohttp.ClientSession) -> None:
        customer = await client.create_customer(email="ops@acme.example", name="Acme", metadata={"org": "org_1"},
                                                idempotency_key="customer-1")
        assert customer["id"].startswith("cus_") and customer["object"] == "customer"
        assert (customer["email"], customer["name"], customer["metadata"]) == ("ops@acme.example", "Acme",
                                                                               {"org": "org_1"})
        nameless = await client.create_customer(email=None, name="Beta", metadata={}, idempotency_key="customer-2")
        assert nameless["email"] is None and nameless["id"] != customer["id"]

    run(scenario)


def test_off_session_charge_of_the_saved_card_succeeds():
    async def scenario(base: str, client: Stripe, controls: aiohttp.ClientSession) -> None:
        session = await paid_checkout(client, controls)
        intent = await client.charge_off_session(customer=session["customer"], payment_method="pm_card_1",
                                                 amount_cents=2000, description="Auto top-up",
                                                 metadata={"org": "org_1"}, idempotency_key="topup-1")
        assert intent["id"].startswith("pi_") and intent["status"] == "succeeded"
        assert (intent["amount"], intent["amount_received"], intent["currency"]) == (2000, 2000, "usd")
        assert (intent["customer"], intent["payment_method"]) == (session["customer"], "pm_card_1")
        assert intent["metadata"] == {"org": "org_1"} and intent["latest_charge"].startswith("ch_")
        assert await client.retrieve_payment_intent(intent["id"]) == intent

    run(scenario)


def test_a_declined_off_session_charge_raises_with_the_decline_code():
    async def scenario(base: str, client: Stripe, controls: aiohttp.ClientSession) -> None:
        session = await paid_checkout(client, controls)
        await controls.post("/_fake/decline_next", json={"code": "insufficient_funds"})
        with pytest.raises(StripeError) as caught:
            await client.charge_off_session(customer=session["customer"], payment_method="pm_card_1",
                                            amount_cents=2000, description="Auto top-up", metadata={},
                                            idempotency_key="topup-declined")
        e = caught.value
        assert (e.status, e.type, e.code, e.decline_code) == (402, "card_error", "card_declined", "insufficient_funds")
        assert not e.retryable and e.request_id is not None and e.request_id.startswith("req_")
        assert e.payment_intent is not None and e.payment_intent["status"] == "requires_payment_method"
        assert e.payment_intent["last_payment_error"]["decline_code"] == "insufficient_funds"
        assert await client.retrieve_payment_intent(e.payment_intent["id"]) == e.payment_intent
        # The decline is the saved result of its key: retrying it declines again, charges nothing.
        with pytest.raises(StripeError) as again:
            await client.charge_off_session(customer=session["customer"], payment_method="pm_card_1",
                                            amount_cents=2000, description="Auto top-up", metadata={},
                                            idempotency_key="topup-declined")
        assert again.value.payment_intent == e.payment_intent

    run(scenario)


def test_refunds_up_to_what_was_paid():
    async def scenario(base: str, client: Stripe, controls: aiohttp.ClientSession) -> None:
        session = await paid_checkout(client, controls)
        refund = await client.refund(payment_intent=session["payment_intent"], amount_cents=400,
                                     metadata={"reason": "unused credits"}, idempotency_key="refund-1")
        assert refund["id"].startswith("re_") and refund["object"] == "refund"
        assert (refund["amount"], refund["status"], refund["payment_intent"]) == (
            400, "succeeded", session["payment_intent"])
        assert refund["metadata"] == {"reason": "unused credits"}
        with pytest.raises(StripeError) as too_much:
            await client.refund(payment_intent=session["payment_intent"], amount_cents=601, metadata={},
                                idempotency_key="refund-2")
        assert (too_much.value.status, too_much.value.param, too_much.value.retryable) == (400, "amount", False)
        await client.refund(payment_intent=session["payment_intent"], amount_cents=600, metadata={},
                            idempotency_key="refund-3")
        with pytest.raises(StripeError) as done:
            await client.refund(payment_intent=session["payment_intent"], amount_cents=1, metadata={},
                                idempotency_key="refund-4")
        assert done.value.code == "charge_already_refunded"

    run(scenario)


def test_an_idempotency_key_replays_its_result_and_refuses_other_parameters():
    async def scenario(base: str, client: Stripe, controls: aiohttp.ClientSession) -> None:
        first = await checkout(client, key="same")
        assert await checkout(client, key="same") == first
        assert (await checkout(client, key="other"))["id"] != first["id"]
        with pytest.raises(StripeError) as caught:
            await checkout(client, amount=2000, key="same")
        assert (caught.value.status, caught.value.type, caught.value.retryable) == (400, "idempotency_error", False)

    run(scenario)


def test_a_key_stripe_does_not_know_is_refused_401():
    async def scenario(base: str, client: Stripe, controls: aiohttp.ClientSession) -> None:
        live = Stripe(base, "sk_live_not_for_tests")
        try:
            with pytest.raises(StripeError) as caught:
                await live.create_customer(email=None, name="x", metadata={}, idempotency_key="k")
        finally:
            await live.close()
        e = caught.value
        assert (e.status, e.type, e.retryable) == (401, "invalid_request_error", False)
        assert "Invalid API Key provided: sk_live_" in e.message and "not_for_tests" not in e.message

    run(scenario)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_stripe_is_a_retryable_error():
    async def scenario() -> None:
        client = Stripe(f"http://127.0.0.1:{_free_port()}", KEY)
        try:
            with pytest.raises(StripeError) as caught:
                await client.retrieve_payment_intent("pi_1")
        finally:
            await client.close()
        assert (caught.value.status, caught.value.type, caught.value.retryable) == (None, "api_connection_error", True)

    asyncio.run(scenario())


def test_a_silent_stripe_times_out_into_a_retryable_error():
    async def scenario() -> None:
        accepted = asyncio.Event()

        async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.set()
            await reader.read()  # until the client gives up

        server = await asyncio.start_server(never_answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with aiohttp.ClientSession() as shared:
            client = Stripe(f"http://127.0.0.1:{port}", KEY, session=shared, timeout_s=0.2)
            with pytest.raises(StripeError) as caught:
                await client.refund(payment_intent="pi_1", amount_cents=100, metadata={}, idempotency_key="k")
            await client.close()
            assert not shared.closed  # a session passed in stays its owner's
        server.close()
        await server.wait_closed()
        assert accepted.is_set()
        assert (caught.value.status, caught.value.type, caught.value.retryable) == (None, "api_connection_error", True)

    asyncio.run(scenario())


def test_requests_carry_the_key_version_and_idempotency_key():
    async def scenario() -> None:
        seen: list[tuple[str, dict[str, str], bytes]] = []

        async def record(request: web.Request) -> web.Response:
            seen.append((request.method, dict(request.headers), await request.read()))
            return web.json_response({"id": "re_1", "object": "refund"})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        client = Stripe(f"http://127.0.0.1:{runner.addresses[0][1]}/", KEY)
        try:
            await client.refund(payment_intent="pi_1", amount_cents=100, metadata={}, idempotency_key="refund-k")
            with pytest.raises(StripeError, match="expected a payment_intent object"):
                await client.retrieve_payment_intent("pi_1")
        finally:
            await client.close()
            await runner.cleanup()
        (method, headers, body), (get, get_headers, _) = seen
        assert method == "POST" and get == "GET"
        assert headers["Authorization"] == f"Bearer {KEY}" and headers["Stripe-Version"] == STRIPE_VERSION
        assert headers["Idempotency-Key"] == "refund-k"
        assert headers["Content-Type"] == "application/x-www-form-urlencoded"
        assert parse_qsl(body.decode()) == [("payment_intent", "pi_1"), ("amount", "100")]
        assert "Idempotency-Key" not in get_headers and get_headers["Authorization"] == f"Bearer {KEY}"

    asyncio.run(scenario())
