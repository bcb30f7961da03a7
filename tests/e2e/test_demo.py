"""`farebox demo --json`: the quick start's main job, as a user runs it."""

from __future__ import annotations

import json
import os
from decimal import Decimal

import openai

from tests.e2e.procs import Proc, http


def start_demo(home) -> tuple[Proc, dict]:
    env = dict(os.environ, FAREBOX_HOME=str(home))
    proc = Proc(["demo", "--port", "0", "--json"], env, r"^\{.*\"base_url\".*\}$")
    assert proc.match is not None
    return proc, json.loads(proc.match.group(0))


def test_demo_serves_simulated_models_to_a_funded_key(tmp_path):
    proc, info = start_demo(tmp_path)
    try:
        assert set(info) == {"base_url", "api_key", "management_key", "models"}
        assert {"sim/small", "sim/large", "sim/small:free"} <= set(info["models"])
        api = openai.OpenAI(base_url=info["base_url"], api_key=info["api_key"], max_retries=0)
        status, credits, _ = http("GET", f"{info['base_url']}/credits", key=info["api_key"])
        assert status == 200 and credits["data"]["total_credits"] == Decimal("10")
        for model in info["models"]:
            completion = api.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}])
            assert completion.choices[0].message.content
        models = {m["id"]: m for m in http("GET", f"{info['base_url']}/models")[1]["data"]}
        assert models["sim/small"]["pricing"]["prompt"] == "0.00000015"
        assert models["sim/small"]["pricing"]["completion"] == "0.0000006"
        assert models["sim/small"]["context_length"] == 128000
        assert models["sim/small"]["top_provider"]["max_completion_tokens"] == 16384
        assert models["sim/large"]["pricing"]["prompt"] == "0.000003"
        assert models["sim/large"]["pricing"]["completion"] == "0.000015"
        assert models["sim/large"]["context_length"] == 200000
        assert models["sim/large"]["top_provider"]["max_completion_tokens"] == 64000
        assert models["sim/small:free"]["pricing"]["completion"] == "0"
        # Buying credits works in the demo: its fake Stripe's Checkout, paid as a buyer would. Buying
        # is for the operator or an organization's members with credits.write, not for API keys.
        status, refused, _ = http("POST", f"{info['base_url']}/credits/checkout", {"amount": "25"},
                                  key=info["api_key"])
        assert status == 403 and refused["error"]["metadata"]["required"] == "credits.write"
        status, started, _ = http("POST", f"{info['base_url']}/credits/checkout",
                                  {"amount": "25", "organization": "demo"}, key=info["management_key"])
        assert status == 201 and started["data"]["charged"] == Decimal("26.38")
        origin = started["data"]["url"].split("/c/pay/")[0]
        status, _, _ = http("POST", f"{origin}/_fake/checkout/sessions/{started['data']['checkout_id']}/complete", {})
        assert status == 200
        status, credits, _ = http("GET", f"{info['base_url']}/credits", key=info["api_key"])
        assert credits["data"]["purchased"] == 25
        status, report, _ = http("GET", f"{info['base_url']}/ledger/verify", key=info["management_key"])
        assert report["data"]["ok"]
    finally:
        proc.stop()
    # A second start keeps the organization, the key, the purchase and the (idempotent) $10 grant.
    proc, again = start_demo(tmp_path)
    try:
        assert again["api_key"] == info["api_key"]
        status, credits, _ = http("GET", f"{again['base_url']}/credits", key=again["api_key"])
        assert credits["data"]["total_credits"] - credits["data"]["total_usage"] == credits["data"]["balance"]
        assert (credits["data"]["granted"], credits["data"]["purchased"]) == (10, 25)
    finally:
        proc.stop()
