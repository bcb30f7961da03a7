"""POST /api/v1/messages through a real gateway and simulator with the official anthropic
SDK, the way Claude Code uses it: plain, streamed, thinking, tools, bare Anthropic model
ids, errors in Anthropic's shape, and money exactly as for chat completions."""

from __future__ import annotations

import http.client as httpclient
import json
import time
from decimal import Decimal
from typing import Any

import anthropic
import pytest

from tests.e2e.procs import Gateway, http

MSG = [{"role": "user", "content": "Hello there"}]


def client(gw: Gateway, key: str | None = None, **kw: Any) -> anthropic.Anthropic:
    # The SDK appends /v1/messages to its base URL: the gateway's /api/v1/messages.
    return anthropic.Anthropic(base_url=gw.api.removesuffix("/v1"), api_key=key, max_retries=0, **kw)


def generation(gw: Gateway, key: str, gen_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, data, _ = http("GET", f"{gw.api}/generation?id={gen_id}", key=key)
        if status == 200:
            return data["data"]
        time.sleep(0.05)
    raise AssertionError(f"generation {gen_id} was never recorded")


def usd(value: Any) -> Decimal:
    return Decimal(str(value))


def assert_anthropic_error(body: Any, kind: str) -> dict[str, Any]:
    assert body["type"] == "error" and set(body) == {"type", "error"}
    error = body["error"]
    assert error["type"] == kind and isinstance(error["message"], str) and error["message"]
    return error


# Whatever dialect the upstream speaks: OpenAI, Anthropic or Gemini.
UPSTREAMS = ["sim/small", "sim/claude", "sim/gemini"]


@pytest.mark.parametrize("model", UPSTREAMS)
def test_a_message_and_its_exact_charge(funded, model):
    gw, org, key = funded
    before = gw.balance(org)
    raw = client(gw, key).messages.with_raw_response.create(model=model, max_tokens=200, messages=MSG)
    message = raw.parse()
    assert message.id.startswith("gen-") and raw.headers["x-generation-id"] == message.id
    assert raw.headers["request-id"] == message.id
    assert (message.type, message.role, message.model) == ("message", "assistant", model)
    assert [b.type for b in message.content] == ["text"] and message.content[0].text
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    record = generation(gw, key, message.id)
    usage = message.usage
    assert usage.input_tokens == record["tokens_prompt"] and usage.output_tokens == record["tokens_completion"]
    assert usage.cache_read_input_tokens == usage.cache_creation_input_tokens == 0
    cost = usd(usage.model_extra["cost"])
    assert cost == record["usage"] > 0
    assert gw.balance(org) == before - cost
    assert record["streamed"] is False and record["finish_reason"] == "stop"


def test_a_streamed_message_arrives_as_events_and_bills_what_the_usage_says(funded):
    gw, org, key = funded
    before = gw.balance(org)
    with client(gw, key).messages.stream(model="sim/small", max_tokens=200, messages=MSG) as stream:
        events = list(stream)
        final = stream.get_final_message()
    names = [e.type for e in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    assert names.count("content_block_start") == names.count("content_block_stop") == 1
    text = "".join(e.delta.text for e in events if e.type == "content_block_delta")
    assert text and final.content[0].text == text
    record = generation(gw, key, final.id)
    assert final.model == "sim/small" and final.stop_reason == "end_turn"
    # The accumulated message carries message_delta's cumulative counts.
    assert final.usage.input_tokens == record["tokens_prompt"] > 0
    assert final.usage.output_tokens == record["tokens_completion"] > 0
    delta = next(e for e in events if e.type == "message_delta")
    cost = usd(delta.usage.model_extra["cost"])
    assert cost == record["usage"] > 0 and record["streamed"] is True
    assert gw.balance(org) == before - cost


def test_stream_events_are_forwarded_as_they_arrive(funded, sim_url):
    gw, _, key = funded
    _, before, _ = http("GET", f"{sim_url}/_sim/stats")
    prompt = [{"role": "user", "content": "slow [[sim output_tokens=6 tokens_per_s=2]]"}]
    with client(gw, key).messages.stream(model="sim/small", max_tokens=50, messages=prompt) as stream:
        first = next(iter(stream.text_stream))
        assert first
        _, stats, _ = http("GET", f"{sim_url}/_sim/stats")
        assert stats["active_streams"] >= 1  # the upstream is still generating...
        assert stats["streams_completed"] == before["streams_completed"]  # ...and has not finished


@pytest.mark.parametrize("stream", [False, True])
def test_reasoning_arrives_as_thinking_blocks(funded, stream):
    gw, _, key = funded
    prompt = [{"role": "user", "content": "Think first [[sim reasoning_tokens=4 output_tokens=3]]"}]
    kwargs = {"model": "sim/small", "max_tokens": 2000, "messages": prompt,
              "thinking": {"type": "enabled", "budget_tokens": 1024}}
    if stream:
        with client(gw, key).messages.stream(**kwargs) as s:
            message = s.get_final_message()
    else:
        message = client(gw, key).messages.create(**kwargs)
    assert [b.type for b in message.content] == ["thinking", "text"]
    thinking = message.content[0]
    assert thinking.thinking and thinking.signature == ""  # not Claude's: nothing to verify
    assert message.usage.output_tokens == 7
    assert message.usage.output_tokens_details.thinking_tokens == 4


@pytest.mark.parametrize("stream", [False, True])
def test_claude_thinking_keeps_its_signature_through_a_tool_loop(funded, stream):
    """Anthropic in, Anthropic upstream: thinking blocks come back signed, and sent back
    on the next turn they reach the upstream unchanged (it would refuse a tool loop
    without them)."""
    gw, _, key = funded
    sdk = client(gw, key)
    ask = [{"role": "user", "content": "Weather in Oslo? [[sim reasoning_tokens=5]]"}]
    kwargs = {"model": "sim/claude", "max_tokens": 3000, "tools": [WEATHER],
              "thinking": {"type": "enabled", "budget_tokens": 1024}}
    if stream:
        with sdk.messages.stream(messages=ask, **kwargs) as s:
            first = s.get_final_message()
    else:
        first = sdk.messages.create(messages=ask, **kwargs)
    assert first.content[0].type == "thinking" and first.content[0].signature
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    answer = sdk.messages.create(messages=[
        *ask, {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "-2C"}]}], **kwargs)
    assert answer.stop_reason == "end_turn" and answer.content[-1].type == "text"


WEATHER = {"name": "get_weather", "description": "Current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.mark.parametrize("model", UPSTREAMS)
@pytest.mark.parametrize("stream", [False, True])
def test_a_tool_use_round_trip(funded, stream, model):
    gw, org, key = funded
    before = gw.balance(org)
    sdk = client(gw, key)
    ask = [{"role": "user", "content": "What is the weather in Paris?"}]
    if stream:
        with sdk.messages.stream(model=model, max_tokens=300, tools=[WEATHER], messages=ask) as s:
            first = s.get_final_message()
    else:
        first = sdk.messages.create(model=model, max_tokens=300, tools=[WEATHER], messages=ask)
    assert first.stop_reason == "tool_use"
    calls = [b for b in first.content if b.type == "tool_use"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(calls[0].input, dict) and isinstance(calls[0].input.get("city"), str)
    answer = sdk.messages.create(model=model, max_tokens=300, tools=[WEATHER], messages=[
        *ask, {"role": "assistant", "content": first.content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": calls[0].id, "content": "18C, sunny"}]}])
    assert answer.stop_reason == "end_turn" and answer.content[-1].type == "text"
    spent = generation(gw, key, first.id)["usage"] + generation(gw, key, answer.id)["usage"]
    assert gw.balance(org) == before - spent


def test_bare_anthropic_style_model_ids_map_to_the_catalog_model(funded):
    gw, _, key = funded
    # The test catalog's sim/large is served upstream as "sim-large", as
    # anthropic/claude-sonnet-4.5 is served as "claude-sonnet-4-5-20250929".
    message = client(gw, key).messages.create(model="sim-large", max_tokens=50, messages=MSG)
    assert message.model == "sim/large"
    assert generation(gw, key, message.id)["model"] == "sim/large"
    with pytest.raises(anthropic.NotFoundError) as caught:
        client(gw, key).messages.create(model="claude-nonexistent-1", max_tokens=50, messages=MSG)
    error = assert_anthropic_error(caught.value.body, "not_found_error")
    assert "claude-nonexistent-1" in error["message"] and error["error_type"] == "not_found"


def test_fallbacks_serve_the_next_model(funded):
    gw, _, key = funded
    message = client(gw, key).messages.create(model="sim/broken", max_tokens=50, messages=MSG,
                                              extra_body={"fallbacks": [{"model": "sim-small"}]})
    assert message.model == "sim/small"


def test_an_unfunded_organization_gets_a_402_in_anthropic_shape(gateway, org_name):
    gateway.org(org_name)
    key, _ = gateway.key(org_name)
    with pytest.raises(anthropic.APIStatusError) as caught:
        client(gateway, key).messages.create(model="sim/small", max_tokens=100, messages=MSG)
    assert caught.value.status_code == 402
    error = assert_anthropic_error(caught.value.body, "billing_error")
    assert error["message"].startswith("This request requires more credits")
    assert error["error_type"] == "payment_required" and error["metadata"]["requested_tokens"] == 100
    assert gateway.balance(org_name) == 0


def test_bad_keys_are_401_by_x_api_key_and_by_bearer(funded, monkeypatch):
    gw, _, key = funded
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    bad = "sk-fb-v1-" + "0" * 64
    for sdk in (client(gw, bad), client(gw, auth_token=bad)):
        with pytest.raises(anthropic.AuthenticationError) as caught:
            sdk.messages.create(model="sim/small", max_tokens=10, messages=MSG)
        assert assert_anthropic_error(caught.value.body, "authentication_error")["message"] == "User not found."
    status, body, _ = http("POST", f"{gw.api}/messages", {"model": "sim/small", "max_tokens": 10, "messages": MSG})
    assert status == 401 and assert_anthropic_error(body, "authentication_error")
    # Claude Code with ANTHROPIC_AUTH_TOKEN: the key as a bearer token.
    assert client(gw, auth_token=key).messages.create(model="sim/small", max_tokens=10, messages=MSG).content


@pytest.mark.parametrize(("payload", "field"), [
    (b'{"model": "sim/small", "max_tokens": 10, "messages": [', None),
    (b'[1]', None),
    (b'{"model": "sim/small", "messages": [{"role": "user", "content": "x"}]}', "max_tokens"),
    (b'{"model": "sim/small", "max_tokens": 10}', "messages"),
    (b'{"model": "sim/small", "max_tokens": 10, "temperature": 2, "messages": [{"role": "user", "content": "x"}]}',
     "temperature"),
    (b'{"model": "sim/small", "max_tokens": 10, "messages": [{"role": "user", "content": [{"type": "video"}]}]}',
     "messages[0].content[0].type"),
    (b'{"model": "sim/small", "max_tokens": 10, "tools": [{"type": "web_search_20250305", "name": "web_search"}], '
     b'"messages": [{"role": "user", "content": "x"}]}', "tools"),
    (b'{"model": "sim/small", "max_tokens": 100000, "messages": [{"role": "user", "content": "x"}]}', "max_tokens"),
])
def test_bad_requests_are_400s_in_anthropic_shape_and_move_no_money(funded, payload, field):
    gw, org, key = funded
    before = gw.balance(org)
    status, body, _ = http("POST", f"{gw.api}/messages", raw=payload, headers={"x-api-key": key})
    assert status == 400
    error = assert_anthropic_error(body, "invalid_request_error")
    assert error["error_type"] == "invalid_request"
    if field is not None:
        assert error["metadata"]["field"] == field and field in error["message"]
    assert gw.balance(org) == before


def test_the_routers_own_errors_on_messages_paths_are_in_anthropic_shape(gateway):
    status, body, _ = http("GET", f"{gateway.api}/messages")
    assert status == 405 and assert_anthropic_error(body, "invalid_request_error")
    status, body, _ = http("POST", f"{gateway.api}/messages/batches")
    assert status == 404 and assert_anthropic_error(body, "not_found_error")
    status, body, _ = http("GET", f"{gateway.api}/nothing-here")  # other paths keep OpenRouter's shape
    assert status == 404 and set(body) == {"error"} and body["error"]["code"] == 404


def test_body_over_the_limit_is_413_in_anthropic_shape(make_gateway):
    gw = make_gateway(body_bytes_max=2048)
    gw.org("big", "1.00")
    key, _ = gw.key("big")
    with pytest.raises(anthropic.APIStatusError) as caught:
        client(gw, key).messages.create(model="sim/small", max_tokens=10,
                                        messages=[{"role": "user", "content": "x" * 5000}])
    assert caught.value.status_code == 413
    assert assert_anthropic_error(caught.value.body, "request_too_large")["error_type"] == "payload_too_large"


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failures_keep_their_status(funded, stream):
    gw, org, key = funded
    before = gw.balance(org)
    prompt = [{"role": "user", "content": "hi [[sim status=429 retry_after=7]]"}]
    with pytest.raises(anthropic.RateLimitError) as caught:
        if stream:
            with client(gw, key).messages.stream(model="sim/small", max_tokens=10, messages=prompt) as s:
                s.get_final_message()
        else:
            client(gw, key).messages.create(model="sim/small", max_tokens=10, messages=prompt)
    assert caught.value.response.headers["retry-after"] == "7"
    error = assert_anthropic_error(caught.value.body, "rate_limit_error")
    assert error["metadata"]["provider_name"] == "Farebox Simulator"
    assert gw.balance(org) == before


def test_a_mid_stream_failure_is_an_error_event_and_bills_what_was_delivered(funded):
    gw, org, key = funded
    before = gw.balance(org)
    prompt = [{"role": "user", "content": "hi [[sim cut_after=3 output_tokens=20]]"}]
    started, texts = [], []
    with (pytest.raises(anthropic.APIStatusError) as caught,
          client(gw, key).messages.stream(model="sim/small", max_tokens=50, messages=prompt) as s):
        for event in s:
            if event.type == "message_start":
                started.append(event.message.id)
            elif event.type == "content_block_delta":
                texts.append(event.delta.text)
    # The upstream sent 3 tokens then broke off: an error event ends the stream.
    assert caught.value.status_code == 200
    error = assert_anthropic_error(caught.value.body, "api_error")
    assert error["error_type"] == "provider_unavailable"
    record = generation(gw, key, started[0])
    assert record["finish_reason"] == "error" and record["tokens_completion"] == len(texts) >= 1
    assert gw.balance(org) == before - record["usage"]


def test_a_streaming_client_that_leaves_is_billed_for_what_was_sent(funded, sim_url):
    gw, org, key = funded
    before = gw.balance(org)
    _, stats_before, _ = http("GET", f"{sim_url}/_sim/stats")
    body = {"model": "sim/small", "max_tokens": 4000, "stream": True,
            "messages": [{"role": "user", "content": "long [[sim output_tokens=2000 tokens_per_s=50]]"}]}
    host, port = gw.url.removeprefix("http://").split(":")
    conn = httpclient.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/api/v1/messages", json.dumps(body), {"x-api-key": key, "Content-Type": "application/json"})
    response = conn.getresponse()
    gen_id = response.headers["x-generation-id"]
    assert response.headers["content-type"] == "text/event-stream"
    received = 0
    while received < 5:
        line = response.readline().decode()
        if line.startswith("data: ") and '"text_delta"' in line:
            received += 1
    conn.sock.close()  # the client goes away mid-stream
    conn.close()
    record = generation(gw, key, gen_id)
    assert record["cancelled"] is True and record["streamed"] is True
    assert 5 <= record["tokens_completion"] < 2000
    assert record["total_cost"] > 0 and gw.balance(org) == before - record["usage"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, stats, _ = http("GET", f"{sim_url}/_sim/stats")
        if stats["streams_disconnected"] > stats_before["streams_disconnected"]:
            break
        time.sleep(0.05)
    assert stats["streams_disconnected"] == stats_before["streams_disconnected"] + 1


def test_keepalives_are_ping_events(make_gateway):
    gw = make_gateway(sse_keepalive_s=0.1)
    gw.org("pings", "1.00")
    key, _ = gw.key("pings")
    body = {"model": "sim/small", "max_tokens": 20, "stream": True,
            "messages": [{"role": "user", "content": "wait [[sim ttft_ms=500]]"}]}
    host, port = gw.url.removeprefix("http://").split(":")
    conn = httpclient.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", "/api/v1/messages", json.dumps(body), {"x-api-key": key, "Content-Type": "application/json"})
    text = conn.getresponse().read().decode()
    conn.close()
    assert text.startswith('event: ping\ndata: {"type":"ping"}\n\n')
    assert text.index("event: message_start") > text.index("event: ping")
    assert text.endswith('event: message_stop\ndata: {"type":"message_stop"}\n\n')


def test_a_failure_after_pings_is_an_error_event(make_gateway):
    """Once a ping went out the status line is sent: a timeout before the first token is
    the stream's one error event, with the error's type."""
    gw = make_gateway(upstream_first_byte_timeout_s=1, sse_keepalive_s=0.2)
    gw.org("late", "1.00")
    key, _ = gw.key("late")
    prompt = [{"role": "user", "content": "hi [[sim hang=true]]"}]
    with (pytest.raises(anthropic.APIStatusError) as caught,
          client(gw, key).messages.stream(model="sim/small", max_tokens=10, messages=prompt) as stream):
        stream.get_final_message()
    assert caught.value.status_code == 200
    assert assert_anthropic_error(caught.value.body, "timeout_error")["error_type"] == "timeout"
    assert gw.balance("late") == 1


def test_count_tokens_is_the_gateways_estimate(funded):
    gw, org, key = funded
    before = gw.balance(org)
    counted = client(gw, key).messages.count_tokens(model="claude-sonnet-4-5", messages=MSG, system="Be brief.")
    answered = client(gw, key).messages.create(model="sim/small", max_tokens=20, messages=MSG, system="Be brief.")
    # An estimate (about four bytes a token), close to what the upstream counted.
    assert abs(counted.input_tokens - answered.usage.input_tokens) <= 4
    assert gw.balance(org) == before - usd(answered.usage.model_extra["cost"])
    status, body, _ = http("POST", f"{gw.api}/messages/count_tokens", {"model": "x", "messages": MSG})
    assert status == 401 and assert_anthropic_error(body, "authentication_error")
