"""BYOK end to end: a workspace's own provider key is tried first, billed as a fee on the
list price after the monthly allowance, reported with `is_byok`, falls back to shared
capacity when refused unless "always use" is set, and counts in key limits only with
`include_byok_in_limit`."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from decimal import Decimal

from tests.e2e.conftest import client
from tests.e2e.procs import Gateway, http

MSG = [{"role": "user", "content": "hi"}]
LIST = Decimal("0.0000168")   # sim/small, "hi", the simulator's deterministic reply


def sim_keys(sim_url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{sim_url}/_sim/keys", timeout=10) as r:
        return json.loads(r.read())


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def add_byok(gw: Gateway, org: str, key: str, **options: object) -> dict:
    body = {"organization": org, "provider": "sim", "api_key": key, **options}
    status, data, _ = http("POST", gw.api + "/byok", body, gw.management_key)
    assert status == 201, data
    return data["data"]


def ask(gw: Gateway, key: str, **kw: object):  # type: ignore[no-untyped-def]
    return client(gw, key).chat.completions.create(model="sim/small", messages=MSG, max_tokens=50, **kw)


def test_own_key_is_used_and_billed_as_a_fee_after_the_allowance(make_gateway, sim_url, org_name):
    # An allowance of one request's list price: the first is free, the second pays 5% on what
    # exceeds the allowance, the third 5% of all of it.
    gw = make_gateway(byok_monthly_allowance_usd="0.00002", byok_fee_percent="5")
    gw.org(org_name, "1.00")
    key, _ = gw.key(org_name)
    own = f"sk-sim-own-{org_name}-fee"
    add_byok(gw, org_name, own)
    before = gw.balance(org_name)

    replies = [ask(gw, key) for _ in range(3)]
    for reply in replies:
        usage = reply.model_dump()["usage"]
        assert usage["is_byok"] is True
        assert Decimal(str(usage["cost_details"]["upstream_inference_cost"])) == LIST
    fees = [Decimal(str(r.usage.model_dump()["cost"])) for r in replies]
    assert fees == [Decimal(0), (LIST * 2 - Decimal("0.00002")) * Decimal("0.05"), LIST * Decimal("0.05")]
    assert gw.balance(org_name) == before - sum(fees)
    assert sim_keys(sim_url)[fingerprint(own)] == 3   # the provider saw the workspace's key

    status, data, _ = http("GET", f"{gw.api}/generation?id={replies[2].id}", key=key)
    assert status == 200
    gen = data["data"]
    assert gen["is_byok"] is True and gen["upstream_inference_cost"] == LIST
    assert gen["usage"] == fees[2] and gen["provider_responses"][-1]["is_byok"] is True

    status, data, _ = http("GET", f"{gw.api}/key", key=key)
    assert data["data"]["byok_usage"] == LIST * 3 and data["data"]["usage"] == sum(fees)


def test_a_refused_own_key_falls_back_to_shared_capacity(gateway, sim_url, org_name):
    gw = gateway
    gw.org(org_name, "1.00")
    key, _ = gw.key(org_name)
    bad = f"sk-sim-invalid-{org_name}"
    add_byok(gw, org_name, bad)
    before = gw.balance(org_name)
    reply = ask(gw, key)
    usage = reply.model_dump()["usage"]
    assert usage["is_byok"] is False                     # served on shared capacity
    assert Decimal(str(usage["cost"])) == LIST           # and billed at list price from credits
    assert gw.balance(org_name) == before - LIST
    _, data, _ = http("GET", f"{gw.api}/generation?id={reply.id}", key=key)
    attempts = data["data"]["provider_responses"]
    assert [(a["is_byok"], a["status"]) for a in attempts] == [(True, 502), (False, 200)]
    # The workspace's bad key did not put the endpoint in outage for everyone else.
    other_key, _ = gw.key(gw.org(org_name + "-b", "1.00"))
    for _ in range(4):
        ask(gw, key)
    assert ask(gw, other_key).usage.model_dump()["is_byok"] is False


def test_always_use_never_falls_back(gateway, org_name):
    gw = gateway
    gw.org(org_name, "1.00")
    key, _ = gw.key(org_name)
    add_byok(gw, org_name, f"sk-sim-invalid-{org_name}-always", always_use=True)
    before = gw.balance(org_name)
    status, data, _ = http("POST", f"{gw.api}/chat/completions",
                           {"model": "sim/small", "messages": MSG, "max_tokens": 50}, key)
    assert status == 502, data
    assert data["error"]["metadata"]["error_type"] == "authentication"
    assert gw.balance(org_name) == before                # nothing billed, nothing held
    gw.wait_idle()


def test_byok_counts_in_a_key_limit_only_when_asked(make_gateway, org_name):
    gw = make_gateway(byok_monthly_allowance_usd="0")
    gw.org(org_name, "1.00")
    add_byok(gw, org_name, f"sk-sim-own-{org_name}-limit")
    fee = LIST * Decimal("0.05")
    # A limit a few fees wide: without BYOK counted, requests pass on their fees alone; with
    # BYOK counted, the list price is reserved on the limit too and the first cannot fit.
    limit = "0.00001"
    plain, _ = gw.key(org_name, name="plain", limit=limit)
    counted, _ = gw.key(org_name, name="counted", limit=limit, include_byok_in_limit=True)
    for _ in range(2):
        assert Decimal(str(ask(gw, plain).usage.model_dump()["cost"])) == fee
    status, data, _ = http("POST", f"{gw.api}/chat/completions",
                           {"model": "sim/small", "messages": MSG, "max_tokens": 50}, counted)
    assert status == 402 and data["error"]["metadata"]["limit_source"] == "key", data
    status, data, _ = http("GET", f"{gw.api}/key", key=plain)
    assert data["data"]["usage"] == fee * 2 and data["data"]["byok_usage"] == LIST * 2
    assert data["data"]["limit_remaining"] == Decimal(limit) - fee * 2


def test_a_provider_without_a_shared_key_is_reachable_with_byok(gateway, sim_url, org_name):
    # `sim/keyed` is served only by a provider whose key the operator never configured
    # (tests/e2e/procs.py KEYED): unroutable for everyone but a workspace with its own key.
    gw = gateway
    gw.org(org_name, "1.00")
    key, _ = gw.key(org_name)
    body = {"model": "sim/keyed", "messages": MSG, "max_tokens": 50}
    status, data, _ = http("POST", f"{gw.api}/chat/completions", body, key)
    assert status == 404, data
    own = f"sk-sim-own-{org_name}-keyed"
    add_byok(gw, org_name, own, provider="sim-keyed")
    status, data, _ = http("POST", f"{gw.api}/chat/completions", body, key)
    assert status == 200, data
    assert data["usage"]["is_byok"] is True and sim_keys(sim_url)[fingerprint(own)] == 1
