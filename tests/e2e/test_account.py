"""/generation, /key, /credits, /models, the key management API and the CLI."""

from __future__ import annotations

import contextlib
import http.client as httpclient
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal

import pytest

from tests.e2e.conftest import client
from tests.e2e.procs import http

MSG = [{"role": "user", "content": "hi"}]

GENERATION_FIELDS = {
    "id", "upstream_id", "created_at", "model", "provider_name", "streamed", "cancelled", "latency",
    "generation_time", "finish_reason", "native_finish_reason", "tokens_prompt", "tokens_completion",
    "native_tokens_prompt", "native_tokens_completion", "native_tokens_reasoning", "native_tokens_cached",
    "total_cost", "usage", "cache_discount", "is_byok", "provider_responses", "upstream_inference_cost",
    "api_type", "origin", "external_user", "workspace_id",
}
KEY_FIELDS = {
    "hash", "name", "label", "disabled", "limit", "limit_remaining", "limit_reset", "include_byok_in_limit",
    "usage", "usage_daily", "usage_weekly", "usage_monthly", "byok_usage", "byok_usage_daily",
    "byok_usage_weekly", "byok_usage_monthly", "created_at", "updated_at", "expires_at", "creator_user_id",
    "workspace_id",
}


@pytest.mark.parametrize("stream", [False, True])
def test_generation_is_there_the_moment_the_response_ends(funded, stream, gateway):
    gw, _, key = funded
    for _ in range(5):  # no 404 window: ask immediately, every time
        response = client(gw, key).chat.completions.create(
            model="sim/small", messages=MSG, stream=stream, user="end-user-7",
            extra_headers={"HTTP-Referer": "https://app.example", "X-Title": "Example"})
        if stream:
            chunks = list(response)
            gen_id, cost = chunks[0].id, chunks[-1].usage.model_extra["cost"]
        else:
            gen_id, cost = response.id, response.usage.model_extra["cost"]
        status, data, _ = http("GET", f"{gw.api}/generation?id={gen_id}", key=key)
        assert status == 200, data
    record = data["data"]
    assert set(record) >= GENERATION_FIELDS
    assert record["id"] == gen_id and record["model"] == "sim/small" and record["streamed"] is stream
    assert record["provider_name"] == "Farebox Simulator" and record["cancelled"] is False
    assert record["upstream_id"].startswith("chatcmpl-")
    assert record["total_cost"] == record["usage"] == Decimal(str(cost))
    assert record["finish_reason"] == "stop" and record["native_finish_reason"] == "stop"
    assert record["external_user"] == "end-user-7" and record["origin"] == "https://app.example"
    assert record["latency"] >= 0 and record["tokens_prompt"] > 0
    assert record["created_at"].endswith("Z")
    assert [a["status"] for a in record["provider_responses"]] == [200]


def test_generation_is_private_to_its_organization(funded, gateway, org_name):
    gw, _, key = funded
    gen_id = client(gw, key).chat.completions.create(model="sim/small", messages=MSG).id
    gw.org(org_name + "-other", "1.00")
    other, _ = gw.key(org_name + "-other")
    status, body, _ = http("GET", f"{gw.api}/generation?id={gen_id}", key=other)
    assert status == 404 and body["error"]["code"] == 404
    status, _, _ = http("GET", f"{gw.api}/generation?id=gen-0-nothing", key=key)
    assert status == 404
    status, _, _ = http("GET", f"{gw.api}/generation", key=key)
    assert status == 400


def test_key_endpoint_and_legacy_path(funded):
    gw, _org, key = funded
    cost = Decimal(str(client(gw, key).chat.completions.create(model="sim/small", messages=MSG)
                       .usage.model_extra["cost"]))
    for path in ("/key", "/auth/key"):
        status, body, _ = http("GET", gw.api + path, key=key)
        assert status == 200
        data = body["data"]
        assert KEY_FIELDS - {"hash"} <= set(data)
        assert data["label"].startswith("sk-fb-v1-") and "..." in data["label"]
        assert data["usage"] == data["usage_daily"] == data["usage_monthly"] == cost
        assert data["limit"] is None and data["limit_remaining"] is None
        assert data["is_management_key"] is False and "rate_limit" in data


def test_credits(funded):
    gw, org, key = funded
    cost = Decimal(str(client(gw, key).chat.completions.create(model="sim/small", messages=MSG)
                       .usage.model_extra["cost"]))
    status, body, _ = http("GET", f"{gw.api}/credits", key=key)
    assert status == 200
    data = body["data"]
    # OpenRouter's two fields first, exactly; then ours beside them.
    assert list(data)[:2] == ["total_credits", "total_usage"]
    assert (data["total_credits"], data["total_usage"]) == (Decimal("5"), cost)
    assert (data["balance"], data["granted"], data["purchased"], data["refunded"]) == (5 - cost, 5, 0, 0)
    status, body, _ = http("GET", f"{gw.api}/credits?organization={org}", key=gw.management_key)
    assert body["data"]["total_credits"] - body["data"]["total_usage"] == gw.balance(org)


def test_models_list_without_auth(gateway):
    status, body, _ = http("GET", f"{gateway.api}/models")
    assert status == 200
    models = {m["id"]: m for m in body["data"]}
    assert {"sim/small", "sim/large", "sim/small:free"} <= set(models)
    small = models["sim/small"]
    assert small["pricing"]["prompt"] == "0.00000015" and small["pricing"]["completion"] == "0.0000006"
    assert models["sim/small:free"]["pricing"]["prompt"] == "0"
    assert small["context_length"] == 128000 and small["top_provider"]["max_completion_tokens"] == 16384
    assert small["architecture"]["modality"] == "text->text"
    assert {"id", "canonical_slug", "name", "created", "description", "context_length", "architecture",
            "pricing", "top_provider", "per_request_limits", "supported_parameters"} <= set(small)
    assert body["total_count"] == len(body["data"])
    status, body, _ = http("GET", f"{gateway.api}/models?supported_parameters=tools,seed")
    assert {m["id"] for m in body["data"]} >= {"sim/small"}
    status, body, _ = http("GET", f"{gateway.api}/models/sim/flaky/endpoints")
    assert status == 200
    assert [e["provider_name"] for e in body["data"]["endpoints"]] == ["Broken Simulator", "Farebox Simulator"]


def test_key_management_api(gateway, org_name):
    gw = gateway
    gw.org(org_name, "1.00")
    status, body, _ = http("POST", f"{gw.api}/keys", {"organization": org_name, "name": "ci", "limit": 2.5,
                                                      "limit_reset": "weekly",
                                                      "expires_at": "2099-01-01T00:00:00Z"}, gw.management_key)
    assert status == 201
    secret, data = body["key"], body["data"]
    assert secret.startswith("sk-fb-v1-") and len(secret) == len("sk-fb-v1-") + 64
    assert set(data) >= KEY_FIELDS
    assert data["limit"] == Decimal("2.5") and data["limit_reset"] == "weekly"
    assert data["expires_at"] == "2099-01-01T00:00:00.000Z"
    khash = data["hash"]
    import hashlib

    assert khash == hashlib.sha256(secret.encode()).hexdigest()
    assert http("GET", f"{gw.api}/keys/{khash}", key=gw.management_key)[1]["data"]["name"] == "ci"
    listed = http("GET", f"{gw.api}/keys?organization={org_name}", key=gw.management_key)[1]["data"]
    assert [k["hash"] for k in listed] == [khash]
    patched = http("PATCH", f"{gw.api}/keys/{khash}", {"name": "ci2", "disabled": True}, gw.management_key)[1]
    assert patched["data"]["name"] == "ci2" and patched["data"]["disabled"] is True
    assert http("GET", f"{gw.api}/keys?organization={org_name}", key=gw.management_key)[1]["data"] == []
    assert len(http("GET", f"{gw.api}/keys?organization={org_name}&include_disabled=true",
                    key=gw.management_key)[1]["data"]) == 1
    assert http("DELETE", f"{gw.api}/keys/{khash}", key=gw.management_key)[1] == {"deleted": True}
    assert http("GET", f"{gw.api}/keys/{khash}", key=gw.management_key)[0] == 404
    assert http("GET", f"{gw.api}/key", key=secret)[0] == 401
    # Bad input names the field.
    for body, field in (({"organization": org_name}, "name"), ({"organization": org_name, "name": "x",
                        "limit_reset": "hourly"}, "limit_reset"), ({"name": "x"}, "organization"),
                        ({"organization": org_name, "name": "x", "limit": "1.0000000001"}, "limit"),
                        ({"organization": org_name, "name": "x", "expires_at": "tomorrow"}, "expires_at")):
        status, err, _ = http("POST", f"{gw.api}/keys", body, gw.management_key)
        assert status == 400 and err["error"]["metadata"]["field"] == field


def test_organizations_and_idempotent_grants(gateway, org_name):
    gw = gateway
    gw.org(org_name)
    assert http("POST", f"{gw.api}/organizations", {"name": org_name}, gw.management_key)[0] == 409
    grant = {"amount": "2.50", "reference": "invoice-1"}
    first = http("POST", f"{gw.api}/organizations/{org_name}/credits", grant, gw.management_key)
    again = http("POST", f"{gw.api}/organizations/{org_name}/credits", grant, gw.management_key)
    assert (first[0], first[1]["data"]["replayed"]) == (201, False)
    assert (again[0], again[1]["data"]["replayed"]) == (200, True)
    assert gw.balance(org_name) == Decimal("2.5")
    conflict = http("POST", f"{gw.api}/organizations/{org_name}/credits", {"amount": "3", "reference": "invoice-1"},
                    gw.management_key)
    assert conflict[0] == 409 and gw.balance(org_name) == Decimal("2.5")
    for amount in ("-1", "0", "abc", True, None, "0.0000000001"):
        status, err, _ = http("POST", f"{gw.api}/organizations/{org_name}/credits",
                              {"amount": amount, "reference": "x"}, gw.management_key)
        assert status == 400 and err["error"]["metadata"]["field"] == "amount"
    assert http("POST", f"{gw.api}/organizations/nobody/credits", grant, gw.management_key)[0] == 404


def farebox_cli(gw, *args):
    env = dict(os.environ, FAREBOX_URL=gw.url, FAREBOX_HOME=str(gw.home))
    env.pop("FAREBOX_MANAGEMENT_KEY", None)
    return subprocess.run([sys.executable, "-m", "farebox", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_cli_manages_a_running_server(gateway, org_name):
    gw = gateway
    assert farebox_cli(gw, "orgs", "create", org_name).returncode == 0
    out = farebox_cli(gw, "credits", "grant", "--org", org_name, "--amount", "25.00", "--reference", "cli-1")
    assert out.returncode == 0 and "granted" in out.stdout
    again = farebox_cli(gw, "credits", "grant", "--org", org_name, "--amount", "25.00", "--reference", "cli-1")
    assert "already granted" in again.stdout
    created = farebox_cli(gw, "keys", "create", "--org", org_name, "--name", "cli", "--limit", "3.00", "--json")
    assert created.returncode == 0, created.stderr
    made = json.loads(created.stdout)
    assert made["data"]["limit"] == 3
    listed = json.loads(farebox_cli(gw, "keys", "list", "--org", org_name, "--json").stdout)
    assert [k["hash"] for k in listed] == [made["data"]["hash"]]
    shown = json.loads(farebox_cli(gw, "credits", "show", "--org", org_name, "--json").stdout)
    assert shown["balance"] == 25
    assert farebox_cli(gw, "keys", "disable", made["data"]["hash"]).returncode == 0
    assert http("GET", f"{gw.api}/key", key=made["key"])[0] == 401
    verify = farebox_cli(gw, "ledger", "verify", "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"] is True
    missing = farebox_cli(gw, "credits", "show", "--org", "no-such-org")
    assert missing.returncode == 1 and "No organization" in missing.stderr


def test_client_disconnect_stops_upstream_and_bills_what_was_sent(funded, sim_url):
    gw, org, key = funded
    before = gw.balance(org)
    _, stats_before, _ = http("GET", f"{sim_url}/_sim/stats")
    body = {"model": "sim/small", "stream": True, "messages": MSG,
            "sim": {"output_tokens": 2000, "tokens_per_s": 50}}
    received = 0
    host, port = gw.url.removeprefix("http://").split(":")
    conn = httpclient.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/api/v1/chat/completions", json.dumps(body),
                 {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    response = conn.getresponse()
    gen_id = response.headers["x-generation-id"]
    while received < 5:
        line = response.readline().decode()
        if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
            received += 1
    conn.sock.close()  # the client goes away mid-stream
    conn.close()
    # The gateway noticed, closed its upstream connection, and billed what it sent.
    deadline = time.monotonic() + 10
    record = None
    while time.monotonic() < deadline:
        status, data, _ = http("GET", f"{gw.api}/generation?id={gen_id}", key=key)
        if status == 200:
            record = data["data"]
            break
        time.sleep(0.05)
    assert record is not None, "the cancelled generation was never recorded"
    assert record["cancelled"] is True and record["streamed"] is True
    assert 5 <= record["tokens_completion"] < 2000
    assert record["total_cost"] > 0 and gw.balance(org) == before - record["usage"]
    while time.monotonic() < deadline:
        _, stats, _ = http("GET", f"{sim_url}/_sim/stats")
        if stats["streams_disconnected"] > stats_before["streams_disconnected"]:
            break
        time.sleep(0.05)
    assert stats["streams_disconnected"] == stats_before["streams_disconnected"] + 1


def test_client_leaving_before_the_first_token_costs_nothing_and_is_recorded(make_gateway, sim_url):
    gw = make_gateway(sse_keepalive_s=0.1)
    gw.org("early", "1.00")
    key, _ = gw.key("early")
    _, stats_before, _ = http("GET", f"{sim_url}/_sim/stats")
    host, port = gw.url.removeprefix("http://").split(":")
    conn = httpclient.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/api/v1/chat/completions",
                 json.dumps({"model": "sim/small", "stream": True, "messages": MSG, "sim": {"ttft_ms": 5000}}),
                 {"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    response = conn.getresponse()
    gen_id = response.headers["x-generation-id"]
    assert response.readline() == b": OPENROUTER PROCESSING\n"  # waiting for the first token...
    conn.sock.close()  # ...and the client gives up
    conn.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, data, _ = http("GET", f"{gw.api}/generation?id={gen_id}", key=key)
        if status == 200:
            break
        time.sleep(0.05)
    record = data["data"]
    assert record["cancelled"] is True and record["total_cost"] == 0 and record["tokens_completion"] == 0
    assert [a["status"] for a in record["provider_responses"]] == [499]
    assert gw.balance("early") == 1
    while time.monotonic() < deadline:  # and the upstream request was abandoned too
        _, stats, _ = http("GET", f"{sim_url}/_sim/stats")
        if stats["requests_disconnected"] > stats_before["requests_disconnected"]:
            break
        time.sleep(0.05)
    assert stats["requests_disconnected"] > stats_before["requests_disconnected"]


def test_client_leaving_before_the_first_token_is_heard_at_once_not_at_the_next_keepalive(make_gateway, sim_url):
    # Keep-alives a minute apart and a first token 40 s away: only the disconnect itself can
    # end this wait within the test's deadline.
    gw = make_gateway(sse_keepalive_s=60, upstream_first_byte_timeout_s=120, upstream_timeout_s=120)
    gw.org("impatient", "1.00")
    key, _ = gw.key("impatient")
    _, stats_before, _ = http("GET", f"{sim_url}/_sim/stats")
    body = json.dumps({"model": "sim/small", "stream": True, "messages": MSG, "sim": {"ttft_ms": 40000}}).encode()
    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer " + key.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # the gateway's upstream request is under way
        _, stats, _ = http("GET", f"{sim_url}/_sim/stats")
        if stats["active_requests"] > stats_before["active_requests"]:
            break
        time.sleep(0.02)
    sock.close()
    rows: list[tuple[int, int]] = []
    while time.monotonic() < deadline and not rows:
        with contextlib.closing(sqlite3.connect(gw.home / "farebox.db")) as db:
            rows = db.execute("SELECT cancelled, charged FROM generations").fetchall()
        time.sleep(0.05)
    assert rows == [(1, 0)], "the wait for the first token did not end when the client left"
    assert gw.balance("impatient") == 1
    while time.monotonic() < deadline:  # the upstream request was abandoned too
        _, stats, _ = http("GET", f"{sim_url}/_sim/stats")
        if stats["requests_disconnected"] > stats_before["requests_disconnected"]:
            break
        time.sleep(0.05)
    assert stats["requests_disconnected"] > stats_before["requests_disconnected"]


def test_a_second_server_on_the_same_database_refuses_to_start(gateway):
    env = dict(os.environ, FAREBOX_HOME=str(gateway.home), FAREBOX_PORT="0",
               FAREBOX_CATALOG_PATH=str(gateway.home / "catalog.toml"), FAREBOX_CATALOG_BUILTIN="false")
    second = subprocess.run([sys.executable, "-m", "farebox", "serve"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert second.returncode == 2
    assert "in use by another Farebox process" in second.stderr


def test_new_organizations_receive_the_trial_credit(make_gateway):
    gw = make_gateway(trial_credit_usd="1.50", trial_expiry_days=14)
    gw.org("trial")
    assert gw.balance("trial") == Decimal("1.5")
    key, _ = gw.key("trial")
    status, credits, _ = http("GET", f"{gw.api}/credits", key=key)
    assert status == 200 and credits["data"]["total_credits"] == Decimal("1.5")


def test_a_recorded_bank_transfer_credits_the_purchase_and_its_bonus(gateway, org_name):
    gateway.org(org_name)
    key, _ = gateway.key(org_name)
    status, q, _ = http("GET", f"{gateway.api}/credits/quote?amount=100&method=card", key=key)
    assert status == 200 and q["data"] == {"method": "card", "credits": 100, "fee": Decimal("5.5"), "bonus": 15,
                                           "tax": 0, "charged": Decimal("105.5"), "credited": 115}
    body = {"amount": "100", "method": "bank", "reference": "wire-2026-11-23"}
    status, data, _ = http("POST", f"{gateway.api}/organizations/{org_name}/purchases", body,
                           key=gateway.management_key)
    assert status == 201 and data["data"]["credited"] == 115 and data["data"]["fee"] == 0
    assert gateway.balance(org_name) == 115
    status, data, _ = http("POST", f"{gateway.api}/organizations/{org_name}/purchases", body,
                           key=gateway.management_key)
    assert status == 200 and data["data"]["replayed"] is True
    assert gateway.balance(org_name) == 115
    status, data, _ = http("POST", f"{gateway.api}/organizations/{org_name}/purchases",
                           {**body, "reference": "w2", "amount": "1"}, key=gateway.management_key)
    assert status == 400 and data["error"]["metadata"]["field"] == "amount"
    status, _, _ = http("POST", f"{gateway.api}/organizations/{org_name}/purchases", body, key=key)
    assert status == 403  # an API key cannot record payments
