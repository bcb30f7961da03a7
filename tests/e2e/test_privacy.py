"""Privacy settings and prompt logging end to end: account settings filter routing (a request
they empty is a 404 saying so), prompts are never stored without the opt-in (the database
file and the server's own log are searched for them), and the opt-in stores them, serves
them at /generation/content and takes 1% off every charge as a line item."""

from __future__ import annotations

import uuid
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

from tests.e2e.conftest import client
from tests.e2e.procs import Gateway, http

MSG = [{"role": "user", "content": "hi"}]
LIST = Decimal("0.0000168")   # sim/small, "hi", max_tokens 50: the simulator's deterministic reply


def settings(gw: Gateway, org: str, **changes: bool) -> dict:
    status, data, _ = http("PATCH", gw.api + "/organization/settings", {"organization": org, **changes},
                           gw.management_key)
    assert status == 200, data
    return data["data"]


def chat(gw: Gateway, key: str, model: str = "sim/small", content: str = "hi", stream: bool = False):  # type: ignore[no-untyped-def]
    return http("POST", f"{gw.api}/chat/completions",
                {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 50,
                 "stream": stream}, key)


def database_bytes(home: Path) -> bytes:
    return b"".join(p.read_bytes() for p in home.glob("farebox.db*") if p.is_file())


def test_privacy_settings_filter_routing_and_explain_an_empty_route(gateway, org_name):
    gw = gateway
    gw.org(org_name, "1.00")
    key, _ = gw.key(org_name)
    # sim/leaky's only provider trains on and retains prompts (tests/e2e/procs.py).
    assert chat(gw, key, "sim/leaky")[0] == 200
    assert settings(gw, org_name, deny_training=True, zdr_only=True) == {
        "deny_training": True, "deny_retention": False, "zdr_only": True, "logging": False}
    status, data, _ = chat(gw, key, "sim/leaky")
    assert status == 404, data
    error = data["error"]
    assert "matching your data policy" in error["message"] and "privacy settings" in error["message"]
    assert error["metadata"]["availability"]["code"] == "privacy_restricted"
    assert set(error["metadata"]["availability"]["excluded_by"]) <= {"data_policy:training", "data_policy:zdr"}
    # Models with a compliant endpoint still work.
    assert chat(gw, key, "sim/small")[0] == 200


def test_workspace_settings_apply_to_that_workspace_only(gateway, org_name):
    gw = gateway
    gw.org(org_name, "1.00")
    status, data, _ = http("POST", gw.api + "/workspaces", {"organization": org_name, "name": "strict",
                                                            "settings": {"deny_training": True,
                                                                         "zdr_only": True}}, gw.management_key)
    assert status == 201, data
    strict, _ = gw.key(org_name, workspace_id=data["data"]["id"])
    loose, _ = gw.key(org_name)
    assert chat(gw, strict, "sim/leaky")[0] == 404
    assert chat(gw, loose, "sim/leaky")[0] == 200


def test_no_prompt_text_is_stored_or_logged_without_the_opt_in(make_gateway, org_name):
    gw = make_gateway(log_level="debug", access_log=True)
    gw.org(org_name, "1.00")
    key, _ = gw.key(org_name)
    marker = f"zebra-{uuid.uuid4().hex}"
    for stream in (False, True):
        status, data, _ = chat(gw, key, content=f"please repeat {marker}", stream=stream)
        assert status == 200, data
    reply_id = chat(gw, key, content=f"and again {marker}")[1]["id"]
    gw.verify()   # everything committed
    assert marker.encode() not in database_bytes(gw.home)
    assert marker not in gw.proc.output()  # type: ignore[union-attr]
    status, data, _ = http("GET", f"{gw.api}/generation/content?id={reply_id}", key=key)
    assert status == 404 and "prompt logging is off" in data["error"]["message"]


def test_the_logging_opt_in_stores_content_and_discounts_one_percent(make_gateway, org_name):
    gw = make_gateway()
    gw.org(org_name, "1.00")
    key, _ = gw.key(org_name)
    settings(gw, org_name, logging=True)
    marker = f"okapi-{uuid.uuid4().hex}"
    status, data, _ = chat(gw, key, content=f"hi {marker}")
    assert status == 200, data
    # The cost is the list price less 1%, the discount rounded down and the total up, once.
    listed = Decimal(str(data["usage"]["cost_details"]["upstream_inference_cost"]))
    cost = Decimal(str(data["usage"]["cost"]))
    assert cost < listed
    status, gen, _ = http("GET", f"{gw.api}/generation?id={data['id']}", key=key)
    items = gen["data"]["cost_details"]
    assert items["logging_discount"] < 0
    gross = sum(v for k, v in items.items() if k != "logging_discount")
    assert cost == (gross + items["logging_discount"]).quantize(Decimal("1e-9"), rounding=ROUND_CEILING)
    assert -items["logging_discount"] <= gross / 100

    status, content, _ = http("GET", f"{gw.api}/generation/content?id={data['id']}", key=key)
    assert status == 200, content
    assert marker in content["data"]["request"]["messages"][0]["content"]
    assert content["data"]["completion"] == data["choices"][0]["message"]["content"]

    # Streams keep what the client received.
    with client(gw, key).chat.completions.create(model="sim/small", messages=MSG, max_tokens=50,
                                                  stream=True) as stream:
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    status, content, _ = http("GET", f"{gw.api}/generation/content?id={chunks[0].id}", key=key)
    assert status == 200 and content["data"]["completion"] == text

    # Another organization's key cannot read it.
    other, _ = gw.key(gw.org(org_name + "-other", "1.00"))
    assert http("GET", f"{gw.api}/generation/content?id={data['id']}", key=other)[0] == 404


def test_organization_settings_need_privacy_write(gateway, org_name):
    gw = gateway
    gw.org(org_name)
    key, _ = gw.key(org_name)
    status, data, _ = http("PATCH", gw.api + "/organization/settings", {"logging": True}, key)
    assert status == 403, data
    status, data, _ = http("PATCH", gw.api + "/organization/settings", {"organization": org_name, "logging": "yes"},
                           gw.management_key)
    assert status == 400 and data["error"]["metadata"]["field"] == "logging"
    status, data, _ = http("PATCH", gw.api + "/organization/settings", {"organization": org_name, "colour": True},
                           gw.management_key)
    assert status == 400 and data["error"]["metadata"]["field"] == "colour"
