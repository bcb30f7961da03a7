"""The Anthropic Messages dialect: the pure translations both ways, every stream event, the
error mapping, and the dialect on the wire against a small Anthropic-shaped server.

Fixtures are checked against the official `anthropic` SDK's types, so they are known to be
shaped like Anthropic's own, and requests are checked against its request types, so
`to_anthropic` is known to send only fields Anthropic accepts."""

from __future__ import annotations

import asyncio
import collections.abc
import types
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal, Required, Union, get_args, get_origin, get_type_hints

import orjson
import pydantic
import pytest
from aiohttp import web
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.message_create_params import (
    MessageCreateParamsNonStreaming,
    MessageCreateParamsStreaming,
)
from anthropic.types.shared import ErrorResponse
from typing_extensions import is_typeddict

from farebox.catalog.model import Endpoint, Pricing, Provider
from farebox.errors import BadRequest, ProviderError
from farebox.providers.anthropic import (
    AnthropicDialect,
    StreamTranslator,
    from_anthropic,
    read_fault,
    usage_from_anthropic,
)
from farebox.providers.anthropic_request import to_anthropic
from farebox.providers.base import Call
from farebox.providers.http import Upstreams

USER = {"role": "user", "content": "hi"}
PNG = "data:image/png;base64,iVBORw0KGgo="
PDF = "data:application/pdf;base64,JVBERi0xLjQ="
# Sampling parameters the SDK's request types no longer list (Anthropic deprecated them on
# its newest models) but the API still takes on the models that support them.
SAMPLING = ("temperature", "top_p", "top_k")


def translate(stream: bool = False, user_tag: str | None = None, **body: Any) -> dict[str, Any]:
    body.setdefault("messages", [USER])
    return to_anthropic(body, "claude-test-1", 8192, user_tag, stream)


def conforms(value: Any, hint: Any) -> bool:
    """Does `value` fit the SDK's TypedDict `hint` exactly: no unknown keys, no missing
    required ones, every literal one the SDK knows?"""
    if hint is Any or hint is object:
        return True
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return any(conforms(value, arg) for arg in args)
    if origin is Literal:
        return value in args
    if is_typeddict(hint):
        fields = get_type_hints(hint)
        # The SDK's `Required[...]` hide in string annotations, out of `__required_keys__`' sight.
        required = {k for k, v in get_type_hints(hint, include_extras=True).items() if get_origin(v) is Required}
        return (isinstance(value, dict) and set(value) <= set(fields) and required <= set(value)
                and all(conforms(v, fields[k]) for k, v in value.items()))
    if origin in (list, collections.abc.Iterable, collections.abc.Sequence):
        return isinstance(value, list) and all(conforms(item, args[0]) for item in value)
    if origin in (dict, collections.abc.Mapping):
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if isinstance(hint, type) and issubclass(hint, pydantic.BaseModel):
        return False  # the SDK's response objects: a request we build is plain dicts
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    if isinstance(origin, type):
        return isinstance(value, origin)
    raise AssertionError(f"no rule for {hint!r}")


def assert_sdk_accepts(request: dict[str, Any]) -> None:
    params = {k: v for k, v in request.items() if k not in SAMPLING}
    expected = MessageCreateParamsStreaming if request.get("stream") else MessageCreateParamsNonStreaming
    assert conforms(params, expected), request


def test_conformance_check_can_fail():
    request = translate()
    request["messages"][0]["content"][0]["bogus"] = 1
    assert not conforms(request, MessageCreateParamsNonStreaming)
    assert not conforms({**translate(), "frequency_penalty": 1}, MessageCreateParamsNonStreaming)
    assert not conforms({"model": "m", "messages": []}, MessageCreateParamsNonStreaming)  # no max_tokens


# -- request -----------------------------------------------------------------------


def test_minimal_request_sends_max_tokens_and_nothing_else():
    assert translate() == {"model": "claude-test-1", "max_tokens": 8192,
                           "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}


def test_unknown_and_gateway_fields_never_pass_through():
    request = translate(model="anthropic/claude", models=["a/b"], provider={"order": ["x"]}, seed=1, user="alice",
                        frequency_penalty=0.5, presence_penalty=0.1, logit_bias={"1": 2}, n=1, usage={"include": True},
                        response_format={"type": "json_object"}, stream_options={"include_usage": True},
                        session_id="s", transforms=[], custom={"x": 1})
    assert request == translate()


def test_max_tokens_prefers_max_completion_tokens_then_max_tokens_then_the_endpoint_cap():
    assert translate(max_tokens=100)["max_tokens"] == 100
    assert translate(max_tokens=100, max_completion_tokens=200)["max_tokens"] == 200


def test_system_and_developer_messages_go_to_the_top_level_system_in_order():
    request = translate(messages=[
        {"role": "system", "content": "Be brief."},
        USER,
        {"role": "developer", "content": [{"type": "text", "text": "Cached rules",
                                           "cache_control": {"type": "ephemeral"}},
                                          {"type": "text", "text": ""}]},
        {"role": "system", "content": ""},
    ])
    assert request["system"] == [{"type": "text", "text": "Be brief."},
                                 {"type": "text", "text": "Cached rules", "cache_control": {"type": "ephemeral"}}]
    assert request["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert_sdk_accepts(request)


def test_system_messages_take_only_text():
    with pytest.raises(BadRequest, match=r"messages\[0\]\.content\[0\]"):
        translate(messages=[{"role": "system", "content": [{"type": "image_url", "image_url": {"url": PNG}}]}, USER])


def test_tool_loop_becomes_alternating_turns_with_tool_results_first():
    request = translate(messages=[
        USER,
        {"role": "assistant", "content": "Let me look.", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}},
            {"id": "toolu_2", "type": "function", "function": {"name": "clock", "arguments": ""}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": [{"type": "text", "text": "noon"}]},
        {"role": "user", "content": "Thanks"},
        {"role": "user", "content": "And tomorrow?"},
    ])
    assert request["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [
            {"type": "text", "text": "Let me look."},
            {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {"city": "Paris"}},
            {"type": "tool_use", "id": "toolu_2", "name": "clock", "input": {}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": [{"type": "text", "text": "noon"}]},
            {"type": "text", "text": "Thanks"}, {"type": "text", "text": "And tomorrow?"}]},
    ]
    assert_sdk_accepts(request)


def test_a_tool_result_after_user_text_still_comes_first_in_the_turn():
    request = translate(messages=[
        USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": "also"}, {"role": "tool", "tool_call_id": "t1", "content": ""}])
    assert request["messages"][2]["content"] == [{"type": "tool_result", "tool_use_id": "t1"},
                                                 {"type": "text", "text": "also"}]
    assert_sdk_accepts(request)


def test_empty_messages_are_dropped_and_their_neighbours_merged():
    request = translate(messages=[USER, {"role": "assistant", "content": ""}, {"role": "user", "content": "again"}])
    assert request["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                                {"type": "text", "text": "again"}]}]


def test_content_parts_become_blocks():
    request = translate(messages=[{"role": "user", "content": [
        {"type": "text", "text": "Look", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "text", "text": ""},
        {"type": "image_url", "image_url": {"url": PNG, "detail": "high"}},
        {"type": "image_url", "image_url": "https://example.com/cat.jpg"},
        {"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j/"},
         "cache_control": {"type": "ephemeral"}},
        {"type": "file", "file": {"filename": "report.pdf", "file_data": PDF}},
    ]}])
    assert request["messages"][0]["content"] == [
        {"type": "text", "text": "Look", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/"},
         "cache_control": {"type": "ephemeral"}},
        {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQ="},
         "title": "report.pdf"},
    ]
    assert_sdk_accepts(request)


@pytest.mark.parametrize(("part", "field", "named"), [
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "", "'input_audio'"),
    ({"type": "video_url", "video_url": {"url": "https://example.com/v.mp4"}}, "", "'video_url'"),
    ({"type": "file", "file": {"filename": "a.txt", "file_data": "data:text/plain;base64,aGk="}}, ".file", "PDF"),
    ({"type": "file", "file": {"file_id": "file-123"}}, ".file", "PDF"),
    ({"type": "image_url", "image_url": {"url": "data:image/svg+xml;base64,PHN2Zz4="}}, ".image_url", "image/png"),
    ({"type": "image_url", "image_url": {"url": "ftp://example.com/cat.png"}}, ".image_url", "http(s)"),
    ({"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}, ".image_url", "base64"),
])
def test_parts_anthropic_cannot_take_are_rejected_by_name(part, field, named):
    with pytest.raises(BadRequest) as caught:
        translate(messages=[USER, {"role": "user", "content": [{"type": "text", "text": "x"}, part]}])
    assert caught.value.metadata["field"] == f"messages[1].content[1]{field}"
    assert named in caught.value.message


@pytest.mark.parametrize("arguments", ["{not json", "[1, 2]", '"a string"'])
def test_tool_call_arguments_must_be_a_json_object(arguments):
    with pytest.raises(BadRequest, match=r"messages\[1\]\.tool_calls\[0\]\.function\.arguments") as caught:
        translate(messages=[USER, {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": arguments}}]}])
    assert caught.value.metadata["field"] == "messages[1].tool_calls[0].function.arguments"


def test_assistant_reasoning_details_go_back_first_and_unchanged():
    request = translate(messages=[USER, {
        "role": "assistant", "content": "Checking.",
        "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
        "reasoning": "I should check.",
        "reasoning_details": [
            {"type": "reasoning.text", "text": "I should check.", "signature": "sig-1", "format": "anthropic-claude-v1",
             "index": 0},
            {"type": "reasoning.encrypted", "data": "opaque", "format": "anthropic-claude-v1", "index": 1},
            {"type": "reasoning.text", "text": "unsigned", "format": "anthropic-claude-v1"},
            {"type": "reasoning.text", "text": "Gemini's", "signature": "g-sig", "format": "google-gemini-v1"},
            {"type": "reasoning.summary", "summary": "a summary", "format": "anthropic-claude-v1"},
        ]}])
    assert request["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "I should check.", "signature": "sig-1"},
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "t1", "name": "f", "input": {}},
    ]
    assert_sdk_accepts(request)


def test_tools_and_tool_choice():
    tools = [
        {"type": "function", "function": {"name": "weather", "description": "Weather for a city",
                                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                         "required": ["city"]}, "strict": True}},
        {"type": "function", "function": {"name": "clock"}, "cache_control": {"type": "ephemeral"}},
    ]
    request = translate(tools=tools, tool_choice="auto")
    assert request["tools"] == [
        {"name": "weather", "description": "Weather for a city",
         "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
        {"name": "clock", "input_schema": {"type": "object", "properties": {}}, "cache_control": {"type": "ephemeral"}},
    ]
    assert request["tool_choice"] == {"type": "auto"}
    assert_sdk_accepts(request)
    assert translate(tools=tools, tool_choice="required")["tool_choice"] == {"type": "any"}
    assert translate(tools=tools, tool_choice="none")["tool_choice"] == {"type": "none"}
    named = {"type": "function", "function": {"name": "clock"}}
    assert translate(tools=tools, tool_choice=named)["tool_choice"] == {"type": "tool", "name": "clock"}
    assert "tool_choice" not in translate(tools=tools)


def test_parallel_tool_calls_false_disables_parallel_use():
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert translate(tools=tools, parallel_tool_calls=False)["tool_choice"] == {
        "type": "auto", "disable_parallel_tool_use": True}
    assert translate(tools=tools, tool_choice="required", parallel_tool_calls=False)["tool_choice"] == {
        "type": "any", "disable_parallel_tool_use": True}
    assert translate(tools=tools, tool_choice="none", parallel_tool_calls=False)["tool_choice"] == {"type": "none"}
    assert "tool_choice" not in translate(tools=tools, parallel_tool_calls=True)
    assert_sdk_accepts(translate(tools=tools, tool_choice={"type": "function", "function": {"name": "f"}},
                                 parallel_tool_calls=False))


def test_tool_choice_without_tools_is_not_sent():
    assert translate(tool_choice="required", parallel_tool_calls=False) == translate()


@pytest.mark.parametrize(("body", "field"), [
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools[0]"),
    ({"tools": [{"type": "web_search"}]}, "tools[0]"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function"}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "any"}, "tool_choice"),
])
def test_malformed_tools_are_bad_requests(body, field):
    with pytest.raises(BadRequest) as caught:
        translate(**body)
    assert caught.value.metadata["field"] == field


def test_sampling_stop_metadata_stream_and_cache_control():
    request = translate(stream=True, user_tag="user-hash", temperature=1.7, top_p=0.9, top_k=40,
                        stop=["END", "", "STOP"], cache_control={"type": "ephemeral", "ttl": "1h"})
    assert request["temperature"] == 1  # OpenAI's 0..2 clamped into Anthropic's 0..1
    assert (request["top_p"], request["top_k"]) == (0.9, 40)
    assert request["stop_sequences"] == ["END", "STOP"]
    assert request["metadata"] == {"user_id": "user-hash"}
    assert request["stream"] is True
    assert request["cache_control"] == {"type": "ephemeral", "ttl": "1h"}
    assert_sdk_accepts(request)
    assert translate(temperature=0.3, stop="END")["temperature"] == 0.3
    assert translate(stop="END")["stop_sequences"] == ["END"]
    assert "stop_sequences" not in translate(stop=[])


@pytest.mark.parametrize(("body", "max_tokens", "budget"), [
    ({"reasoning": {"max_tokens": 3000}}, 8192, 3000),
    ({"reasoning": {"max_tokens": 100}}, 8192, 1024),          # raised to Anthropic's minimum
    ({"reasoning": {"max_tokens": 9000}}, 8192, 8191),         # kept below max_tokens
    ({"reasoning": {"effort": "max"}}, 10000, 9500),
    ({"reasoning": {"effort": "xhigh"}}, 10000, 9500),
    ({"reasoning": {"effort": "high"}}, 10000, 8000),
    ({"reasoning": {"effort": "medium"}}, 10000, 5000),
    ({"reasoning": {"effort": "low"}}, 10000, 2000),
    ({"reasoning": {"effort": "minimal"}}, 10000, 1024),
    ({"reasoning": {"enabled": True}}, 10000, 5000),
    ({"reasoning_effort": "high"}, 10000, 8000),
    ({"reasoning": {"effort": "low"}, "reasoning_effort": "high"}, 10000, 2000),
    ({"reasoning": {"effort": "low"}}, 1025, 1024),
    ({"reasoning": {"effort": "high"}}, 1024, None),           # no room for the minimum budget
    ({"reasoning": {"effort": "none"}}, 10000, None),
    ({"reasoning_effort": "none"}, 10000, None),
    ({"reasoning": {"enabled": False, "max_tokens": 3000}}, 10000, None),
    ({"reasoning": {"exclude": True}}, 10000, None),
    ({}, 10000, None),
])
def test_reasoning_becomes_a_thinking_budget(body, max_tokens, budget):
    request = translate(max_tokens=max_tokens, **body)
    assert request["max_tokens"] == max_tokens  # never raised: the credit hold was sized from it
    assert request.get("thinking") == (None if budget is None else {"type": "enabled", "budget_tokens": budget})
    assert_sdk_accepts(request)


@pytest.mark.parametrize(("reasoning", "field"), [
    ({"effort": "extreme"}, "reasoning.effort"), ({"max_tokens": 0}, "reasoning.max_tokens"),
    ({"max_tokens": "many"}, "reasoning.max_tokens"),
])
def test_invalid_reasoning_is_a_bad_request(reasoning, field):
    with pytest.raises(BadRequest) as caught:
        translate(reasoning=reasoning)
    assert caught.value.metadata["field"] == field


def test_thinking_drops_the_sampling_it_rejects():
    request = translate(reasoning={"effort": "high"}, temperature=0.5, top_k=10, top_p=0.9)
    assert not {"temperature", "top_k", "top_p"} & set(request)
    assert translate(reasoning={"effort": "high"}, top_p=0.97)["top_p"] == 0.97


# -- reply -------------------------------------------------------------------------

TEXT_MESSAGE = {
    "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "type": "message", "role": "assistant", "model": "claude-test-1",
    "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": ", world"}],
    "stop_reason": "end_turn", "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 6, "cache_creation_input_tokens": 100,
              "cache_read_input_tokens": 2000},
}
TOOL_MESSAGE = {
    "id": "msg_tools", "type": "message", "role": "assistant", "model": "claude-test-1",
    "content": [
        {"type": "thinking", "thinking": "The user wants weather.", "signature": "sig-abc"},
        {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va"},
        {"type": "tool_use", "id": "toolu_01A", "name": "weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_01B", "name": "clock", "input": {}},
    ],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 50, "output_tokens": 80, "cache_creation_input_tokens": None,
              "cache_read_input_tokens": None},
}


@pytest.mark.parametrize("fixture", [TEXT_MESSAGE, TOOL_MESSAGE])
def test_reply_fixtures_are_valid_anthropic_messages(fixture):
    Message.model_validate(fixture)


def test_text_reply():
    body, usage, upstream_id = from_anthropic(TEXT_MESSAGE, created=1767225600)
    assert upstream_id == "msg_01XFDUDYJgAACzvnptvVoYEL"
    assert body == {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL", "object": "chat.completion", "created": 1767225600,
        "model": "claude-test-1",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop", "native_finish_reason": "end_turn",
                     "message": {"role": "assistant", "content": "Hello, world", "reasoning": None,
                                 "reasoning_details": []}}],
    }
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.cache_write_tokens,
            usage.reasoning_tokens) == (2112, 6, 2000, 100, 0)


def test_tool_and_thinking_reply():
    body, usage, _ = from_anthropic(TOOL_MESSAGE)
    choice = body["choices"][0]
    assert (choice["finish_reason"], choice["native_finish_reason"]) == ("tool_calls", "tool_use")
    assert choice["message"] == {
        "role": "assistant", "content": None, "reasoning": "The user wants weather.",
        "reasoning_details": [
            {"type": "reasoning.text", "text": "The user wants weather.", "signature": "sig-abc",
             "format": "anthropic-claude-v1", "index": 0},
            {"type": "reasoning.encrypted", "data": "EmwKAhgBEgy3va", "format": "anthropic-claude-v1", "index": 1}],
        "tool_calls": [
            {"id": "toolu_01A", "type": "function", "function": {"name": "weather", "arguments": '{"city":"Paris"}'}},
            {"id": "toolu_01B", "type": "function", "function": {"name": "clock", "arguments": "{}"}}],
    }
    assert (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens, usage.reasoning_tokens) == (50, 80, 0, 0)


def test_a_reply_that_round_trips_keeps_its_thinking():
    """What the client gets back and sends again is what Anthropic needs to see again."""
    body, _, _ = from_anthropic(TOOL_MESSAGE)
    request = translate(messages=[USER, body["choices"][0]["message"]])
    assert request["messages"][1]["content"] == TOOL_MESSAGE["content"]


def test_an_empty_reply_has_empty_content():
    data = {**TEXT_MESSAGE, "content": [], "stop_reason": "max_tokens"}
    body, _, _ = from_anthropic(Message.model_validate(data).model_dump())
    assert body["choices"][0]["message"]["content"] == ""
    assert body["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(("native", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"), ("tool_use", "tool_calls"),
    ("refusal", "content_filter"), ("pause_turn", "stop"), ("model_context_window_exceeded", "length"),
    ("a_reason_from_the_future", "stop"),
])
def test_stop_reasons(native, finish):
    choice = from_anthropic({**TEXT_MESSAGE, "stop_reason": native})[0]["choices"][0]
    assert (choice["finish_reason"], choice["native_finish_reason"]) == (finish, native)


def test_server_tool_blocks_are_left_out():
    data = {**TEXT_MESSAGE, "content": [
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {"query": "x"}},
        {"type": "text", "text": "Found it."}]}
    Message.model_validate(data)
    assert from_anthropic(data)[0]["choices"][0]["message"]["content"] == "Found it."


@pytest.mark.parametrize("data", [
    None, [], {"type": "error", "error": {"type": "api_error", "message": "x"}},
    {**TEXT_MESSAGE, "content": "Hello"}, {**TEXT_MESSAGE, "id": None},
    {**TEXT_MESSAGE, "content": [{"type": "text"}]}, {**TEXT_MESSAGE, "content": ["Hello"]},
    {**TEXT_MESSAGE, "content": [{"type": "tool_use", "id": "t", "name": "f", "input": "{}"}]},
    {**TEXT_MESSAGE, "content": [{"text": "no type"}]},
])
def test_invalid_messages_raise_value_error(data):
    with pytest.raises(ValueError):
        from_anthropic(data)


def test_usage_parsing():
    assert usage_from_anthropic(None) is None
    assert usage_from_anthropic({"input_tokens": 5}) is None
    assert usage_from_anthropic({"input_tokens": -1, "output_tokens": 1}) is None
    assert usage_from_anthropic({"input_tokens": True, "output_tokens": 1}) is None
    u = usage_from_anthropic({"input_tokens": 5, "output_tokens": 9, "cache_read_input_tokens": None,
                              "cache_creation_input_tokens": 3, "output_tokens_details": {"thinking_tokens": 4}})
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.cache_write_tokens, u.reasoning_tokens) == (
        8, 9, 0, 3, 4)
    # A reported thinking count never exceeds the output it is part of.
    assert usage_from_anthropic({"input_tokens": 1, "output_tokens": 2,
                                 "output_tokens_details": {"thinking_tokens": 7}}).reasoning_tokens == 2


# -- stream ------------------------------------------------------------------------

START = {"type": "message_start", "message": {
    "id": "msg_stream", "type": "message", "role": "assistant", "model": "claude-test-1", "content": [],
    "stop_reason": None, "stop_sequence": None,
    "usage": {"input_tokens": 25, "output_tokens": 1, "cache_creation_input_tokens": 0,
              "cache_read_input_tokens": 10}}}
CITATION = {"type": "char_location", "cited_text": "Paris", "document_index": 0, "document_title": None,
            "start_char_index": 0, "end_char_index": 5}
STREAM = [
    START,
    {"type": "ping"},
    {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Weather, "}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "then time."}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "sig-1"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "content_block_start", "index": 1, "content_block": {"type": "redacted_thinking", "data": "opaque"}},
    {"type": "content_block_stop", "index": 1},
    {"type": "content_block_start", "index": 2, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "Let me "}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "citations_delta", "citation": CITATION}},
    {"type": "content_block_delta", "index": 2, "delta": {"type": "text_delta", "text": "check."}},
    {"type": "content_block_stop", "index": 2},
    {"type": "content_block_start", "index": 3,
     "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}},
    {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": ""}},
    {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": '{"city": '}},
    {"type": "content_block_delta", "index": 3, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}},
    {"type": "content_block_stop", "index": 3},
    {"type": "content_block_start", "index": 4,
     "content_block": {"type": "tool_use", "id": "toolu_2", "name": "clock", "input": {}}},
    {"type": "content_block_stop", "index": 4},
    {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
     "usage": {"output_tokens": 42}},
    {"type": "message_stop"},
]
REASONING = "anthropic-claude-v1"
# The deltas STREAM translates to, one chunk each, in order.
STREAM_DELTAS = [
    {"role": "assistant", "content": ""},
    {"reasoning": "Weather, ", "reasoning_details": [
        {"type": "reasoning.text", "text": "Weather, ", "format": REASONING, "index": 0}]},
    {"reasoning": "then time.", "reasoning_details": [
        {"type": "reasoning.text", "text": "then time.", "format": REASONING, "index": 0}]},
    {"reasoning_details": [{"type": "reasoning.text", "signature": "sig-1", "format": REASONING, "index": 0}]},
    {"reasoning_details": [{"type": "reasoning.encrypted", "data": "opaque", "format": REASONING, "index": 1}]},
    {"content": "Let me "},
    {"content": "check."},
    {"tool_calls": [{"index": 0, "id": "toolu_1", "type": "function",
                     "function": {"name": "weather", "arguments": ""}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
    {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
    {"tool_calls": [{"index": 1, "id": "toolu_2", "type": "function", "function": {"name": "clock", "arguments": ""}}]},
    # A tool called without arguments still gets valid JSON: Anthropic's input there is {}.
    {"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]},
    {},
]
OVERLOADED = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"},
              "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


def feed_all(events: list[dict[str, Any]]) -> tuple[StreamTranslator, list[dict[str, Any]]]:
    translator = StreamTranslator("Anthropic", created=1767225600)
    chunks = []
    for event in events:
        chunks.extend(translator.feed(event["type"], event))
    return translator, chunks


def test_stream_fixtures_are_valid_anthropic_events():
    adapter = pydantic.TypeAdapter(RawMessageStreamEvent)
    for event in STREAM:
        if event["type"] != "ping":
            adapter.validate_python(event)
    ErrorResponse.model_validate(OVERLOADED)


def test_every_stream_event_translates_as_it_arrives():
    translator, chunks = feed_all(STREAM)
    assert [c["choices"][0]["delta"] for c in chunks] == STREAM_DELTAS
    for chunk in chunks:
        assert {k: chunk[k] for k in ("id", "object", "created", "model")} == {
            "id": "msg_stream", "object": "chat.completion.chunk", "created": 1767225600, "model": "claude-test-1"}
        assert chunk["choices"][0]["index"] == 0
    finishing = [c["choices"][0] for c in chunks if c["choices"][0]["finish_reason"]]
    assert finishing == [{"index": 0, "delta": {}, "finish_reason": "tool_calls", "native_finish_reason": "tool_use"}]
    assert translator.done and translator.upstream_id == "msg_stream"
    u = translator.usage
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.cache_write_tokens) == (35, 42, 10, 0)


def test_each_text_delta_is_one_chunk_immediately():
    translator = StreamTranslator("Anthropic", created=0)
    translator.feed("message_start", START)
    assert translator.feed("content_block_start", STREAM[9]) == []
    assert translator.feed("content_block_delta", STREAM[10])[0]["choices"][0]["delta"] == {"content": "Let me "}


def test_usage_waits_for_message_delta_and_takes_newer_counts_there():
    translator = StreamTranslator("Anthropic", created=0)
    translator.feed("message_start", START)
    assert translator.usage is None  # message_start's output count is a placeholder
    translator.feed("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                      "usage": {"output_tokens": 7, "input_tokens": 30,
                                                "cache_read_input_tokens": None, "cache_creation_input_tokens": 5}})
    u = translator.usage
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.cache_write_tokens) == (45, 7, 10, 5)


def test_text_in_a_block_start_and_unknown_events_and_deltas():
    translator = StreamTranslator("Anthropic", created=0)
    translator.feed("message_start", START)
    started = translator.feed("content_block_start", {"type": "content_block_start", "index": 0,
                                                      "content_block": {"type": "text", "text": "Hi"}})
    assert [c["choices"][0]["delta"] for c in started] == [{"content": "Hi"}]
    assert translator.feed("a_new_event", {"type": "a_new_event"}) == []
    assert translator.feed("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "a_new_delta", "x": 1}}) == []
    assert translator.feed("content_block_start", {"type": "content_block_start", "index": 1, "content_block": {
        "type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []}}) == []


def test_a_message_stop_ends_the_stream():
    translator, _ = feed_all(STREAM)
    assert translator.feed("content_block_delta", STREAM[10]) == []


def test_an_error_event_raises_a_typed_provider_error():
    translator = StreamTranslator("Anthropic", created=0)
    translator.feed("message_start", START)
    with pytest.raises(ProviderError) as caught:
        translator.feed("error", OVERLOADED)
    error = caught.value
    assert (error.status, error.failover, error.error_type) == (503, True, "provider_overloaded")
    assert error.metadata["provider_code"] == "overloaded_error"
    assert error.metadata["raw"] == OVERLOADED


@pytest.mark.parametrize("events", [
    [{"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}],  # before start
    [START, {"type": "content_block_delta", "index": 5, "delta": {"type": "text_delta", "text": "x"}}],
    [START, {"type": "content_block_start", "content_block": {"type": "text", "text": ""}}],
    [START, {"type": "content_block_start", "index": 0}],
    [START, {"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "input": {}}}],
    [START, {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
     {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": "{"}}],
    [{"type": "message_start", "message": {"type": "message"}}],
])
def test_malformed_events_raise_value_error(events):
    with pytest.raises(ValueError):
        feed_all(events)


# -- errors ------------------------------------------------------------------------


def error_body(kind: str, message: str = "Something") -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"}


@pytest.mark.parametrize(("status", "raw", "error_type"), [
    (400, error_body("invalid_request_error", "max_tokens: Field required"), "invalid_request"),
    (400, error_body("invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum"),
     "context_length_exceeded"),
    (400, error_body("invalid_request_error", "input length and `max_tokens` exceed context limit: "
                                              "198000 + 8192 > 200000, decrease input length or `max_tokens`"),
     "context_length_exceeded"),
    (401, error_body("authentication_error"), "authentication"),
    (402, error_body("billing_error"), "payment_required"),
    (403, error_body("permission_error"), "permission_denied"),
    (404, error_body("not_found_error"), "not_found"),
    (413, error_body("request_too_large"), "payload_too_large"),
    (429, error_body("rate_limit_error"), "rate_limit_exceeded"),
    (500, error_body("api_error"), "provider_unavailable"),
    (529, error_body("overloaded_error"), "provider_overloaded"),
    (504, error_body("timeout_error"), "timeout"),
    (409, error_body("conflict_error"), "provider_unavailable"),
    (503, "<html>Service Unavailable</html>", "provider_overloaded"),
    (400, {"unexpected": True}, "invalid_request"),
])
def test_read_fault(status, raw, error_type):
    fault = read_fault(status, raw)
    assert fault.error_type == error_type
    if isinstance(raw, dict) and "error" in raw:
        assert (fault.code, fault.message) == (raw["error"]["type"], raw["error"]["message"])


def test_read_fault_keeps_a_text_body_as_the_message():
    assert read_fault(502, "Bad gateway").message == "Bad gateway"


# -- on the wire -------------------------------------------------------------------


def sse(events: list[dict[str, Any]]) -> bytes:
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)


# The stream on the wire also carries what SSE allows and Anthropic may send: a comment,
# an event without an `event:` line, data split over two lines, CRLF line ends.
WIRE_STREAM = (sse(STREAM[:2]) + b": keep-alive\n\n" + b"data: " + orjson.dumps(STREAM[2]) + b"\n\n"
               + b"event: content_block_delta\r\ndata: {\"type\": \"content_block_delta\", \"index\": 0,\r\n"
               + b"data: \"delta\": {\"type\": \"thinking_delta\", \"thinking\": \"Weather, \"}}\r\n\r\n"
               + sse(STREAM[4:]))
ERRORS = {
    529: error_body("overloaded_error", "Overloaded"),
    400: error_body("invalid_request_error", "prompt is too long: 208310 tokens > 200000 maximum"),
    401: error_body("authentication_error", "invalid x-api-key"),
    429: error_body("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit"),
    500: error_body("api_error", "Internal server error"),
}


async def _messages(request: web.Request) -> web.StreamResponse:
    scenario = request.match_info["scenario"]
    headers = {name.lower(): value for name, value in request.headers.items()}
    request.app[SEEN].append({"headers": headers, "body": await request.json()})
    if scenario.startswith("status-"):
        status = int(scenario.removeprefix("status-"))
        return web.json_response(ERRORS[status], status=status, headers={"retry-after": "7"})
    if scenario == "text":
        return web.json_response(TEXT_MESSAGE)
    if scenario == "tools":
        return web.json_response(TOOL_MESSAGE)
    if scenario == "not-a-message":
        return web.json_response({"hello": "world"})
    body = {"stream": WIRE_STREAM, "stream-error": sse([*STREAM[:3], OVERLOADED]), "stream-cut": sse(STREAM[:12]),
            "stream-garbage": sse(STREAM[:2]) + b"event: content_block_start\ndata: {not json\n\n",
            "stream-malformed": sse([STREAM[0], STREAM[10]])}[scenario]
    response = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await response.prepare(request)
    await response.write(body)
    await response.write_eof()
    return response


SEEN = web.AppKey("seen", list)


@asynccontextmanager
async def anthropic_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    app = web.Application()
    app[SEEN] = []
    app.router.add_post("/{scenario}/v1/messages", _messages)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", app[SEEN]
    finally:
        await runner.cleanup()


def endpoint(base_url: str, **options: Any) -> Endpoint:
    provider = Provider(slug="anthropic", name="Anthropic", dialect="anthropic", base_url=base_url, api_key="none",
                        trains_on_prompts=False, retains_prompts=True,
                        options={"anthropic_version": "2023-06-01", "anthropic_beta": [], **options})
    return Endpoint(model_id="anthropic/claude-test", provider=provider, upstream_model="claude-test-1",
                    context_length=200000, max_completion_tokens=8192, pricing=Pricing(prompt=3, completion=15),
                    quantization="unknown", supported_parameters=frozenset())


def call(base_url: str, credential: str = "sk-ant-test", **options: Any) -> Call:
    return Call(endpoint(base_url, **options), {"model": "anthropic/claude-test", "messages": [USER]}, credential,
                "user-hash")


async def _with_dialect(scenario: str, use, credential: str = "sk-ant-test", **options: Any):
    async with anthropic_server() as (base, seen):
        upstreams = Upstreams(connect_timeout_s=2, idle_timeout_s=5, total_timeout_s=10)
        try:
            return await use(AnthropicDialect(upstreams), call(f"{base}/{scenario}", credential, **options)), seen
        finally:
            await upstreams.close()


async def _complete(dialect: AnthropicDialect, c):
    return await dialect.complete(c)


async def _drain(dialect: AnthropicDialect, c):
    stream = await dialect.open_stream(c)
    chunks = []
    while (chunk := await stream.next()) is not None:
        chunks.append(chunk)
    assert await stream.next() is None
    return chunks, stream.usage, stream.upstream_id


def test_complete_sends_anthropic_headers_and_body_and_parses_the_reply():
    reply, seen = asyncio.run(_with_dialect("text", _complete, anthropic_beta=["a-2025", "b-2026"]))
    assert reply.upstream_id == TEXT_MESSAGE["id"]
    assert reply.body["choices"][0]["message"]["content"] == "Hello, world"
    assert reply.body["created"] > 0
    assert (reply.usage.prompt_tokens, reply.usage.cached_tokens) == (2112, 2000)
    headers, body = seen[0]["headers"], seen[0]["body"]
    assert headers["x-api-key"] == "sk-ant-test"
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["anthropic-beta"] == "a-2025,b-2026"
    assert headers["content-type"] == "application/json"
    assert body == {"model": "claude-test-1", "max_tokens": 8192, "metadata": {"user_id": "user-hash"},
                    "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}


def test_no_credential_no_api_key_header_and_no_beta_header_without_betas():
    reply, seen = asyncio.run(_with_dialect("tools", _complete, credential="", anthropic_version="2024-01-01"))
    assert reply.body["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "weather"
    headers = seen[0]["headers"]
    assert "x-api-key" not in headers and "anthropic-beta" not in headers
    assert headers["anthropic-version"] == "2024-01-01"


def test_a_reply_that_is_not_a_message_is_an_invalid_response():
    with pytest.raises(ProviderError, match="invalid response") as caught:
        asyncio.run(_with_dialect("not-a-message", _complete))
    assert caught.value.error_type == "provider_unavailable" and caught.value.failover


@pytest.mark.parametrize(("status", "ours", "failover", "error_type"), [
    (529, 503, True, "provider_overloaded"), (400, 400, False, "context_length_exceeded"),
    (401, 502, True, "authentication"), (429, 429, True, "rate_limit_exceeded"),
    (500, 502, True, "provider_unavailable"),
])
def test_error_statuses_are_typed(status, ours, failover, error_type):
    with pytest.raises(ProviderError) as caught:
        asyncio.run(_with_dialect(f"status-{status}", _complete))
    error = caught.value
    assert (error.status, error.failover, error.error_type) == (ours, failover, error_type)
    assert error.metadata["provider_code"] == ERRORS[status]["error"]["type"]
    assert error.headers == ({"Retry-After": "7"} if status == 429 else {})


def test_stream_over_the_wire():
    (chunks, usage, upstream_id), seen = asyncio.run(_with_dialect("stream", _drain))
    assert [c["choices"][0]["delta"] for c in chunks] == STREAM_DELTAS
    assert upstream_id == "msg_stream"
    assert (usage.prompt_tokens, usage.completion_tokens) == (35, 42)
    assert seen[0]["body"]["stream"] is True


def test_stream_error_event_mid_stream_is_a_provider_error():
    with pytest.raises(ProviderError) as caught:
        asyncio.run(_with_dialect("stream-error", _drain))
    assert (caught.value.error_type, caught.value.failover) == ("provider_overloaded", True)


@pytest.mark.parametrize(("scenario", "message"), [
    ("stream-cut", "closed the stream before it finished"), ("stream-garbage", "invalid response"),
    ("stream-malformed", "invalid response"),
])
def test_broken_streams_are_provider_errors(scenario, message):
    with pytest.raises(ProviderError, match=message):
        asyncio.run(_with_dialect(scenario, _drain))


def test_close_drops_the_connection():
    async def first_then_close(dialect: AnthropicDialect, c):
        stream = await dialect.open_stream(c)
        first = await stream.next()
        stream.close()
        return first, stream.response.closed

    (first, closed), _ = asyncio.run(_with_dialect("stream", first_then_close))
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert closed
