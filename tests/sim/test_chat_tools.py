"""Chat Completions: tool calls, stop sequences and the newer controls (fail_after,
context_length, cache_write_tokens), checked with the official `openai` SDK's types."""

from __future__ import annotations

import json
from collections.abc import Iterator

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from tests.sim.contract import post, sse, stats, strict, wait_stats
from tests.simthread import running_sim

HI = [{"role": "user", "content": "hello"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}}}
CLOCK = {"type": "function", "function": {"name": "clock", "parameters": {
    "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}}}}


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_sim() as url:
        yield url


def chat(base: str, prefix: str = "", **kw: object):
    kw.setdefault("model", "m")
    kw.setdefault("messages", HI)
    sdk = openai.OpenAI(base_url=f"{base}{prefix}/v1", api_key="x", max_retries=0)
    return sdk.chat.completions.create(**kw)  # type: ignore[call-overload]


def raw(base: str, body: dict, prefix: str = "") -> tuple[int, dict, bytes]:
    return post(base, prefix + "/v1/chat/completions", {"model": "m", "messages": HI, **body})


def test_tool_call_body_parses_strictly(base: str) -> None:
    status, _, data = raw(base, {"tools": [WEATHER]})
    completion = strict(ChatCompletion, json.loads(data))
    choice = completion.choices[0]
    assert status == 200 and choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_weather"
    args = json.loads(call.function.arguments)
    assert set(args) == {"city"} and isinstance(args["city"], str)
    text = choice.message.content or ""
    assert completion.usage.completion_tokens == len(text.split()) + (len(call.function.arguments) + 3) // 4


def test_streamed_tool_call_arrives_in_pieces_after_its_id_and_name(base: str) -> None:
    status, _, data = raw(base, {"tools": [WEATHER], "stream": True, "stream_options": {"include_usage": True}})
    events = sse(data)
    assert status == 200 and events[-1] == (None, "[DONE]")
    chunks = [strict(ChatCompletionChunk, json.loads(payload)) for _, payload in events[:-1]]
    calls = [d.tool_calls[0] for c in chunks if c.choices and (d := c.choices[0].delta).tool_calls]
    head, pieces = calls[0], calls[1:]
    assert head.index == 0 and head.id.startswith("call_") and head.type == "function"
    assert head.function.name == "get_weather" and head.function.arguments == ""
    assert len(pieces) >= 2 and all(p.id is None and p.function.name is None for p in pieces)
    arguments = "".join(p.function.arguments for p in pieces)
    whole = chat(base, tools=[WEATHER]).choices[0].message.tool_calls[0]
    assert arguments == whole.function.arguments  # the same call, streamed or not
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage.completion_tokens == len(pieces) + sum(
        bool(c.choices and c.choices[0].delta.content) for c in chunks)


def test_tool_choice_and_tool_call_control(base: str) -> None:
    forced = chat(base, tools=[WEATHER, CLOCK], tool_choice={"type": "function", "function": {"name": "clock"}})
    call = forced.choices[0].message.tool_calls[0]
    assert call.function.name == "clock" and json.loads(call.function.arguments) == {"zone": "UTC"}
    for kw in ({"tool_choice": "none"}, {"extra_body": {"sim": {"tool_call": False}}}):
        plain = chat(base, tools=[WEATHER], **kw)
        assert plain.choices[0].finish_reason == "stop" and plain.choices[0].message.tool_calls is None
    assert chat(base, tools=[WEATHER], tool_choice="required").choices[0].finish_reason == "tool_calls"


def test_after_a_tool_result_the_model_answers_in_text(base: str) -> None:
    first = chat(base, tools=[WEATHER]).choices[0].message
    call = first.tool_calls[0]
    messages = HI + [first.model_dump(exclude_none=True),
                     {"role": "tool", "tool_call_id": call.id, "content": "18C and clear"}]
    second = chat(base, tools=[WEATHER], messages=messages)
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content


def test_stop_sequences(base: str) -> None:
    full = chat(base, "/_sim/output_tokens=30").choices[0].message.content
    stop = full.split(" ")[12]
    cut = chat(base, "/_sim/output_tokens=30", stop=["nowhere", stop]).choices[0]
    assert cut.message.content == full[: full.index(stop)] and cut.finish_reason == "stop"


def test_cache_write_tokens_reported_as_openrouter_does(base: str) -> None:
    usage = chat(base, "/_sim/prompt_tokens=100,cached_tokens=60,cache_write_tokens=30").usage
    details = usage.prompt_tokens_details
    assert (usage.prompt_tokens, details.cached_tokens, details.model_dump()["cache_write_tokens"]) == (100, 60, 30)
    assert "cache_write_tokens" not in json.loads(raw(base, {})[2])["usage"]["prompt_tokens_details"]


def test_context_length_exceeded(base: str) -> None:
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as info:
            chat(base, "/_sim/context_length=8", stream=stream)
        assert info.value.code == "context_length_exceeded" and info.value.param == "messages"
        assert info.value.body["message"].startswith("This model's maximum context length is 8 tokens. However, "
                                                     "your messages resulted in 9 tokens.")
    assert chat(base, "/_sim/context_length=9").choices[0].finish_reason == "stop"


def test_fail_after_stream_and_body(base: str) -> None:
    before = stats(base)
    status, _, data = raw(base, {"stream": True, "sim": {"fail_after": 2}})
    events = sse(data)
    assert status == 200 and len(events) == 1 + 2 + 1 and b"[DONE]" not in data
    assert json.loads(events[-1][1])["error"]["type"] == "server_error"
    received = []
    with pytest.raises(openai.APIError) as info:
        for chunk in chat(base, "/_sim/fail_after=3", stream=True):
            received.append(chunk.choices[0].delta.content)
    assert len(received) == 1 + 3 and "server had an error" in info.value.message
    after = wait_stats(base, lambda s: s["streams_failed"] >= before["streams_failed"] + 2)
    assert after["streams_failed"] == before["streams_failed"] + 2
    assert after["streams_cut"] == before["streams_cut"]
    with pytest.raises(openai.InternalServerError):
        chat(base, "/_sim/fail_after=3")


def test_cut_after_wins_a_tie_with_fail_after(base: str) -> None:
    with pytest.raises(openai.APIConnectionError):
        list(chat(base, "/_sim/fail_after=2,cut_after=2", stream=True))
