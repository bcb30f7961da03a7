"""Buying credits through Stripe, end to end: a real gateway, the fake Stripe over HTTP (its
events signed and delivered to the gateway's webhook as Stripe delivers them), refunds,
auto top-up under concurrency and its failure path, invoices. Every test ends with the
ledger verified."""

from __future__ import annotations

import concurrent.futures
import io
import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pypdf
import pytest

from farebox.billing.stripe import sign_webhook
from farebox.sim.stripe import start as start_fake_stripe
from tests.e2e.conftest import client
from tests.e2e.procs import Gateway, http
from tests.simthread import running_sim

WEBHOOK_SECRET = "whsec_test_farebox"
MSG = [{"role": "user", "content": "Say something."}]


@pytest.fixture(scope="module")
def stripe_url() -> Iterator[str]:
    with running_sim(lambda: start_fake_stripe(port=0)) as url:
        yield url


def stripe_gateway(home: Path, sim_url: str, stripe_url: str, **settings: Any) -> Gateway:
    env = {"FAREBOX_STRIPE_SECRET_KEY": "sk_test_farebox", "FAREBOX_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
           "FAREBOX_STRIPE_API_BASE": stripe_url, "FAREBOX_AUTO_TOPUP_RETRY_S": "0.05"}
    env.update({f"FAREBOX_{k.upper()}": str(v) for k, v in settings.items()})
    gw = Gateway(home, sim_url, env).start()
    status, _, _ = http("POST", f"{stripe_url}/_fake/webhooks",
                        {"url": f"{gw.api}/stripe/webhook", "secret": WEBHOOK_SECRET})
    assert status == 200
    return gw


@pytest.fixture(scope="module")
def shared(sim_url: str, stripe_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = stripe_gateway(tmp_path_factory.mktemp("stripe-gw"), sim_url, stripe_url)
    yield gw
    gw.stop()


@pytest.fixture
def gw(shared: Gateway) -> Iterator[Gateway]:
    yield shared
    report = shared.verify()
    assert report["ok"], report


def call(gw: Gateway, method: str, path: str, org: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """A credits endpoint with the management key, acting on `org`."""
    sep = "&" if "?" in path else "?"
    status, data, _ = http(method, f"{gw.api}{path}{sep}organization={org}", body, key=gw.management_key)
    return status, data


def buy(gw: Gateway, stripe_url: str, org: str, amount: str, *, save_card: bool = True) -> dict[str, Any]:
    """Checkout and pay as the buyer would; returns the checkout answer. The fake delivers the
    Session's events (signed) to the gateway before the pay control answers."""
    status, started = call(gw, "POST", "/credits/checkout", org, {"amount": amount, "save_card": save_card})
    assert status == 201, started
    status, paid, _ = http("POST", f"{stripe_url}/_fake/checkout/sessions/{started['data']['checkout_id']}/complete",
                           {"email": f"billing@{org}.example"})
    assert status == 200, paid
    return started["data"]


def events(stripe_url: str, kind: str) -> list[dict[str, Any]]:
    status, _, _ = http("POST", f"{stripe_url}/_fake/webhooks/flush", {})   # background deliveries done
    assert status == 200
    status, data, _ = http("GET", f"{stripe_url}/_fake/events?type={kind}")
    assert status == 200
    return data["data"]


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- Checkout ---------------------------------------------------------------------------------

def test_a_checkout_credits_the_purchase_its_bonus_and_issues_an_invoice(gw, stripe_url, org_name):
    gw.org(org_name)
    started = buy(gw, stripe_url, org_name, "50")
    # $50 by card: a 5.5% fee ($2.75) charged on top, a 10% package bonus credited on top.
    assert (started["credits"], started["fee"], started["bonus"], started["charged"]) == (50, Decimal("2.75"), 5,
                                                                                          Decimal("52.75"))
    assert started["url"].startswith(stripe_url)
    session = events(stripe_url, "checkout.session.completed")[-1]["event"]["data"]["object"]
    assert session["amount_total"] == 5275 and session["client_reference_id"] == started["purchase_id"]
    assert gw.balance(org_name) == 55
    status, credits = call(gw, "GET", "/credits", org_name)
    assert status == 200
    data = credits["data"]
    assert (data["total_credits"], data["total_usage"], data["purchased"], data["bonus"]) == (55, 0, 50, 5)
    assert data["auto_topup"]["card_saved"] is True

    status, lots = call(gw, "GET", "/credits/lots", org_name)
    kinds = {lot["kind"]: lot for lot in lots["data"]}
    assert kinds["purchase"]["remaining"] == 50 and kinds["bonus"]["remaining"] == 5
    assert kinds["purchase"]["purchase_id"] == started["purchase_id"]
    assert kinds["purchase"]["expires_at"] is not None   # a year by default
    assert [lot["kind"] for lot in lots["data"]] == ["bonus", "purchase"]   # the draw order: promotional first

    status, listed = call(gw, "GET", "/credits/invoices", org_name)
    (invoice,) = listed["data"]
    assert (invoice["paid"], invoice["credited"], invoice["purchase_id"]) == (Decimal("52.75"), 55,
                                                                              started["purchase_id"])
    status, page, headers = http("GET", f"{gw.url}{invoice['html']}?organization={org_name}", key=gw.management_key)
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert invoice["number"] in page and "52.75" in page and f"billing@{org_name}.example" in page
    pdf = fetch_bytes(gw, f"{invoice['pdf']}?organization={org_name}")
    text = "".join(p.extract_text() for p in pypdf.PdfReader(io.BytesIO(pdf)).pages)
    assert invoice["number"] in text and "52.75" in text


def fetch_bytes(gw: Gateway, path: str) -> bytes:
    import urllib.request
    request = urllib.request.Request(gw.url + path, headers={"Authorization": f"Bearer {gw.management_key}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200 and response.headers["content-type"] == "application/pdf"
        return response.read()


def test_invoice_numbers_are_sequential_across_methods(gw, stripe_url, org_name):
    gw.org(org_name)
    buy(gw, stripe_url, org_name, "10")
    gw.admin("POST", f"/organizations/{org_name}/purchases", {"amount": "20", "method": "bank", "reference": "w-1"})
    buy(gw, stripe_url, org_name, "5")
    _status, listed = call(gw, "GET", "/credits/invoices", org_name)
    numbers = [i["id"] for i in listed["data"]]
    assert numbers == sorted(numbers) and len(numbers) == 3
    # Other organizations buy in between in other tests; ours are increasing and never reused.
    assert len(set(numbers)) == 3
    assert [i["payment_method"] for i in listed["data"]][1] == "bank transfer"


def test_a_replayed_or_resent_event_credits_nothing_more(gw, stripe_url, org_name):
    gw.org(org_name)
    buy(gw, stripe_url, org_name, "10")
    assert gw.balance(org_name) == 10
    completed = events(stripe_url, "checkout.session.completed")[-1]["event"]
    # Stripe resends an event (same id): acknowledged, nothing moves.
    status, resent, _ = http("POST", f"{stripe_url}/_fake/events/{completed['id']}/resend", {})
    assert status == 200, resent
    assert gw.balance(org_name) == 10
    # The same event replayed by anyone holding a valid signature: recognised by its id.
    payload = json.dumps(completed).encode()
    signature = sign_webhook(payload, WEBHOOK_SECRET, int(time.time()))
    status, body, _ = http("POST", f"{gw.api}/stripe/webhook", raw=payload, headers={"Stripe-Signature": signature})
    assert status == 200 and body["replayed"] is True
    # A new event id for the same Session (as if Stripe made two): the purchase id is the same.
    again = dict(completed, id="evt_second_delivery")
    payload = json.dumps(again).encode()
    status, body, _ = http("POST", f"{gw.api}/stripe/webhook", raw=payload,
                           headers={"Stripe-Signature": sign_webhook(payload, WEBHOOK_SECRET, int(time.time()))})
    assert status == 200 and body["action"] == "already credited"
    assert gw.balance(org_name) == 10


@pytest.mark.parametrize("forgery", ["wrong secret", "tampered body", "stale", "missing", "garbage"])
def test_a_forged_or_stale_webhook_is_refused_and_moves_nothing(gw, org_name, forgery):
    gw.org(org_name)
    meta = {"farebox_org": "0", "farebox_purchase": f"co-forged-{org_name}", "farebox_kind": "checkout",
            "credits": str(100 * 10**9), "fee": "0", "bonus": "0", "tax": "0"}
    event = {"id": f"evt_forged_{org_name}", "object": "event", "type": "checkout.session.completed",
             "data": {"object": {"id": "cs_forged", "object": "checkout.session", "payment_status": "paid",
                                 "amount_total": 10000, "metadata": meta, "payment_intent": "pi_x"}}}
    org_id = gw.admin("GET", f"/organizations/{org_name}")["data"]["id"]
    meta["farebox_org"] = str(org_id)
    payload = json.dumps(event).encode()
    now = int(time.time())
    headers = {
        "wrong secret": {"Stripe-Signature": sign_webhook(payload, "whsec_not_ours", now)},
        "tampered body": {"Stripe-Signature": sign_webhook(payload.replace(b"10000", b"10001"), WEBHOOK_SECRET, now)},
        "stale": {"Stripe-Signature": sign_webhook(payload, WEBHOOK_SECRET, now - 3600)},
        "missing": {},
        "garbage": {"Stripe-Signature": "t=abc,v1=zz"},
    }[forgery]
    status, body, _ = http("POST", f"{gw.api}/stripe/webhook", raw=payload, headers=headers)
    assert status == 400 and "signature" in body["error"]["message"].lower()
    assert gw.balance(org_name) == 0


def test_checkout_refuses_bad_amounts_with_a_clear_error(gw, org_name):
    gw.org(org_name)
    for amount, needle in (("4.99", "between"), ("10.001", "whole number of cents"), ("ten", "amount"),
                           (None, "amount")):
        status, body = call(gw, "POST", "/credits/checkout", org_name, {"amount": amount})
        assert status == 400 and needle in body["error"]["message"], body


def test_checkout_without_stripe_configured_is_a_clear_402(gateway, org_name):
    gateway.org(org_name)
    status, body, _ = http("POST", f"{gateway.api}/credits/checkout?organization={org_name}", {"amount": "10"},
                           key=gateway.management_key)
    assert status == 402 and "not configured" in body["error"]["message"]


# -- refunds --------------------------------------------------------------------------------

def test_a_refund_pays_back_the_unused_credit_keeps_the_fee_and_forfeits_the_bonus(gw, stripe_url, org_name):
    gw.org(org_name)
    started = buy(gw, stripe_url, org_name, "50")
    key, _ = gw.key(org_name)
    # Spend some: the bonus lot (promotional) pays first.
    spent = Decimal(0)
    for _ in range(3):
        reply = client(gw, key).chat.completions.create(
            model="sim/large", messages=[{"role": "user", "content": "x " * 4000}], max_tokens=2000)
        spent += Decimal(str(reply.usage.model_extra["cost"]))
    assert gw.balance(org_name) == 55 - spent
    pid = started["purchase_id"]
    status, refund = call(gw, "POST", f"/credits/purchases/{pid}/refund", org_name)
    assert status == 200, refund
    bonus_left = max(Decimal(5) - spent, Decimal(0))
    from_purchase = spent - (Decimal(5) - bonus_left)
    unused = Decimal(50) - from_purchase
    expected = unused.quantize(Decimal("0.01"), rounding="ROUND_DOWN")
    assert refund["data"] == {"purchase_id": pid, "amount": expected, "bonus_forfeited": bonus_left,
                              "status": "succeeded"}
    # What is left is the sub-cent remainder of the purchase lot.
    assert gw.balance(org_name) == unused - expected
    (created,) = [e for e in events(stripe_url, "refund.created")
                  if e["event"]["data"]["object"]["metadata"].get("farebox_purchase") == pid]
    assert created["event"]["data"]["object"]["amount"] == int(expected * 100)   # the fee is not refunded
    # Idempotent: asking again answers the same refund and moves nothing.
    status, again = call(gw, "POST", f"/credits/purchases/{pid}/refund", org_name)
    assert status == 200 and again["data"] == refund["data"]
    assert len([e for e in events(stripe_url, "refund.created")
                if e["event"]["data"]["object"]["metadata"].get("farebox_purchase") == pid]) == 1
    status, credits = call(gw, "GET", "/credits", org_name)
    assert credits["data"]["refunded"] == expected and credits["data"]["forfeited"] == bonus_left
    assert credits["data"]["total_credits"] - credits["data"]["total_usage"] == gw.balance(org_name)
    status, purchases = call(gw, "GET", "/credits/purchases", org_name)
    (row,) = purchases["data"]
    assert row["refund"]["status"] == "succeeded" and row["refundable"] is False


def test_a_refund_is_whole_cents_of_what_the_purchase_has_left(gw, stripe_url, org_name):
    gw.org(org_name)
    started = buy(gw, stripe_url, org_name, "10")   # no package bonus: spending draws on the purchase
    key, _ = gw.key(org_name)
    cost = Decimal(str(client(gw, key).chat.completions.create(model="sim/small", messages=MSG)
                       .usage.model_extra["cost"]))
    status, refund = call(gw, "POST", f"/credits/purchases/{started['purchase_id']}/refund", org_name)
    assert status == 200, refund
    left = Decimal(10) - cost
    assert refund["data"]["amount"] == left.quantize(Decimal("0.01"), rounding="ROUND_DOWN")
    assert refund["data"]["bonus_forfeited"] == 0
    assert gw.balance(org_name) == left - refund["data"]["amount"] > 0   # the sub-cent remainder stays


def test_a_refund_stripe_refuses_puts_the_credit_and_bonus_back(gw, stripe_url, org_name):
    gw.org(org_name)
    started = buy(gw, stripe_url, org_name, "50")
    session = next(e for e in events(stripe_url, "checkout.session.completed")
               if e["event"]["data"]["object"]["client_reference_id"] == started["purchase_id"])
    intent = session["event"]["data"]["object"]["payment_intent"]
    # Someone refunded the whole charge in Stripe's dashboard: Stripe refuses a second refund.
    status, _, _ = http("POST", f"{stripe_url}/v1/refunds", raw=f"payment_intent={intent}".encode(),
                        headers={"Authorization": "Bearer sk_test_dashboard", "Idempotency-Key": f"dash-{intent}",
                                 "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    status, body = call(gw, "POST", f"/credits/purchases/{started['purchase_id']}/refund", org_name)
    assert status == 402 and "refused" in body["error"]["message"]
    assert gw.balance(org_name) == 55    # credit and bonus restored, as lots of the same purchase
    status, lots = call(gw, "GET", "/credits/lots", org_name)
    assert sorted((lot["kind"], lot["remaining"], lot["purchase_id"]) for lot in lots["data"]) == [
        ("bonus", 5, started["purchase_id"]), ("purchase", 50, started["purchase_id"])]
    status, purchases = call(gw, "POST", f"/credits/purchases/{started['purchase_id']}/refund", org_name)
    assert status == 200 and purchases["data"]["status"] == "failed"   # decided: asking again moves nothing
    assert gw.balance(org_name) == 55
    status, credits = call(gw, "GET", "/credits", org_name)
    assert (credits["data"]["refunded"], credits["data"]["total_credits"]) == (0, 55)


def test_crypto_and_bank_purchases_are_not_refunded_through_the_rail(gw, org_name):
    gw.org(org_name)
    for method in ("crypto", "bank"):
        gw.admin("POST", f"/organizations/{org_name}/purchases",
                 {"amount": "20", "method": method, "reference": f"{method}-1"})
        status, body = call(gw, "POST", f"/credits/purchases/manual:{method}-1/refund", org_name)
        assert status == 400, body
        assert ("never refunded" if method == "crypto" else "by hand") in body["error"]["message"]
    status, body = call(gw, "POST", "/credits/purchases/co-nope/refund", org_name)
    assert status == 404
    assert gw.balance(org_name) == 40


def test_a_refund_after_the_window_is_refused(sim_url, stripe_url, tmp_path, org_name):
    gw = stripe_gateway(tmp_path / "gw", sim_url, stripe_url, refund_window_hours="0.0000001")
    try:
        gw.org(org_name)
        started = buy(gw, stripe_url, org_name, "10")
        time.sleep(0.01)   # past a window of a third of a millisecond
        status, body = call(gw, "POST", f"/credits/purchases/{started['purchase_id']}/refund", org_name)
        assert status == 400 and "window" in body["error"]["message"]
        assert gw.balance(org_name) == 10
        assert gw.verify()["ok"]
    finally:
        gw.stop()


# -- auto top-up ----------------------------------------------------------------------------

def test_hundreds_of_requests_crossing_the_threshold_start_exactly_one_top_up(gw, stripe_url, org_name):
    gw.org(org_name)
    buy(gw, stripe_url, org_name, "10")          # saves the card
    key, _ = gw.key(org_name)
    threshold = Decimal("9.9995")
    status, body = call(gw, "PUT", "/credits/auto-topup", org_name,
                        {"enabled": True, "threshold": str(threshold), "amount": "25"})
    assert status == 200 and body["data"]["enabled"] is True
    openai_client = client(gw, key)

    def one(_: int) -> Decimal:
        reply = openai_client.chat.completions.create(model="sim/small", messages=MSG, max_tokens=50)
        return Decimal(str(reply.usage.model_extra["cost"]))

    with concurrent.futures.ThreadPoolExecutor(64) as pool:
        costs = list(pool.map(one, range(300)))
    assert sum(costs) > Decimal(10) - threshold     # the requests did cross it
    done = wait_for(lambda: (lambda d: d if d and d[0]["status"] != "pending" else None)(
        call(gw, "GET", "/credits/topups", org_name)[1]["data"]), "the top-up")
    assert len(done) == 1 and done[0]["status"] == "paid", done
    intents = [e for e in events(stripe_url, "payment_intent.succeeded")
               if e["event"]["data"]["object"]["metadata"].get("farebox_purchase") == done[0]["purchase_id"]]
    assert len(intents) == 1 and intents[0]["event"]["data"]["object"]["amount"] == 2638   # $25 + 5.5% = $26.375 -> 26.38
    gw.wait_idle()
    assert gw.balance(org_name) == 10 + 25 - sum(costs)   # $25 has no package bonus
    status, listed = call(gw, "GET", "/credits/invoices", org_name)
    assert [i["purchase_id"] for i in listed["data"]][-1] == done[0]["purchase_id"]
    assert listed["data"][-1]["payment_method"] == "card (auto top-up)"


def test_a_top_up_that_keeps_failing_is_retried_then_disabled(sim_url, stripe_url, tmp_path, org_name):
    gw = stripe_gateway(tmp_path / "gw", sim_url, stripe_url, auto_topup_attempts="3")
    try:
        gw.org(org_name)
        buy(gw, stripe_url, org_name, "5")
        for _ in range(3):
            status, _, _ = http("POST", f"{stripe_url}/_fake/decline_next", {"code": "insufficient_funds"})
            assert status == 200
        status, _body = call(gw, "PUT", "/credits/auto-topup", org_name,
                            {"enabled": True, "threshold": "6", "amount": "10"})  # already below: starts now
        assert status == 200
        done = wait_for(lambda: (lambda d: d if d and d[0]["status"] != "pending" else None)(
            call(gw, "GET", "/credits/topups", org_name)[1]["data"]), "the top-up to give up")
        assert done[0]["status"] == "failed" and done[0]["attempts"] == 3
        assert "insufficient" in done[0]["error"].lower() or "declined" in done[0]["error"].lower()
        status, topup = call(gw, "GET", "/credits/auto-topup", org_name)
        assert topup["data"]["enabled"] is False and "failed 3 time(s)" in topup["data"]["disabled_reason"]
        assert gw.balance(org_name) == 5
        failed = [e for e in events(stripe_url, "payment_intent.payment_failed")
                  if e["event"]["data"]["object"]["metadata"].get("farebox_purchase") == done[0]["purchase_id"]]
        assert len(failed) == 3, (done, failed)  # three attempts, each a new idempotency key after a decline
        assert gw.verify()["ok"]
    finally:
        gw.stop()


def test_a_restart_resumes_an_interrupted_top_up_and_charges_once(sim_url, stripe_url, tmp_path, org_name):
    home = tmp_path / "gw"
    gw = stripe_gateway(home, sim_url, stripe_url, auto_topup_retry_s="3600")
    try:
        gw.org(org_name)
        started = buy(gw, stripe_url, org_name, "5")
        customer = next(e for e in events(stripe_url, "checkout.session.completed")
                        if e["event"]["data"]["object"]["client_reference_id"] == started["purchase_id"]
                        )["event"]["data"]["object"]["customer"]
        status, _, _ = http("POST", f"{stripe_url}/_fake/decline_next", {"code": "card_declined"})
        assert status == 200
        status, _ = call(gw, "PUT", "/credits/auto-topup", org_name, {"enabled": True, "threshold": "6", "amount": "10"})
        assert status == 200
        # The first attempt is declined; the retry would wait an hour. The process dies meanwhile.
        wait_for(lambda: call(gw, "GET", "/credits/topups", org_name)[1]["data"][0]["attempts"] == 1, "a decline")
    finally:
        gw.kill()
    gw = stripe_gateway(home, sim_url, stripe_url, auto_topup_retry_s="0.05")
    try:
        done = wait_for(lambda: (lambda d: d if d[0]["status"] != "pending" else None)(
            call(gw, "GET", "/credits/topups", org_name)[1]["data"]), "the resumed top-up")
        assert len(done) == 1 and (done[0]["status"], done[0]["attempts"]) == ("paid", 2), done
        paid = [e for e in events(stripe_url, "payment_intent.succeeded")
                if e["event"]["data"]["object"]["customer"] == customer
                and e["event"]["data"]["object"]["metadata"].get("farebox_kind") == "topup"]
        assert len(paid) == 1
        assert gw.balance(org_name) == 15
        assert gw.verify()["ok"]
    finally:
        gw.stop()


def test_auto_top_up_needs_a_saved_card_and_valid_terms(gw, org_name):
    gw.org(org_name, "5")
    status, body = call(gw, "PUT", "/credits/auto-topup", org_name, {"enabled": True, "threshold": "1", "amount": "10"})
    assert status == 400 and "card" in body["error"]["message"]
    status, body = call(gw, "PUT", "/credits/auto-topup", org_name, {"enabled": "yes"})
    assert status == 400 and body["error"]["metadata"]["field"] == "enabled"
    status, body = call(gw, "PUT", "/credits/auto-topup", org_name, {"enabled": True, "threshold": "1"})
    assert status == 400
