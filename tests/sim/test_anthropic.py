"""The simulator speaks Anthropic's Messages API: every body and stream event is parsed with
the official `anthropic` SDK's own types, and every behaviour control works in this dialect."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator

import aiohttp
import anthropic
import pytest
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse

from tests.sim.contract import post, sse, stats, strict, wait_stats
from tests.simthread import running_sim

HI = [{"role": "user", "content": "hello"}]
WEATHER = {"name": "get_weather", "description": "Current weather.", "input_schema": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city"]}}
# message_start, then blocks (start, one ping after the first start, deltas, stop), then the end.
EVENT_ORDER = re.compile(
    r"message_start (ping )?(content_block_start (ping )?(content_block_delta )*content_block_stop )*"
    r"message_delta message_stop "
)


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_sim() as url:
        yield url


def client(base: str, prefix: str = "") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=base + prefix, api_key="x", max_retries=0)


def create(base: str, prefix: str = "", **kw: object) -> Message:
    kw.setdefault("model", "claude-sim")
    kw.setdefault("max_tokens", 1000)
    kw.setdefault("messages", HI)
    return client(base, prefix).messages.create(**kw)  # type: ignore[call-overload]


def raw(base: str, body: dict, prefix: str = "") -> tuple[int, dict, bytes]:
    body = {"model": "claude-sim", "max_tokens": 1000, "messages": HI, **body}
    return post(base, prefix + "/v1/messages", body)


def events(data: bytes) -> list[dict]:
    """The events of a complete stream, each checked to be its own `event:` type and to parse
    as the SDK's RawMessageStreamEvent (ping has no SDK type: it is skipped by the SDK)."""
    out = []
    for name, payload in sse(data):
        event = json.loads(payload)
        assert name == event["type"]
        if name == "ping":
            assert event == {"type": "ping"}
        else:
            strict(RawMessageStreamEvent, event)
        out.append(event)
    return out


def without_ids(message: dict) -> dict:
    message = {**message, "id": None}
    message["content"] = [{**b, "id": None} if b["type"] == "tool_use" else b for b in message["content"]]
    return message


# --- bodies ---------------------------------------------------------------------------


def test_plain_message_parses_strictly(base: str) -> None:
    status, headers, data = raw(base, {})
    assert status == 200 and headers["request-id"].startswith("req_")
    body = json.loads(data)
    message = strict(Message, body)
    assert message.id.startswith("msg_") and message.model == "claude-sim" and message.role == "assistant"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert [b.type for b in message.content] == ["text"] and 16 <= len(message.content[0].text.split()) <= 64
    assert set(body["usage"]) == {"input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                                  "output_tokens"}
    assert message.usage.input_tokens == 3 + 4 + 2
    assert message.usage.output_tokens == len(message.content[0].text.split())
    # The SDK agrees, with x-api-key and anthropic-version sent, and without them (raw above).
    assert create(base).content[0].text == message.content[0].text


def test_prompt_count_covers_system_text_tool_results_images_and_documents(base: str) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    document = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "doc"}}
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "abcd"}, image, {"type": "text", "text": "efgh"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"x": 1}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "12345"},
                                     document]},
    ]
    message = create(base, system=[{"type": "text", "text": "héllo wörld"}], messages=messages)
    # system 13 bytes -> 4; text 8 bytes -> 2 + an image; tool_use not text -> 0; tool result 5 bytes -> 2 + a document
    assert message.usage.input_tokens == 3 + (4 + 4) + (4 + 2 + 85) + 4 + (4 + 2 + 85)


def test_same_request_same_text_and_deterministic_across_system_changes(base: str) -> None:
    assert create(base).content[0].text == create(base).content[0].text
    assert create(base).content[0].text != create(base, system="be terse").content[0].text


def test_tool_use_with_arguments_from_the_schema(base: str) -> None:
    status, _, data = raw(base, {"tools": [WEATHER]})
    assert status == 200
    message = strict(Message, json.loads(data))
    assert message.stop_reason == "tool_use"
    call = message.content[-1]
    assert call.type == "tool_use" and call.name == "get_weather" and call.id.startswith("toolu_")
    assert set(call.input) == {"city"} and isinstance(call.input["city"], str)
    text = "".join(b.text for b in message.content if b.type == "text")
    tokens = len(text.split()) + (len(json.dumps(call.input, separators=(",", ":"))) + 3) // 4
    assert message.usage.output_tokens == tokens


def test_tool_choice_forces_a_tool_or_forbids_calls(base: str) -> None:
    other = {**WEATHER, "name": "other", "input_schema": {"type": "object", "properties": {"n": {"type": "integer"}}}}
    forced = create(base, tools=[WEATHER, other], tool_choice={"type": "tool", "name": "other"})
    assert forced.content[-1].name == "other" and isinstance(forced.content[-1].input["n"], int)
    assert create(base, tools=[WEATHER, other], tool_choice={"type": "any"}).content[-1].name == "get_weather"
    none = create(base, tools=[WEATHER], tool_choice={"type": "none"})
    assert none.stop_reason == "end_turn" and [b.type for b in none.content] == ["text"]
    assert create(base, "/_sim/tool_call=false", tools=[WEATHER]).stop_reason == "end_turn"


def test_after_a_tool_result_the_model_answers_in_text(base: str) -> None:
    first = create(base, tools=[WEATHER])
    call = first.content[-1]
    messages = HI + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18C and clear"}]},
    ]
    second = create(base, tools=[WEATHER], messages=messages)
    assert second.stop_reason == "end_turn" and [b.type for b in second.content] == ["text"]


def test_thinking_enabled_gives_a_signed_thinking_block_first(base: str) -> None:
    message = create(base, thinking={"type": "enabled", "budget_tokens": 500})
    thinking, text = message.content
    assert thinking.type == "thinking" and len(thinking.thinking.split()) == 8 and thinking.signature
    assert text.type == "text"
    assert message.usage.output_tokens == 8 + len(text.text.split())
    small = create(base, thinking={"type": "enabled", "budget_tokens": 3})
    assert len(small.content[0].thinking.split()) == 3  # the default 8, capped by the budget
    assert [b.type for b in create(base, thinking={"type": "disabled"}).content] == ["text"]


def test_reasoning_tokens_control_and_max_tokens_cap_thinking_plus_text(base: str) -> None:
    message = create(base, "/_sim/reasoning_tokens=5,output_tokens=4")
    assert [len(b.thinking.split()) if b.type == "thinking" else len(b.text.split()) for b in message.content] == [5, 4]
    capped = create(base, "/_sim/reasoning_tokens=5,output_tokens=4", max_tokens=7)
    assert capped.stop_reason == "max_tokens" and capped.usage.output_tokens == 7
    assert len(capped.content[1].text.split()) == 2


def test_stop_sequences(base: str) -> None:
    full = create(base, "/_sim/output_tokens=30").content[0].text
    stop = full.split(" ")[12]
    message = create(base, "/_sim/output_tokens=30", stop_sequences=[stop])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    assert message.content[0].text == full[: full.index(stop)]


# --- streaming ------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [{}, {"tools": [WEATHER], "thinking": {"type": "enabled", "budget_tokens": 100}},
                                   {"sim": {"output_tokens": 0}}])
def test_stream_events_in_order_and_parse(base: str, extra: dict) -> None:
    status, headers, data = raw(base, {"stream": True, **extra})
    assert status == 200 and headers["content-type"].startswith("text/event-stream") and headers["request-id"]
    evs = events(data)
    assert EVENT_ORDER.fullmatch(" ".join(e["type"] for e in evs) + " ")
    assert sum(e["type"] == "ping" for e in evs) == 1
    start, delta = evs[0]["message"], evs[-2]
    assert start["content"] == [] and start["stop_reason"] is None
    assert set(start["usage"]) == {"input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens",
                                   "output_tokens"}
    whole = strict(Message, json.loads(raw(base, extra)[2]))
    assert delta["usage"]["output_tokens"] == whole.usage.output_tokens  # cumulative at the end
    assert delta["delta"] == {"stop_reason": whole.stop_reason, "stop_sequence": None}


def test_stream_deltas_rebuild_the_whole_message(base: str) -> None:
    body = {"tools": [WEATHER], "thinking": {"type": "enabled", "budget_tokens": 100}}
    evs = events(raw(base, {"stream": True, **body})[2])
    whole = json.loads(raw(base, body)[2])
    kinds = [e["delta"]["type"] for e in evs if e["type"] == "content_block_delta"]
    assert kinds.count("signature_delta") == 1 and kinds.index("signature_delta") == kinds.count("thinking_delta")
    pieces = [e["delta"]["partial_json"] for e in evs if e["type"] == "content_block_delta"
              and e["delta"]["type"] == "input_json_delta"]
    assert len(pieces) >= 2 and json.loads("".join(pieces)) == whole["content"][-1]["input"]
    thinking = "".join(e["delta"].get("thinking", "") for e in evs if e["type"] == "content_block_delta")
    assert thinking == whole["content"][0]["thinking"]
    starts = [e["content_block"] for e in evs if e["type"] == "content_block_start"]
    assert [s["type"] for s in starts] == [b["type"] for b in whole["content"]]
    assert starts[-1]["input"] == {} and starts[-1]["name"] == "get_weather"


@pytest.mark.parametrize("extra", [{}, {"tools": [WEATHER]}, {"thinking": {"type": "enabled", "budget_tokens": 50}},
                                   {"stop_sequences": ["the"]}])
def test_sdk_stream_final_message_equals_the_whole_message(base: str, extra: dict) -> None:
    kw = {"model": "claude-sim", "max_tokens": 1000, "messages": HI, **extra}
    with client(base).messages.stream(**kw) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    whole = create(base, **extra)
    assert without_ids(final.model_dump()) == without_ids(whole.model_dump())
    assert text == "".join(b.text for b in whole.content if b.type == "text")
    raw_events = list(client(base).messages.create(stream=True, **kw))  # type: ignore[call-overload]
    assert raw_events[0].type == "message_start" and raw_events[-1].type == "message_stop"


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc", "etype"),
    [
        (400, anthropic.BadRequestError, "invalid_request_error"),
        (401, anthropic.AuthenticationError, "authentication_error"),
        (402, anthropic.APIStatusError, "billing_error"),
        (403, anthropic.PermissionDeniedError, "permission_error"),
        (404, anthropic.NotFoundError, "not_found_error"),
        (413, anthropic.APIStatusError, "request_too_large"),
        (429, anthropic.RateLimitError, "rate_limit_error"),
        (500, anthropic.InternalServerError, "api_error"),
        (504, anthropic.InternalServerError, "timeout_error"),
        (529, getattr(anthropic, "OverloadedError", anthropic.InternalServerError), "overloaded_error"),
    ],
)
def test_status_answers_anthropic_errors(base: str, status: int, exc: type, etype: str) -> None:
    for stream in (False, True):
        with pytest.raises(exc) as info:
            create(base, f"/_sim/status={status}", stream=stream)
        assert info.value.status_code == status and info.value.body["error"]["type"] == etype
    code, headers, data = raw(base, {"sim": {"status": status}})
    body = json.loads(data)
    assert code == status and body["request_id"] == headers["request-id"]
    assert set(body) == {"type", "error", "request_id"} and body["type"] == "error"
    if status != 413:  # request_too_large comes from Anthropic's proxy; the SDK's union leaves it out
        strict(ErrorResponse, body)
    assert ("retry-after" in headers) == (status == 429)


def test_retry_after_control(base: str) -> None:
    _, headers, _ = raw(base, {}, "/_sim/status=529,retry_after=9")
    assert headers["retry-after"] == "9"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": "m", "messages": HI}, "max_tokens: Field required"),
        ({"max_tokens": 10, "messages": HI}, "model: Field required"),
        ({"model": "m", "max_tokens": 10}, "messages: Field required"),
        ({"model": "m", "max_tokens": 0, "messages": HI}, "max_tokens: Input should be greater than or equal to 1"),
        ({"model": "m", "max_tokens": 10, "messages": []}, "messages: at least one message is required"),
        ({"model": "m", "max_tokens": 10, "messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"model": "m", "max_tokens": 10, "messages": HI, "thinking": {"type": "enabled", "budget_tokens": 10}},
         "`max_tokens` must be greater than `thinking.budget_tokens`"),
        ({"model": "m", "max_tokens": 10, "messages": HI, "sim": {"nope": 1}}, "nope"),
    ],
)
def test_validation_errors_in_anthropic_shape(base: str, body: dict, message: str) -> None:
    status, headers, data = post(base, "/v1/messages", body)
    error = strict(ErrorResponse, json.loads(data))
    assert status == 400 and error.error.type == "invalid_request_error" and message in error.error.message
    assert error.request_id == headers["request-id"]
    status, _, data = post(base, "/v1/messages", b"{not json")
    assert status == 400 and json.loads(data)["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.BadRequestError):
        client(base).messages.create(model="m", max_tokens=10, messages=[])


# --- controls -------------------------------------------------------------------------


def test_directives_in_system_and_message_text_and_prefix(base: str) -> None:
    message = create(base, "/_sim/output_tokens=2", system="brief [[sim output_tokens=3]]")
    assert len(message.content[0].text.split()) == 3
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi [[sim output_tokens=5]]"}]}]
    message = create(base, "/_sim/output_tokens=2", system="[[sim output_tokens=3]]", messages=messages)
    assert len(message.content[0].text.split()) == 5
    assert len(create(base, "/_sim/output_tokens=2").content[0].text.split()) == 2


def test_cached_and_cache_write_tokens(base: str) -> None:
    message = create(base, "/_sim/prompt_tokens=100,cached_tokens=60,cache_write_tokens=30")
    u = message.usage
    assert (u.input_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens) == (10, 60, 30)
    capped = create(base, "/_sim/prompt_tokens=100,cached_tokens=90,cache_write_tokens=30").usage
    assert (capped.input_tokens, capped.cache_read_input_tokens, capped.cache_creation_input_tokens) == (0, 90, 10)


def test_usage_false_leaves_usage_out(base: str) -> None:
    _, _, data = raw(base, {"sim": {"usage": False}})
    assert "usage" not in json.loads(data)
    _, _, data = raw(base, {"stream": True}, "/_sim/usage=false")
    assert b'"usage"' not in data and data.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')


def test_context_length(base: str) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        create(base, "/_sim/context_length=5", stream=True)
    assert info.value.body["error"]["message"] == "prompt is too long: 9 tokens > 5 maximum"
    assert create(base, "/_sim/context_length=9").stop_reason == "end_turn"


def test_cut_after_stream_and_body(base: str) -> None:
    before = stats(base)

    async def read() -> bytes:
        got = b""
        async with aiohttp.ClientSession() as session:
            body = {"model": "m", "max_tokens": 100, "messages": HI, "stream": True}
            async with session.post(base + "/_sim/cut_after=3/v1/messages", json=body) as resp:
                with pytest.raises(aiohttp.ClientPayloadError):
                    async for line in resp.content:
                        got += line
        return got

    got = asyncio.run(read())
    assert got.count(b"event: content_block_delta") == 3 and b"message_stop" not in got
    with pytest.raises(anthropic.APIConnectionError):
        create(base, "/_sim/cut_after=0")
    after = wait_stats(base, lambda s: s["streams_cut"] > before["streams_cut"])
    assert after["streams_cut"] == before["streams_cut"] + 1


def test_fail_after_stream_sends_an_error_event(base: str) -> None:
    before = stats(base)
    status, _, data = raw(base, {"stream": True, "sim": {"fail_after": 2}})
    assert status == 200
    names = [name for name, _ in sse(data)]
    assert names[-1] == "error" and names.count("content_block_delta") == 2 and "message_stop" not in names
    assert json.loads(sse(data)[-1][1])["error"]["type"] == "overloaded_error"
    received = []
    with pytest.raises(anthropic.APIStatusError) as info:
        for event in client(base, "/_sim/fail_after=3").messages.create(model="m", max_tokens=100, messages=HI,
                                                                         stream=True):
            received.append(event.type)
    assert info.value.body["error"]["type"] == "overloaded_error" and received.count("content_block_delta") == 3
    after = wait_stats(base, lambda s: s["streams_failed"] >= before["streams_failed"] + 2)
    assert after["streams_failed"] == before["streams_failed"] + 2
    with pytest.raises(anthropic.InternalServerError) as err:
        create(base, "/_sim/fail_after=3")
    assert err.value.status_code == 500 and err.value.body["error"]["type"] == "api_error"


def test_garbage(base: str) -> None:
    status, _, data = raw(base, {"sim": {"garbage": True}})
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(data)
    status, _, data = raw(base, {"stream": True, "sim": {"garbage": True}})
    assert status == 200
    for _, payload in sse(data):
        with pytest.raises(ValueError):
            json.loads(payload)


def test_ttft_and_tokens_per_s(base: str) -> None:
    t0 = time.monotonic()
    create(base, "/_sim/ttft_ms=300")
    assert time.monotonic() - t0 >= 0.25
    t0 = time.monotonic()
    status, _, data = raw(base, {"stream": True}, "/_sim/tokens_per_s=20,output_tokens=6")
    assert time.monotonic() - t0 >= 0.2 and status == 200  # 5 gaps of 50 ms
    assert [name for name, _ in sse(data)].count("content_block_delta") == 6


def test_stats_count_messages_streams(base: str) -> None:
    before = stats(base)
    raw(base, {"stream": True})
    raw(base, {})
    after = wait_stats(base, lambda s: s["streams_completed"] > before["streams_completed"])
    assert after["requests"] == before["requests"] + 2
    assert after["streams_started"] == before["streams_started"] + 1
    assert after["streams_completed"] == before["streams_completed"] + 1


def test_thinking_with_tools_requires_the_signed_thinking_block_back():
    """Anthropic refuses a tool loop whose last assistant turn lost its thinking block or
    changed it; the simulator does too, so the gateway's round trip is really checked."""
    from farebox.sim.anthropic import _problem, signature

    call = {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}
    result = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}]}

    def body(assistant_content):
        return {"model": "m", "max_tokens": 100, "thinking": {"type": "enabled", "budget_tokens": 50},
                "messages": [{"role": "user", "content": "q"},
                             {"role": "assistant", "content": assistant_content}, result]}

    good = {"type": "thinking", "thinking": "hm", "signature": signature("hm")}
    assert _problem(body([good, call])) is None
    assert "must start with a thinking block" in _problem(body([call]))
    assert "Invalid `signature`" in _problem(body([{**good, "signature": ""}, call]))
    assert "Invalid `signature`" in _problem(body([{**good, "thinking": "changed"}, call]))
    assert _problem({**body([call]), "thinking": {"type": "disabled"}}) is None
