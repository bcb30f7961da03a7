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

import html
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
import orjson
from aiohttp import web

from farebox.billing.stripe import STRIPE_VERSION
from farebox.clock import Clock
from farebox.ids import Ids
from farebox.sim import stripe_params as p
from farebox.sim.stripe_params import ApiError, Obj, parse_form
from farebox.sim.stripe_state import (
    DELIVERY_TIMEOUT_S,
    Call,
    FakeStripe,
    Saved,
    Sent,
    WebhookEndpoint,
)

_NO_KEY = ("You did not provide an API key. You need to provide your API key in the Authorization header, "
           "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY').")

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


Create = Callable[[FakeStripe, Call, Obj], tuple[int, Obj]]
Retrieve = Callable[[FakeStripe, Call, Obj, str], tuple[int, Obj]]


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
        call = Call(request_id, key, f"{request.scheme}://{request.host}")
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
            fake.saved[key] = Saved(endpoint, params, status, body, request_id)
        fake.deliver_later(call.events)
        return web.Response(body=body, status=status, content_type="application/json", headers=headers)

    return serve


def _replay(saved: Saved, endpoint: str, params: Obj, key: str | None, headers: dict[str, str]) -> web.Response:
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


def _summary(sent: Sent) -> Obj:
    return {"id": sent.event["id"], "type": sent.event["type"], "deliveries": sent.deliveries}


async def _register_webhook(fake: FakeStripe, request: web.Request, body: Obj) -> web.Response:
    url, secret, enabled = body.get("url"), body.get("secret"), body.get("enabled_events", ["*"])
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ApiError(400, "url must be an http(s) URL", param="url")
    if secret is not None and (not isinstance(secret, str) or not secret):
        raise ApiError(400, "secret must be a non-empty string", param="secret")
    if not isinstance(enabled, list) or not enabled or not all(isinstance(e, str) for e in enabled):
        raise ApiError(400, "enabled_events must be a non-empty list of event types", param="enabled_events")
    endpoint = WebhookEndpoint(fake.new_id("we"), url, secret or f"whsec_{fake.ids.hex(16)}", enabled)
    fake.endpoints.append(endpoint)
    return _json({"id": endpoint.id, "object": "webhook_endpoint", "url": url, "secret": endpoint.secret,
                  "enabled_events": enabled})


async def _complete_checkout(fake: FakeStripe, request: web.Request, body: Obj) -> web.StreamResponse:
    session_id = request.match_info["id"]
    if session_id not in fake.sessions:
        raise p.no_such("checkout.session", session_id, "session", 404)
    pm_id, email = body.get("payment_method"), body.get("email")
    if not isinstance(pm_id, str | None) or not isinstance(email, str | None):
        raise ApiError(400, "payment_method and email must be strings")
    call = Call(None, None, f"{request.scheme}://{request.host}")
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
    if code not in p.DECLINES:
        raise ApiError(400, f"code must be one of {', '.join(p.DECLINES)}", param="code")
    fake.declines.append(code)
    return _json({"queued": fake.declines})


async def _resend(fake: FakeStripe, request: web.Request, body: Obj) -> web.Response:
    sent = fake.events.get(request.match_info["id"])
    if sent is None:
        raise p.no_such("event", request.match_info["id"], "id", 404)
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
    fake.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DELIVERY_TIMEOUT_S))
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
