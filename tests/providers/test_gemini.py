"""The Gemini dialect: pure translation both ways, error reading, and the real wire against
a small Gemini-shaped server. Every fixture and every request we build is checked against
the official google-genai types, so the shapes are Gemini's, not our guess of them."""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from google.genai import types

from farebox.catalog.model import Endpoint, Pricing, Provider
from farebox.clock import FakeClock
from farebox.errors import BadRequest, ProviderError
from farebox.providers.base import Call
from farebox.providers.gemini import (
    GeminiDialect,
    StreamTranslator,
    from_gemini,
    read_fault,
    usage_from_gemini,
)
from farebox.providers.gemini_request import SIGNATURE_FORMAT, to_gemini
from farebox.providers.http import Upstreams

SIG_A = "c2lnbmF0dXJlLWE="  # signatures are base64 bytes on Gemini's wire
SIG_B = "c2lnbmF0dXJlLWI="
PNG = "iVBORw0KGgo="


# -- helpers -----------------------------------------------------------------------------
def gemini_request(request: dict[str, Any]) -> dict[str, Any]:
    """Assert a generateContent body is one Gemini accepts, piece by piece (the SDK has
    no type for the REST envelope itself)."""
    assert set(request) <= {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig"}
    for content in request["contents"]:
        types.Content.model_validate_json(orjson.dumps(content))
    if "systemInstruction" in request:
        types.Content.model_validate_json(orjson.dumps(request["systemInstruction"]))
    for tool in request.get("tools", ()):
        types.Tool.model_validate_json(orjson.dumps(tool))
    if "toolConfig" in request:
        types.ToolConfig.model_validate_json(orjson.dumps(request["toolConfig"]))
    if "generationConfig" in request:
        types.GenerationConfig.model_validate_json(orjson.dumps(request["generationConfig"]))
    return request


def gemini_response(data: dict[str, Any]) -> dict[str, Any]:
    types.GenerateContentResponse.model_validate_json(orjson.dumps(data))
    return data


def build(*messages: dict[str, Any], **body: Any) -> dict[str, Any]:
    return gemini_request(to_gemini({"model": "google/gemini", "messages": list(messages), **body}, None))


def user(content: Any) -> dict[str, Any]:
    return {"role": "user", "content": content}


def response(parts: list[dict[str, Any]], finish: str | None = "STOP", **extra: Any) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    return gemini_response({"candidates": [candidate], "modelVersion": "gemini-3-pro-preview",
                            "responseId": "resp-1", **extra})


USAGE = {"promptTokenCount": 120, "cachedContentTokenCount": 100, "toolUsePromptTokenCount": 7,
         "candidatesTokenCount": 30, "thoughtsTokenCount": 12, "totalTokenCount": 169,
         "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 120}]}


# -- request: messages -------------------------------------------------------------------
def test_system_messages_become_the_system_instruction_in_order_and_roles_alternate():
    out = build({"role": "system", "content": "Be terse."}, user("hi"),
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                user("again"), {"role": "assistant", "content": "Salut"}, {"role": "assistant", "content": "!"},
                user("bye"))
    assert out["systemInstruction"] == {"parts": [{"text": "Be terse."}, {"text": "Use French."}]}
    assert out["contents"] == [
        {"role": "user", "parts": [{"text": "hi"}, {"text": "again"}]},
        {"role": "model", "parts": [{"text": "Salut"}, {"text": "!"}]},
        {"role": "user", "parts": [{"text": "bye"}]},
    ]
    assert set(out) == {"contents", "systemInstruction"}  # nothing invented


def test_empty_turns_are_dropped_because_gemini_rejects_turns_without_parts():
    out = build(user("hi"), {"role": "assistant", "content": ""}, user([{"type": "text", "text": ""}]), user("x"))
    assert out["contents"] == [{"role": "user", "parts": [{"text": "hi"}, {"text": "x"}]}]


def test_media_parts_travel_inline_or_by_uri():
    out = build(user([
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.webp?size=2"}},
        {"type": "image_url", "image_url": "https://example.com/render"},
        {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBERi0="}},
        {"type": "file", "file": {"filename": "notes.PDF", "file_data": "https://example.com/notes"}},
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "video_url", "video_url": {"url": "https://example.com/clip.mp4"}},
    ]))
    assert out["contents"][0]["parts"] == [
        {"text": "look"},
        {"inlineData": {"mimeType": "image/png", "data": PNG}},
        {"fileData": {"mimeType": "image/webp", "fileUri": "https://example.com/cat.webp?size=2"}},
        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/render"}},
        {"inlineData": {"mimeType": "application/pdf", "data": "JVBERi0="}},
        {"fileData": {"mimeType": "application/pdf", "fileUri": "https://example.com/notes"}},
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"fileData": {"mimeType": "video/mp4", "fileUri": "https://example.com/clip.mp4"}},
    ]


@pytest.mark.parametrize(("part", "field"), [
    ({"type": "refusal", "refusal": "no"}, "messages[0].content[1].type"),
    ({"type": "image_url", "image_url": {"url": "data:image/png,rawbytes"}}, "messages[0].content[1].image_url.url"),
    ({"type": "image_url", "image_url": {"url": "ftp://example.com/a.png"}}, "messages[0].content[1].image_url.url"),
    ({"type": "file", "file": {"file_id": "file-123"}}, "messages[0].content[1].file.file_data"),
    ({"type": "input_audio", "input_audio": {"data": "UklGRg=="}}, "messages[0].content[1].input_audio"),
])
def test_parts_gemini_cannot_take_are_bad_requests_naming_the_part(part, field):
    with pytest.raises(BadRequest) as caught:
        to_gemini({"messages": [user([{"type": "text", "text": "hi"}, part])]}, None)
    assert caught.value.metadata["field"] == field


def test_system_content_may_only_be_text():
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    with pytest.raises(BadRequest, match=r"messages\[0\]\.content\[0\]"):
        to_gemini({"messages": [{"role": "system", "content": [image]}, user("hi")]}, None)


# -- request: tool turns -----------------------------------------------------------------
ASSISTANT_CALLS = {
    "role": "assistant", "content": "Checking.",
    "tool_calls": [
        {"id": "call_a", "type": "function", "function": {"name": "weather", "arguments": "{\"city\": \"Paris\"}"}},
        {"id": "call_b", "type": "function", "function": {"name": "time", "arguments": ""}},
    ],
    "reasoning_details": [
        {"type": "reasoning.encrypted", "data": SIG_A, "id": "call_a", "format": SIGNATURE_FORMAT, "index": 0},
        # Another provider's encrypted reasoning means nothing to Gemini.
        {"type": "reasoning.encrypted", "data": SIG_B, "id": "call_b", "format": "anthropic-claude-v1"},
    ],
}


def test_tool_calls_become_function_calls_with_their_ids_and_thought_signatures():
    out = build(user("weather?"), ASSISTANT_CALLS,
                {"role": "tool", "tool_call_id": "call_a", "content": "{\"temp\": 21}"},
                {"role": "tool", "tool_call_id": "call_b", "content": "noon"},
                {"role": "tool", "tool_call_id": "call_a", "content": "[1, 2]"})
    assert out["contents"][1] == {"role": "model", "parts": [
        {"text": "Checking."},
        {"functionCall": {"name": "weather", "args": {"city": "Paris"}, "id": "call_a"}, "thoughtSignature": SIG_A},
        {"functionCall": {"name": "time", "args": {}, "id": "call_b"}},
    ]}
    # Parallel results are one user turn; a JSON object is the response itself, anything
    # else is wrapped as its result.
    assert out["contents"][2] == {"role": "user", "parts": [
        {"functionResponse": {"id": "call_a", "name": "weather", "response": {"temp": 21}}},
        {"functionResponse": {"id": "call_b", "name": "time", "response": {"result": "noon"}}},
        {"functionResponse": {"id": "call_a", "name": "weather", "response": {"result": [1, 2]}}},
    ]}


@pytest.mark.parametrize(("messages", "field"), [
    ([user("hi"), {"role": "tool", "tool_call_id": "call_zz", "content": "x"}], "messages[1].tool_call_id"),
    ([user("hi"), {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}],
     "messages[1].tool_calls[0].function.arguments"),
    ([user("hi"), {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}],
     "messages[1].tool_calls[0].function.arguments"),
])
def test_tool_turns_gemini_cannot_express_are_bad_requests(messages, field):
    with pytest.raises(BadRequest) as caught:
        to_gemini({"messages": messages}, None)
    assert caught.value.metadata["field"] == field


def test_tools_are_function_declarations_with_the_json_schema_unchanged():
    schema = {"type": "object", "properties": {"city": {"type": ["string", "null"]}}, "required": ["city"],
              "additionalProperties": False}
    tools = [{"type": "function", "function": {"name": "weather", "description": "Forecast", "parameters": schema,
                                               "strict": True}},
             {"type": "function", "function": {"name": "ping"}}]
    out = build(user("hi"), tools=tools)
    assert out["tools"] == [{"functionDeclarations": [
        {"name": "weather", "description": "Forecast", "parametersJsonSchema": schema}, {"name": "ping"}]}]
    assert "toolConfig" not in out


@pytest.mark.parametrize(("choice", "config"), [
    ("auto", {"mode": "AUTO"}), ("required", {"mode": "ANY"}), ("none", {"mode": "NONE"}),
    ({"type": "function", "function": {"name": "ping"}}, {"mode": "ANY", "allowedFunctionNames": ["ping"]}),
])
def test_tool_choice_is_the_function_calling_mode(choice, config):
    out = build(user("hi"), tools=[{"type": "function", "function": {"name": "ping"}}], tool_choice=choice)
    assert out["toolConfig"] == {"functionCallingConfig": config}


def test_non_function_tools_and_unknown_tool_choices_are_bad_requests():
    with pytest.raises(BadRequest) as caught:
        to_gemini({"messages": [user("hi")], "tools": [{"type": "web_search"}]}, None)
    assert caught.value.metadata["field"] == "tools[0].type"
    with pytest.raises(BadRequest) as caught:
        to_gemini({"messages": [user("hi")], "tools": [{"type": "function", "function": {"name": "f"}}],
                   "tool_choice": {"type": "function"}}, None)
    assert caught.value.metadata["field"] == "tool_choice"


# -- request: generation config ----------------------------------------------------------
def test_sampling_fields_map_to_generation_config_and_nothing_else_passes_through():
    out = build(user("hi"), max_tokens=50, temperature=0.3, top_p=0.9, top_k=40, seed=7, stop="END",
                presence_penalty=0.5, frequency_penalty=-0.5, n=2, logprobs=True, user="alice", stream=True,
                logit_bias={"1": 2}, models=["a/b"], provider={"order": ["google"]}, custom_field=1)
    assert set(out) == {"contents", "generationConfig"}
    assert out["generationConfig"] == {"maxOutputTokens": 50, "temperature": 0.3, "topP": 0.9, "topK": 40,
                                       "seed": 7, "presencePenalty": 0.5, "frequencyPenalty": -0.5,
                                       "stopSequences": ["END"]}


def test_max_completion_tokens_wins_and_stop_lists_stay_lists():
    out = build(user("hi"), max_tokens=50, max_completion_tokens=20, stop=["a", "b"])
    assert out["generationConfig"] == {"maxOutputTokens": 20, "stopSequences": ["a", "b"]}


def test_response_formats():
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "additionalProperties": False}
    assert build(user("hi"), response_format={"type": "json_object"})["generationConfig"] == {
        "responseMimeType": "application/json"}
    assert build(user("hi"), response_format={"type": "json_schema", "json_schema": {
        "name": "n", "strict": True, "schema": schema}})["generationConfig"] == {
        "responseMimeType": "application/json", "responseJsonSchema": schema}
    assert "generationConfig" not in build(user("hi"), response_format={"type": "text"})
    with pytest.raises(BadRequest):
        to_gemini({"messages": [user("hi")], "response_format": {"type": "grammar", "grammar": "x"}}, None)


@pytest.mark.parametrize(("body", "thinking"), [
    ({"reasoning": {"max_tokens": 2048}}, {"includeThoughts": True, "thinkingBudget": 2048}),
    ({"reasoning": {"max_tokens": 2048, "exclude": True}}, {"includeThoughts": False, "thinkingBudget": 2048}),
    ({"reasoning": {"effort": "low"}}, {"includeThoughts": True, "thinkingLevel": "low"}),
    ({"reasoning": {"effort": "minimal"}}, {"includeThoughts": True, "thinkingLevel": "low"}),
    ({"reasoning": {"effort": "medium"}}, {"includeThoughts": True, "thinkingLevel": "high"}),
    ({"reasoning": {"effort": "high", "exclude": True}}, {"includeThoughts": False, "thinkingLevel": "high"}),
    # Gemini refuses a level and a budget together: the explicit budget wins.
    ({"reasoning": {"effort": "low", "max_tokens": 512}}, {"includeThoughts": True, "thinkingBudget": 512}),
    ({"reasoning": {"enabled": True}}, {"includeThoughts": True}),
    ({"reasoning": {"exclude": True}}, {"includeThoughts": False}),
    ({"reasoning": {"effort": "none"}}, {"thinkingBudget": 0}),
    ({"reasoning": {"enabled": False}}, {"thinkingBudget": 0}),
    ({"reasoning_effort": "high"}, {"includeThoughts": True, "thinkingLevel": "high"}),
])
def test_reasoning_becomes_the_thinking_config(body, thinking):
    assert build(user("hi"), **body)["generationConfig"] == {"thinkingConfig": thinking}


def test_no_reasoning_no_thinking_config_and_unknown_efforts_are_bad_requests():
    assert "generationConfig" not in build(user("hi"))
    with pytest.raises(BadRequest) as caught:
        to_gemini({"messages": [user("hi")], "reasoning": {"effort": "extreme"}}, None)
    assert caught.value.metadata["field"] == "reasoning.effort"


# -- reply -------------------------------------------------------------------------------
def test_reply_text_thoughts_and_usage():
    data = response([{"text": "Let me think.", "thought": True}, {"text": "Hello"}, {"text": " world"}],
                    usageMetadata=USAGE)
    body, usage, upstream_id = from_gemini(data, "gemini-3-pro-preview")
    assert upstream_id == "resp-1" and body["id"] == "resp-1"
    assert body["object"] == "chat.completion" and body["model"] == "gemini-3-pro-preview"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello world",
                                                        "reasoning": "Let me think."},
                                "finish_reason": "stop", "native_finish_reason": "STOP", "logprobs": None}]
    # prompt includes the cached tokens already; tool-use prompt tokens are input too;
    # thoughts are output that candidatesTokenCount leaves out.
    assert (usage.prompt_tokens, usage.cached_tokens, usage.completion_tokens, usage.reasoning_tokens) == (
        127, 100, 42, 12)


def test_reply_function_calls_carry_their_signatures_in_reasoning_details():
    data = response([
        {"functionCall": {"id": "fc-theirs", "name": "weather", "args": {"city": "Paris"}},
         "thoughtSignature": SIG_A},
        {"functionCall": {"name": "time"}},
    ], usageMetadata=USAGE)
    body, _, _ = from_gemini(data, "m")
    choice = body["choices"][0]
    message = choice["message"]
    assert (choice["finish_reason"], choice["native_finish_reason"]) == ("tool_calls", "STOP")
    assert message["content"] is None
    first, second = message["tool_calls"]
    assert first == {"id": "fc-theirs", "type": "function",
                     "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}}
    assert re.fullmatch(r"call_1_[0-9a-f]{12}", second["id"])
    assert second["function"] == {"name": "time", "arguments": "{}"}
    assert message["reasoning_details"] == [{"type": "reasoning.encrypted", "data": SIG_A, "id": "fc-theirs",
                                             "format": SIGNATURE_FORMAT, "index": 0}]


def test_a_replied_assistant_message_sent_back_returns_its_signatures_to_gemini():
    data = response([{"functionCall": {"name": "weather", "args": {"city": "Oslo"}}, "thoughtSignature": SIG_B}])
    message = from_gemini(data, "m")[0]["choices"][0]["message"]
    call_id = message["tool_calls"][0]["id"]
    out = build(user("weather?"), message, {"role": "tool", "tool_call_id": call_id, "content": "cold"})
    assert out["contents"][1]["parts"] == [
        {"functionCall": {"name": "weather", "args": {"city": "Oslo"}, "id": call_id}, "thoughtSignature": SIG_B}]
    assert out["contents"][2]["parts"][0]["functionResponse"]["name"] == "weather"


@pytest.mark.parametrize(("native", "finish"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"), ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("IMAGE_SAFETY", "content_filter"), ("LANGUAGE", "content_filter"), ("MALFORMED_FUNCTION_CALL", "error"),
    ("UNEXPECTED_TOOL_CALL", "error"), ("TOO_MANY_TOOL_CALLS", "error"), ("OTHER", "stop"),
    ("FINISH_REASON_UNSPECIFIED", "stop"),
])
def test_finish_reasons_are_normalized_and_the_native_one_kept(native, finish):
    choice = from_gemini(response([{"text": "x"}], finish=native), "m")[0]["choices"][0]
    assert (choice["finish_reason"], choice["native_finish_reason"]) == (finish, native)


def test_an_unknown_finish_reason_is_a_stop():
    data = {"candidates": [{"content": {"role": "model", "parts": [{"text": "x"}]}, "finishReason": "NEW_THING"}]}
    choice = from_gemini(data, "m")[0]["choices"][0]
    assert (choice["finish_reason"], choice["native_finish_reason"]) == ("stop", "NEW_THING")


def test_a_candidate_without_parts_is_empty_content():
    data = gemini_response({"candidates": [{"content": {"role": "model"}, "finishReason": "MAX_TOKENS"}],
                            "usageMetadata": {"promptTokenCount": 5, "thoughtsTokenCount": 64,
                                              "totalTokenCount": 69}})
    body, usage, _ = from_gemini(data, "m")
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "", "reasoning": None}
    assert body["choices"][0]["finish_reason"] == "length"
    assert (usage.completion_tokens, usage.reasoning_tokens) == (64, 64)


def test_a_blocked_prompt_is_a_content_filter_finish():
    data = gemini_response({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                            "usageMetadata": {"promptTokenCount": 9, "totalTokenCount": 9}, "responseId": "r"})
    body, usage, _ = from_gemini(data, "m")
    choice = body["choices"][0]
    assert choice["message"]["content"] == ""
    assert (choice["finish_reason"], choice["native_finish_reason"]) == ("content_filter", "PROHIBITED_CONTENT")
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 0)


@pytest.mark.parametrize("data", [
    [], "text", {}, {"candidates": []}, {"candidates": "x"}, {"candidates": [1]},
    {"candidates": [{"content": {"parts": "x"}}]}, {"candidates": [{"content": {"parts": [{"functionCall": {}}]}}]},
    {"candidates": [{"content": {"parts": [{"text": "x"}]}, "finishReason": 3}]},
])
def test_invalid_responses_are_value_errors(data):
    with pytest.raises(ValueError):
        from_gemini(data, "m")


def test_usage_parsing():
    assert usage_from_gemini(None) is None
    assert usage_from_gemini({"candidatesTokenCount": 3}) is None
    assert usage_from_gemini({"promptTokenCount": -1}) is None
    assert usage_from_gemini({"promptTokenCount": True}) is None
    u = usage_from_gemini({"promptTokenCount": 4, "candidatesTokenCount": "x"})
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.reasoning_tokens) == (4, 0, 0, 0)


# -- stream translation ------------------------------------------------------------------
def stream_fixture() -> list[dict[str, Any]]:
    """A Gemini 3 tool-call turn as streamGenerateContent sends it: thoughts, text, the
    call with its signature and the finish, then a usage-only tail."""
    def usage(candidates: int, thoughts: int) -> dict[str, Any]:
        return {"promptTokenCount": 50, "candidatesTokenCount": candidates, "thoughtsTokenCount": thoughts,
                "totalTokenCount": 50 + candidates + thoughts}
    return [gemini_response(chunk) for chunk in (
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Weather needs a lookup.", "thought": True}]},
                         "index": 0}], "usageMetadata": usage(0, 20), "responseId": "sse-1", "modelVersion": "g"},
        {"candidates": [{"content": {"role": "model", "parts": [{"text": "Let me check."}]}, "index": 0}],
         "usageMetadata": usage(4, 20), "responseId": "sse-1", "modelVersion": "g"},
        {"candidates": [{"content": {"role": "model", "parts": [
            {"functionCall": {"name": "weather", "args": {"city": "Paris"}}, "thoughtSignature": SIG_A},
            {"functionCall": {"name": "weather", "args": {"city": "Rome"}}}]},
            "finishReason": "STOP", "index": 0}], "usageMetadata": usage(16, 20), "responseId": "sse-1",
         "modelVersion": "g"},
        {"candidates": [{"content": {"role": "model", "parts": [{"text": ""}]}, "index": 0}],
         "usageMetadata": usage(18, 20), "responseId": "sse-1", "modelVersion": "g"},
    )]


def test_stream_translation_of_thoughts_text_calls_and_a_usage_tail():
    translator = StreamTranslator("gemini-3", 1_767_225_600)
    fed = [translator.feed(data) for data in stream_fixture()]
    assert [len(chunks) for chunks in fed] == [1, 1, 1, 0]
    thought, text, calls = (chunks[0] for chunks in fed[:3])
    assert thought == {"id": "sse-1", "object": "chat.completion.chunk", "created": 1_767_225_600, "model": "gemini-3",
                       "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning": "Weather needs a lookup."},
                                    "finish_reason": None, "native_finish_reason": None, "logprobs": None}]}
    assert text["choices"][0]["delta"] == {"content": "Let me check."}
    choice = calls["choices"][0]
    assert (choice["finish_reason"], choice["native_finish_reason"]) == ("tool_calls", "STOP")
    paris, rome = choice["delta"]["tool_calls"]
    assert (paris["index"], rome["index"]) == (0, 1)
    assert paris["function"] == {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}
    assert re.fullmatch(r"call_1_[0-9a-f]{12}", rome["id"]) and paris["id"] != rome["id"]
    assert choice["delta"]["reasoning_details"] == [
        {"type": "reasoning.encrypted", "data": SIG_A, "id": paris["id"], "format": SIGNATURE_FORMAT, "index": 0}]
    # Usage is cumulative: the tail's, the latest, is the one kept.
    assert translator.done and translator.upstream_id == "sse-1"
    assert (translator.usage.prompt_tokens, translator.usage.completion_tokens,
            translator.usage.reasoning_tokens) == (50, 38, 20)


def test_stream_tool_call_indexes_continue_across_chunks_and_text_stops_are_stops():
    translator = StreamTranslator("m", 0)
    first = translator.feed({"candidates": [{"content": {"parts": [{"functionCall": {"name": "a"}}]}}]})
    second = translator.feed({"candidates": [{"content": {"parts": [{"functionCall": {"name": "b"}}]},
                                              "finishReason": "STOP"}]})
    assert first[0]["choices"][0]["delta"]["tool_calls"][0]["index"] == 0
    assert second[0]["choices"][0]["delta"]["tool_calls"][0]["index"] == 1
    assert second[0]["choices"][0]["finish_reason"] == "tool_calls"
    plain = StreamTranslator("m", 0)
    plain.feed({"candidates": [{"content": {"parts": [{"text": "hi"}]}}]})
    (end,) = plain.feed({"candidates": [{"content": {"parts": []}, "finishReason": "MAX_TOKENS"}]})
    assert end["choices"][0]["delta"] == {} and end["choices"][0]["finish_reason"] == "length"


def test_after_the_finish_chunks_bring_usage_and_nothing_else():
    translator = StreamTranslator("m", 0)
    translator.feed({"candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}]})
    late = gemini_response({"candidates": [{"content": {"role": "model", "parts": [{"text": "!"}]},
                                            "finishReason": "STOP"}], "usageMetadata": {"promptTokenCount": 2,
                                                                                         "candidatesTokenCount": 1}})
    assert translator.feed(late) == []
    assert translator.usage.completion_tokens == 1


def test_stream_with_a_blocked_prompt_ends_with_content_filter():
    translator = StreamTranslator("m", 0)
    (chunk,) = translator.feed(gemini_response({"promptFeedback": {"blockReason": "SAFETY"},
                                                "usageMetadata": {"promptTokenCount": 3}}))
    assert chunk["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert (chunk["choices"][0]["finish_reason"], chunk["choices"][0]["native_finish_reason"]) == (
        "content_filter", "SAFETY")
    assert translator.done and translator.usage.prompt_tokens == 3


def test_stream_chunks_that_are_not_responses_are_value_errors():
    with pytest.raises(ValueError):
        StreamTranslator("m", 0).feed([1])
    with pytest.raises(ValueError):
        StreamTranslator("m", 0).feed({"candidates": [{"content": {"parts": [3]}}]})


# -- errors ------------------------------------------------------------------------------
def error_body(code: int, status: str, message: str, details: list | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status, **({"details": details} if details else {})}}


@pytest.mark.parametrize(("status", "raw", "error_type", "code"), [
    (400, error_body(400, "INVALID_ARGUMENT", "Invalid value at 'contents'"), "invalid_request", "INVALID_ARGUMENT"),
    (400, error_body(400, "INVALID_ARGUMENT", "The input token count (1200293) exceeds the maximum number of "
                                              "tokens allowed (1048576)."),
     "context_length_exceeded", "INVALID_ARGUMENT"),
    (400, error_body(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
         "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}]),
     "authentication", "INVALID_ARGUMENT"),
    (400, error_body(400, "INVALID_ARGUMENT", "API key not valid."), "authentication", "INVALID_ARGUMENT"),
    (400, error_body(400, "FAILED_PRECONDITION", "User location is not supported for the API use."),
     "invalid_request", "FAILED_PRECONDITION"),
    (401, error_body(401, "UNAUTHENTICATED", "Request had invalid authentication credentials."),
     "authentication", "UNAUTHENTICATED"),
    (403, error_body(403, "PERMISSION_DENIED", "denied"), "permission_denied", "PERMISSION_DENIED"),
    (404, error_body(404, "NOT_FOUND", "models/gemini-9 is not found"), "not_found", "NOT_FOUND"),
    (429, error_body(429, "RESOURCE_EXHAUSTED", "Quota exceeded"), "rate_limit_exceeded", "RESOURCE_EXHAUSTED"),
    (500, error_body(500, "INTERNAL", "An internal error has occurred."), "provider_unavailable", "INTERNAL"),
    (503, error_body(503, "UNAVAILABLE", "The model is overloaded."), "provider_overloaded", "UNAVAILABLE"),
    (504, error_body(504, "DEADLINE_EXCEEDED", "Deadline expired"), "timeout", "DEADLINE_EXCEEDED"),
    (409, error_body(409, "ABORTED", "aborted"), "provider_unavailable", "ABORTED"),
    (413, "<html>Request Entity Too Large</html>", "payload_too_large", None),
    (400, [error_body(400, "INVALID_ARGUMENT", "The input token count (5) exceeds the maximum number of tokens "
                                               "allowed (4).")], "context_length_exceeded", "INVALID_ARGUMENT"),
])
def test_read_fault(status, raw, error_type, code):
    fault = read_fault(status, raw)
    assert (fault.error_type, fault.code) == (error_type, code)
    assert fault.message  # the provider's words, or the raw text


# -- the wire ----------------------------------------------------------------------------
COMPLETE = response([{"text": "Bonjour", "thoughtSignature": SIG_B}], usageMetadata=USAGE)
ERRORS = {
    "busy": (429, error_body(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted")),
    "long": (400, [error_body(400, "INVALID_ARGUMENT", "The input token count (9) exceeds the maximum number of "
                                                       "tokens allowed (8).")]),
}
STREAM_ERROR = error_body(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")


def sse(*events: Any) -> bytes:
    return b"".join(b"data: " + (e if isinstance(e, bytes) else orjson.dumps(e)) + b"\r\n\r\n" for e in events)


class FakeGemini:
    """A Gemini-shaped upstream: the model named in the path picks the behaviour."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].partition(":")
        self.seen.append({"path": request.path, "method": method, "query": dict(request.query),
                          "headers": dict(request.headers), "body": await request.json()})
        if model in ERRORS:
            status, body = ERRORS[model]
            return web.json_response(body, status=status, headers={"Retry-After": "7"})
        if method == "generateContent":
            if model == "garbage":
                return web.Response(body=b"<html>oops</html>", content_type="text/html")
            return web.json_response(COMPLETE)
        assert method == "streamGenerateContent" and request.query.get("alt") == "sse"
        events: list[Any] = {
            "ok": stream_fixture(),
            "error": [stream_fixture()[0], STREAM_ERROR],
            "cut": stream_fixture()[:2],
            "garbage": [stream_fixture()[0], b"{not json"],
        }[model]
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await stream.prepare(request)
        await stream.write(sse(*events))
        await stream.write_eof()
        return stream


@pytest.fixture(scope="module")
def upstream() -> Iterator[tuple[str, FakeGemini]]:
    """The fake on a free port, served from its own thread's loop (each test drives the
    dialect from its own `asyncio.run`)."""
    fake = FakeGemini()
    app = web.Application()
    app.router.add_post("/v1beta/models/{target}", fake.handle)
    runner = web.AppRunner(app)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    port: list[int] = []

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port.append(runner.addresses[0][1])
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(10), "the fake Gemini did not start"
    try:
        yield f"http://127.0.0.1:{port[0]}", fake
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def gemini_call(base_url: str, model: str, credential: str = "g-key", **body: Any) -> Call:
    provider = Provider(slug="google-ai-studio", name="Google AI Studio", dialect="gemini",
                        base_url=f"{base_url}/v1beta", api_key="env:GEMINI_API_KEY", trains_on_prompts=False,
                        retains_prompts=False)
    endpoint = Endpoint(model_id="google/gemini-test", provider=provider, upstream_model=model,
                        context_length=1_048_576, max_completion_tokens=65_536, pricing=Pricing(prompt=1, completion=1),
                        quantization="unknown", supported_parameters=frozenset())
    return Call(endpoint, {"model": "google/gemini-test", "messages": [user("Salut")], **body}, credential, "tag")


async def drive(call: Call, stream: bool, read: int | None = None) -> Any:
    upstreams = Upstreams(connect_timeout_s=2, idle_timeout_s=5, total_timeout_s=10)
    dialect = GeminiDialect(upstreams, FakeClock())
    try:
        if not stream:
            return await dialect.complete(call)
        opened = await dialect.open_stream(call)
        chunks = []
        while (read is None or len(chunks) < read) and (chunk := await opened.next()) is not None:
            chunks.append(chunk)
        if read is not None:
            opened.close()
            assert await opened.next() is None  # a closed stream has nothing more
        return chunks, opened
    finally:
        await upstreams.close()


def test_complete_over_the_wire(upstream):
    url, fake = upstream
    reply = asyncio.run(drive(gemini_call(url, "ok", temperature=0.2), stream=False))
    seen = fake.seen[-1]
    assert (seen["path"], seen["method"], seen["query"]) == ("/v1beta/models/ok:generateContent",
                                                             "generateContent", {})
    assert seen["headers"]["x-goog-api-key"] == "g-key" and seen["headers"]["Content-Type"] == "application/json"
    assert gemini_request(seen["body"]) == {"contents": [{"role": "user", "parts": [{"text": "Salut"}]}],
                                            "generationConfig": {"temperature": 0.2}}
    assert reply.upstream_id == "resp-1"
    assert reply.body["created"] == 1_767_225_600  # the dialect's clock: Gemini sends no time
    assert reply.body["choices"][0]["message"]["content"] == "Bonjour"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (127, 42)


def test_no_credential_no_key_header(upstream):
    url, fake = upstream
    asyncio.run(drive(gemini_call(url, "ok", credential=""), stream=False))
    assert "x-goog-api-key" not in fake.seen[-1]["headers"]


def test_stream_over_the_wire_reads_to_the_end_for_the_usage_tail(upstream):
    url, fake = upstream
    chunks, opened = asyncio.run(drive(gemini_call(url, "ok"), stream=True))
    seen = fake.seen[-1]
    assert (seen["path"], seen["query"]) == ("/v1beta/models/ok:streamGenerateContent", {"alt": "sse"})
    assert [list(c["choices"][0]["delta"]) for c in chunks] == [
        ["role", "reasoning"], ["content"], ["tool_calls", "reasoning_details"]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert {c["created"] for c in chunks} == {1_767_225_600}
    assert opened.upstream_id == "sse-1"
    assert (opened.usage.completion_tokens, opened.usage.reasoning_tokens) == (38, 20)  # from the tail


@pytest.mark.parametrize(("model", "stream", "status", "failover", "error_type"), [
    ("busy", False, 429, True, "rate_limit_exceeded"),
    ("busy", True, 429, True, "rate_limit_exceeded"),
    ("long", False, 400, False, "context_length_exceeded"),
    ("garbage", False, 502, True, "provider_unavailable"),
    ("error", True, 503, True, "provider_overloaded"),
    ("cut", True, 502, True, "provider_unavailable"),
    ("garbage", True, 502, True, "provider_unavailable"),
])
def test_upstream_failures_are_typed_provider_errors(upstream, model, stream, status, failover, error_type):
    url, _ = upstream
    with pytest.raises(ProviderError) as caught:
        asyncio.run(drive(gemini_call(url, model), stream=stream))
    error = caught.value
    assert (error.status, error.failover, error.error_type) == (status, failover, error_type)
    assert error.metadata["provider_name"] == "Google AI Studio"
    if model == "busy":
        assert error.headers == {"Retry-After": "7"} and error.metadata["provider_code"] == "RESOURCE_EXHAUSTED"
    if model == "error":
        assert error.metadata["raw"] == STREAM_ERROR["error"]
    if model == "cut":
        assert "closed the stream before it finished" in error.message


def test_a_stream_closed_by_the_client_ends(upstream):
    url, _ = upstream
    chunks, _ = asyncio.run(drive(gemini_call(url, "ok"), stream=True, read=1))
    assert len(chunks) == 1


def test_bad_requests_fail_before_anything_is_sent(upstream):
    url, fake = upstream
    before = len(fake.seen)
    with pytest.raises(BadRequest):
        asyncio.run(drive(gemini_call(url, "ok", tools=[{"type": "web_search"}]), stream=False))
    assert len(fake.seen) == before
