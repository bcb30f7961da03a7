"""Routing through a real gateway and simulator: one model served by four simulated
providers (sim/open), preferences, explained refusals, middle-out, stickiness, the
endpoints statistics, and fault injection with exact billing."""

from __future__ import annotations

import time
from collections import Counter
from decimal import Decimal

import openai
import pytest

from tests.e2e.conftest import client
from tests.e2e.procs import http

OPEN = {  # provider display name -> (prompt, completion) USD per token, from sim_catalog
    "Farebox Simulator (Budget)": (Decimal("0.0000001"), Decimal("0.0000004")),
    "Farebox Simulator (Flaky)": (Decimal("0.00000015"), Decimal("0.0000006")),
    "Farebox Simulator": (Decimal("0.0000002"), Decimal("0.0000008")),
    "Farebox Simulator (Fast)": (Decimal("0.0000006"), Decimal("0.0000024")),
}
HI = [{"role": "user", "content": "hi"}]
PRICES = {"Farebox Simulator": (Decimal("0.00000015"), Decimal("0.0000006")),
          "Faulty: half": (Decimal("0.0000001"), Decimal("0.0000004"))}


def ask(gw, key, model="sim/open", messages=HI, **kw):
    return client(gw, key).chat.completions.create(model=model, messages=messages, **kw)


def generation(gw, key, gen_id):
    status, data, _ = http("GET", f"{gw.api}/generation?id={gen_id}", key=key)
    assert status == 200, data
    return data["data"]


def test_one_model_many_providers_each_billed_at_its_own_price(funded):
    gw, org, key = funded
    before = gw.balance(org)
    served: Counter[str] = Counter()
    spent = Decimal(0)
    for _ in range(120):
        completion = ask(gw, key, max_tokens=50)
        name = completion.model_extra["provider"]
        served[name] += 1
        prompt, out = OPEN[name]
        cost = Decimal(str(completion.usage.model_extra["cost"]))
        assert cost == completion.usage.prompt_tokens * prompt + completion.usage.completion_tokens * out
        spent += cost
        assert completion.model == "sim/open"
    # Load balancing favours the cheapest: Budget has 1/price² weight 2.25x Flaky's, 4x the main one's.
    # Over 120 draws another provider comes out ahead about once in 100,000 runs (40 draws: 1 in 125).
    assert served["Farebox Simulator (Budget)"] == max(served.values())
    assert gw.balance(org) == before - spent


def test_flaky_provider_failures_are_failed_over(funded):
    gw, _, key = funded
    failed_over = 0
    for _ in range(30):
        completion = ask(gw, key, extra_body={"provider": {"order": ["sim-flaky"]}})
        attempts = generation(gw, key, completion.id)["provider_responses"]
        assert attempts[-1]["status"] == 200
        failed_over += attempts[0]["status"] == 503
    assert failed_over > 0  # fail_rate=0.5: all 30 succeeding first time has probability 1e-9


def test_preferences_shape_the_route(funded):
    gw, _, key = funded
    only = ask(gw, key, extra_body={"provider": {"only": ["sim-fast"]}})
    assert only.model_extra["provider"] == "Farebox Simulator (Fast)"
    for _ in range(5):
        private = ask(gw, key, extra_body={"provider": {"data_collection": "deny", "ignore": ["sim-flaky"]}})
        assert private.model_extra["provider"] != "Farebox Simulator (Budget)"
        zdr = ask(gw, key, extra_body={"provider": {"zdr": True}})
        assert zdr.model_extra["provider"] in ("Farebox Simulator", "Farebox Simulator (Fast)")
        floor = ask(gw, key, model="sim/open:floor")
        assert floor.model_extra["provider"] == "Farebox Simulator (Budget)"
        assert floor.model == "sim/open"
    big = ask(gw, key, max_tokens=20000, extra_body={"provider": {"sort": "price"}})
    assert big.model_extra["provider"] == "Farebox Simulator (Fast)"  # the only one allowing 20000 tokens
    quant = ask(gw, key, extra_body={"provider": {"quantizations": ["bf16"]}})
    assert quant.model_extra["provider"] == "Farebox Simulator (Fast)"


def test_a_refusal_explains_every_excluded_endpoint(funded):
    gw, org, key = funded
    before = gw.balance(org)
    body = {"model": "sim/open", "messages": HI, "provider": {"max_price": {"completion": 0.5}, "ignore": ["sim-budget"]}}
    status, data, _ = http("POST", f"{gw.api}/chat/completions", body, key=key)
    assert status == 404
    meta = data["error"]["metadata"]
    assert meta["availability"]["code"] == "constraint_filtered"
    assert meta["availability"]["excluded_by"] == ["ignored_providers", "max_price"]
    reasons = {x["endpoint"]: x["excluded_by"] for x in meta["excluded"]}
    assert reasons == {"sim-budget/sim-open": "ignored_providers", "sim-flaky/sim-open": "max_price",
                       "sim/sim-open": "max_price", "sim-fast/sim-open": "max_price"}
    assert "max_price" in data["error"]["message"]
    status, data, _ = http("POST", f"{gw.api}/chat/completions",
                           {"model": "sim/open", "messages": HI, "provider": {"sort": "exacto"}}, key=key)
    assert status == 400 and data["error"]["metadata"]["field"].startswith("provider.sort")
    assert gw.balance(org) == before


def test_too_long_for_every_endpoint_is_a_400_unless_middle_out_compresses_it(funded):
    gw, org, key = funded
    # 40 messages of 16 KB: about 160,000 tokens against sim/small's 128,000.
    messages = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"{i} " + "word " * 3200}
                for i in range(40)]
    messages[-1] = {"role": "user", "content": "and finally: summarise"}
    before = gw.balance(org)
    status, data, _ = http("POST", f"{gw.api}/chat/completions", {"model": "sim/small", "messages": messages},
                           key=key)
    assert status == 400 and data["error"]["metadata"]["error_type"] == "context_length_exceeded"
    assert "128000" in data["error"]["message"]
    assert gw.balance(org) == before
    completion = ask(gw, key, model="sim/small", messages=messages, max_tokens=100,
                     extra_body={"transforms": ["middle-out"]})
    assert completion.choices[0].message.content
    assert completion.usage.prompt_tokens + 100 <= 128000


def test_a_session_sticks_to_the_endpoint_holding_its_cache(funded):
    gw, _, key = funded
    names = set()
    for _ in range(8):
        completion = ask(gw, key, extra_body={"session_id": "chat-42",
                                              "provider": {"only": ["sim", "sim-fast"]}})
        names.add(completion.model_extra["provider"])
    assert len(names) == 1
    # Another conversation is balanced afresh (and may land elsewhere); with `order` there is no stickiness.
    ordered = ask(gw, key, extra_body={"session_id": "chat-42", "provider": {"order": ["sim-fast", "sim"]}})
    assert ordered.model_extra["provider"] == "Farebox Simulator (Fast)"


def test_endpoints_statistics(funded):
    gw, _, key = funded
    for _ in range(6):
        ask(gw, key, stream=True, extra_body={"provider": {"order": ["sim"]}}).close()
        list(ask(gw, key, stream=True, extra_body={"provider": {"order": ["sim-fast"]}}))
    status, data, _ = http("GET", f"{gw.api}/models/sim/open/endpoints", key=key)
    assert status == 200
    endpoints = {e["tag"]: e for e in data["data"]["endpoints"]}
    assert set(endpoints) == {"sim", "sim-budget", "sim-fast", "sim-flaky"}
    fast = endpoints["sim-fast"]
    assert fast["uptime_last_5m"] == 100.0 and fast["status"] == 0
    assert set(fast["latency_last_30m"]) == {"p50", "p75", "p90", "p99"}
    assert fast["throughput_last_30m"]["p50"] > 0
    assert fast["quantization"] == "bf16" and fast["context_length"] == 131072
    assert endpoints["sim-budget"]["data_policy"] == {"training": True, "retains_prompts": True}
    # Without a key: no latency or throughput, as on OpenRouter.
    _, anonymous, _ = http("GET", f"{gw.api}/models/sim/open/endpoints")
    fast = next(e for e in anonymous["data"]["endpoints"] if e["tag"] == "sim-fast")
    assert fast["latency_last_30m"] is None and fast["uptime_last_5m"] == 100.0


# ---------------------------------------------------------------- fault injection


@pytest.fixture
def faulty(make_gateway):
    settings = {"attempts_max": 6, "attempts_timeout_s": 8, "upstream_first_byte_timeout_s": 1,
                "upstream_idle_timeout_s": 1, "upstream_timeout_s": 1.5, "hold_timeout_s": 5}
    gw = make_gateway(**settings)
    gw.org("ff", "20.00")
    key, _ = gw.key("ff")
    return gw, key, settings


@pytest.mark.parametrize("stream", [False, True])
def test_fault_injection_requests_succeed_within_bounds_and_bill_exactly(faulty, stream):
    """Five faulty endpoints (always 503, 503 half the time, hanging, garbage, a stream cut
    before its first token) are all cheaper than the one good endpoint, so routing meets
    them first. Every request still succeeds, within the attempt budget, billed exactly what
    the good endpoint charged; the gateway's fixture verifies the ledger afterwards."""
    gw, key, settings = faulty
    before = gw.balance("ff")
    spent = Decimal(0)
    api = client(gw, key, timeout=30)
    for _ in range(8):
        started = time.monotonic()
        response = api.chat.completions.create(model="sim/faulty", messages=HI, stream=stream, max_tokens=20)
        if stream:
            chunks = list(response)
            gen_id, usage = chunks[0].id, chunks[-1].usage
        else:
            gen_id, usage = response.id, response.usage
        elapsed = time.monotonic() - started
        # No new attempt starts after attempts_timeout_s; the one running then has at most
        # its own upstream timeout left, and the answer itself is quick.
        assert elapsed < settings["attempts_timeout_s"] + settings["upstream_timeout_s"] + 2
        record = generation(gw, key, gen_id)
        # The good endpoint, or the half-failing one on a good turn.
        prompt, out = PRICES[record["provider_name"]]
        attempts = record["provider_responses"]
        assert attempts[-1]["status"] == 200 and all(a["status"] != 200 for a in attempts[:-1])
        cost = Decimal(str(usage.model_extra["cost"]))
        assert cost == usage.prompt_tokens * prompt + usage.completion_tokens * out
        assert Decimal(str(record["usage"])) == cost
        spent += cost
    assert gw.balance("ff") == before - spent
    # Health saw it: the good endpoint is healthy; the always-failing ones that were tried
    # (after one failure they are unstable and go after the good one) have 0% uptime.
    _, data, _ = http("GET", f"{gw.api}/models/sim/faulty/endpoints", key=key)
    endpoints = {e["tag"]: e for e in data["data"]["endpoints"]}
    assert endpoints["sim"]["status"] == 0 and endpoints["sim"]["uptime_last_5m"] == 100.0
    tried = [endpoints[f"sim-{name}"] for name in ("down", "hang", "garbage", "cut")
             if endpoints[f"sim-{name}"]["uptime_last_5m"] is not None]
    assert len(tried) >= 2 and all(e["uptime_last_5m"] == 0.0 and e["status"] in (-1, -2) for e in tried)


def test_fault_injection_client_errors_are_not_retried(faulty):
    gw, key, _ = faulty
    before = gw.balance("ff")
    with pytest.raises(openai.BadRequestError):
        # (Not the half-failing endpoint: its fail_rate would answer half of these normally.)
        client(gw, key).chat.completions.create(
            model="sim/faulty", messages=[{"role": "user", "content": "x [[sim status=400]]"}],
            extra_body={"provider": {"ignore": ["sim-half"]}})
    assert gw.balance("ff") == before


def test_a_static_thinking_variant_turns_reasoning_on_by_default(funded):
    gw, _, key = funded
    plain = ask(gw, key, model="sim/claude")
    thinking = ask(gw, key, model="sim/claude:thinking")
    assert not plain.choices[0].message.model_extra.get("reasoning")
    assert thinking.choices[0].message.model_extra["reasoning"]
    assert thinking.model == "sim/claude:thinking"
    # The client's own choice still wins over the variant's default.
    off = ask(gw, key, model="sim/claude:thinking", extra_body={"reasoning": {"effort": "none"}})
    assert not off.choices[0].message.model_extra.get("reasoning")
    _, models, _ = http("GET", f"{gw.api}/models")
    listed = {m["id"]: m for m in models["data"]}
    assert listed["sim/claude:thinking"]["default_parameters"] == {"reasoning": {"max_tokens": 2048}}
