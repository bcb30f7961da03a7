"""The simulator speaks the Gemini API: every body and stream chunk is parsed with the
official `google-genai` SDK's own types, and every behaviour control works in this dialect."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Iterator
from http.client import IncompleteRead

import aiohttp
import pytest
from google import genai
from google.genai import errors, types

from tests.sim.contract import post, sse, stats, strict, wait_stats
from tests.simthread import running_sim

HI = [{"role": "user", "parts": [{"text": "hello"}]}]
GENERATE = "/v1beta/models/sim-gem:generateContent"
STREAM = "/v1beta/models/sim-gem:streamGenerateContent?alt=sse"
WEATHER = types.Tool(function_declarations=[types.FunctionDeclaration(
    name="get_weather", description="Current weather.",
    parameters=types.Schema(type="OBJECT", properties={"city": types.Schema(type="STRING"),
                                                        "days": types.Schema(type="INTEGER")}, required=["city"]),
)])
NO_AFC = types.AutomaticFunctionCallingConfig(disable=True)


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_sim() as url:
        yield url


def client(base: str, prefix: str = "") -> genai.Client:
    return genai.Client(api_key="x", http_options=types.HttpOptions(base_url=base + prefix + "/"))


def generate(base: str, prefix: str = "", contents: object = "hello",
             **config: object) -> types.GenerateContentResponse:
    sdk = client(base, prefix)  # held: a Client closes its connections when collected
    return sdk.models.generate_content(
        model="sim-gem", contents=contents, config=types.GenerateContentConfig(automatic_function_calling=NO_AFC,
                                                                              **config))  # type: ignore[arg-type]


def stream(base: str, prefix: str = "", **config: object) -> list[types.GenerateContentResponse]:
    sdk = client(base, prefix)
    return list(sdk.models.generate_content_stream(
        model="sim-gem", contents="hello", config=types.GenerateContentConfig(automatic_function_calling=NO_AFC,
                                                                             **config)))  # type: ignore[arg-type]


def raw(base: str, body: dict, path: str = GENERATE, prefix: str = "") -> tuple[int, dict, bytes]:
    return post(base, prefix + path, {"contents": HI, **body})


def chunks(data: bytes) -> list[dict]:
    """The chunks of a complete stream: CRLF-separated `data:` events, no [DONE], each a
    GenerateContentResponse by the SDK's own (extra-forbidding) type."""
    out = []
    for name, payload in sse(data, b"\r\n\r\n"):
        assert name is None and payload != "[DONE]"
        chunk = json.loads(payload)
        strict(types.GenerateContentResponse, chunk)
        out.append(chunk)
    return out


def text_of(response: dict) -> str:
    parts = response["candidates"][0]["content"].get("parts", [])
    return "".join(p.get("text", "") for p in parts if not p.get("thought"))


# --- bodies ---------------------------------------------------------------------------


def test_plain_response_parses_strictly(base: str) -> None:
    status, headers, data = raw(base, {})
    assert status == 200 and headers["content-type"].startswith("application/json")
    body = json.loads(data)
    response = strict(types.GenerateContentResponse, body)
    candidate = response.candidates[0]
    assert candidate.finish_reason == types.FinishReason.STOP and candidate.index == 0
    assert candidate.content.role == "model" and 16 <= len(response.text.split()) <= 64
    usage = body["usageMetadata"]
    assert usage == {"promptTokenCount": 3 + 4 + 2, "candidatesTokenCount": len(response.text.split()),
                     "totalTokenCount": 9 + len(response.text.split())}
    assert body["modelVersion"] == "sim-gem" and body["responseId"]
    # The SDK, under /v1 (its default with a custom base URL), agrees.
    assert generate(base).text == response.text


def test_prompt_count_covers_system_text_and_media_parts(base: str) -> None:
    body = {"systemInstruction": {"parts": [{"text": "héllo wörld"}]}, "contents": [
        {"role": "user", "parts": [{"text": "abcd"}, {"inlineData": {"mimeType": "image/png", "data": "AAAA"}},
                                   {"text": "efgh"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"x": 1}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"y": 2}}},
                                   {"file_data": {"mime_type": "application/pdf", "file_uri": "gs://x"}}]},
    ]}
    usage = json.loads(post(base, GENERATE, body)[2])["usageMetadata"]
    assert usage["promptTokenCount"] == 3 + (4 + 4) + (4 + 2 + 85) + 4 + (4 + 85)


def test_function_call_with_arguments_from_the_schema(base: str) -> None:
    response = generate(base, tools=[WEATHER])
    call = response.function_calls[0]
    assert call.name == "get_weather" and set(call.args) == {"city"} and isinstance(call.args["city"], str)
    assert response.candidates[0].finish_reason == types.FinishReason.STOP
    pieces = (len(json.dumps(call.args, separators=(",", ":"))) + 3) // 4
    text = "".join(p.text or "" for p in response.candidates[0].content.parts)
    assert response.usage_metadata.candidates_token_count == len(text.split()) + pieces
    # A plain Python function declared the SDK's way (parameters_json_schema) works too.

    def get_time(zone: str, precise: bool = False) -> str:
        """The time in a zone."""
        return "noon"

    args = generate(base, tools=[get_time]).function_calls[0].args
    assert set(args) == {"zone"}


def test_tool_config_forces_or_forbids_calls(base: str) -> None:
    other = types.Tool(function_declarations=[types.FunctionDeclaration(name="other", parameters=types.Schema(
        type="OBJECT", properties={"flag": types.Schema(type="BOOLEAN")}))])
    forced = types.ToolConfig(function_calling_config=types.FunctionCallingConfig(
        mode="ANY", allowed_function_names=["other"]))
    call = generate(base, tools=[WEATHER, other], tool_config=forced).function_calls[0]
    assert call.name == "other" and isinstance(call.args["flag"], bool)
    none = types.ToolConfig(function_calling_config=types.FunctionCallingConfig(mode="NONE"))
    assert generate(base, tools=[WEATHER], tool_config=none).function_calls is None
    assert generate(base, "/_sim/tool_call=0", tools=[WEATHER]).function_calls is None


def test_after_a_function_response_the_model_answers_in_text(base: str) -> None:
    first = generate(base, tools=[WEATHER])
    contents = [
        types.Content(role="user", parts=[types.Part(text="hello")]),
        first.candidates[0].content,
        types.Content(role="user", parts=[types.Part.from_function_response(name="get_weather",
                                                                           response={"sky": "clear"})]),
    ]
    second = generate(base, contents=contents, tools=[WEATHER])
    assert second.function_calls is None and second.text


def test_thoughts_only_when_included_but_always_counted(base: str) -> None:
    shown = generate(base, thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=500))
    thought, answer = shown.candidates[0].content.parts
    assert thought.thought is True and len(thought.text.split()) == 8 and not answer.thought
    assert shown.usage_metadata.thoughts_token_count == 8
    hidden = generate(base, thinking_config=types.ThinkingConfig(thinking_budget=500))
    assert [p.thought for p in hidden.candidates[0].content.parts] == [None]
    assert hidden.usage_metadata.thoughts_token_count == 8
    assert hidden.usage_metadata.total_token_count == (hidden.usage_metadata.prompt_token_count + 8
                                                       + hidden.usage_metadata.candidates_token_count)
    small = generate(base, thinking_config=types.ThinkingConfig(include_thoughts=True, thinking_budget=3))
    assert len(small.candidates[0].content.parts[0].text.split()) == 3
    off = generate(base, thinking_config=types.ThinkingConfig(thinking_budget=0))
    assert off.usage_metadata.thoughts_token_count is None
    controlled = generate(base, "/_sim/reasoning_tokens=4")
    assert controlled.usage_metadata.thoughts_token_count == 4 and len(controlled.candidates[0].content.parts) == 1


def test_max_output_tokens_caps_thoughts_plus_text(base: str) -> None:
    response = generate(base, "/_sim/reasoning_tokens=5,output_tokens=4", max_output_tokens=7)
    assert response.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    assert (response.usage_metadata.thoughts_token_count, response.usage_metadata.candidates_token_count) == (5, 2)
    body = {"generationConfig": {"maxOutputTokens": 3}, "sim": {"reasoning_tokens": 5}}
    only_thoughts = json.loads(raw(base, body)[2])
    assert only_thoughts["candidates"][0]["content"] == {"role": "model"}  # no parts at all, as Google answers


def test_stop_sequences(base: str) -> None:
    full = generate(base, "/_sim/output_tokens=30").text
    stop = full.split(" ")[12]
    response = generate(base, "/_sim/output_tokens=30", stop_sequences=[stop])
    assert response.text == full[: full.index(stop)]
    assert response.candidates[0].finish_reason == types.FinishReason.STOP


# --- streaming ------------------------------------------------------------------------


@pytest.mark.parametrize("body", [
    {},
    {"generationConfig": {"thinkingConfig": {"includeThoughts": True, "thinkingBudget": 100}}},
    {"generation_config": {"thinking_config": {"thinking_budget": 100}}},
    {"tools": [{"functionDeclarations": [{"name": "f", "parameters": {"type": "OBJECT", "properties": {
        "q": {"type": "STRING"}}}}]}]},
])
def test_stream_chunks_parse_with_cumulative_usage_and_rebuild_the_whole(base: str, body: dict) -> None:
    status, headers, data = raw(base, body, STREAM)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    assert b"\r\n\r\n" in data and b"[DONE]" not in data
    parts = chunks(data)
    whole = json.loads(raw(base, body)[2])
    assert len(parts) >= 2
    if not body:
        assert len(parts) == len(text_of(whole).split()) + 1  # text split one token per chunk, then the finish
    finishes = [c["candidates"][0].get("finishReason") for c in parts]
    assert finishes == [None] * (len(parts) - 1) + [whole["candidates"][0]["finishReason"]]
    assert len({c["responseId"] for c in parts}) == 1 and parts[0]["modelVersion"] == "sim-gem"
    totals = [c["usageMetadata"]["totalTokenCount"] for c in parts]
    assert totals == sorted(totals) and parts[-1]["usageMetadata"] == whole["usageMetadata"]
    assert "".join(text_of(c) for c in parts) == text_of(whole)
    calls = [p["functionCall"] for c in parts for p in c["candidates"][0]["content"].get("parts", [])
             if "functionCall" in p]
    assert calls == [p["functionCall"] for p in whole["candidates"][0]["content"]["parts"] if "functionCall" in p]


def test_sdk_stream_matches_the_whole_response(base: str) -> None:
    thinking = types.ThinkingConfig(include_thoughts=True, thinking_budget=100)
    pieces = stream(base, thinking_config=thinking, tools=[WEATHER])
    whole = generate(base, thinking_config=thinking, tools=[WEATHER])
    thoughts = "".join(p.text for c in pieces for p in c.candidates[0].content.parts if p.thought)
    assert thoughts == whole.candidates[0].content.parts[0].text
    assert [c.function_calls for c in pieces if c.function_calls] == [whole.function_calls]
    assert pieces[-1].usage_metadata == whole.usage_metadata
    assert pieces[-1].candidates[0].finish_reason == types.FinishReason.STOP


def test_streaming_without_alt_sse_is_refused(base: str) -> None:
    status, _, data = raw(base, {}, "/v1beta/models/sim-gem:streamGenerateContent")
    assert status == 400 and "alt=sse" in json.loads(data)["error"]["message"]


# --- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc", "name"),
    [
        (400, errors.ClientError, "INVALID_ARGUMENT"),
        (401, errors.ClientError, "UNAUTHENTICATED"),
        (403, errors.ClientError, "PERMISSION_DENIED"),
        (404, errors.ClientError, "NOT_FOUND"),
        (429, errors.ClientError, "RESOURCE_EXHAUSTED"),
        (500, errors.ServerError, "INTERNAL"),
        (503, errors.ServerError, "UNAVAILABLE"),
        (504, errors.ServerError, "DEADLINE_EXCEEDED"),
    ],
)
def test_status_answers_google_errors(base: str, status: int, exc: type, name: str) -> None:
    with pytest.raises(exc) as info:
        generate(base, f"/_sim/status={status}")
    assert isinstance(info.value, errors.APIError) and (info.value.code, info.value.status) == (status, name)
    with pytest.raises(exc):
        stream(base, f"/_sim/status={status}")
    code, headers, data = raw(base, {"sim": {"status": status}})
    error = json.loads(data)["error"]
    assert code == status and (error["code"], error["status"]) == (status, name) and error["message"]
    if status == 429:
        assert headers["retry-after"] == "1"
        assert error["details"] == [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "1s"}]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "contents is not specified"),
        ({"contents": []}, "contents is not specified"),
        ({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}, "valid role"),
        ({"contents": [{"role": "user", "parts": []}]}, "parts must not be empty"),
        ({"contents": HI, "generationConfig": {"maxOutputTokens": 0}}, "max_output_tokens"),
        ({"contents": HI, "sim": {"hang": "perhaps"}}, "hang"),
        ({"contents": [{"parts": [{"text": "[[sim bogus=1]]"}]}]}, "bogus"),
    ],
)
def test_validation_errors_in_google_shape(base: str, body: dict, message: str) -> None:
    status, _, data = post(base, GENERATE, body)
    error = json.loads(data)["error"]
    assert status == 400 and error["code"] == 400 and error["status"] == "INVALID_ARGUMENT"
    assert message in error["message"]
    status, _, data = post(base, GENERATE, b"not json")
    assert status == 400 and json.loads(data)["error"]["status"] == "INVALID_ARGUMENT"


# --- controls -------------------------------------------------------------------------


def test_directives_in_system_instruction_and_contents(base: str) -> None:
    response = generate(base, "/_sim/output_tokens=2", system_instruction="brief [[sim output_tokens=3]]")
    assert len(response.text.split()) == 3
    response = generate(base, contents="hi [[sim output_tokens=5]]", system_instruction="[[sim output_tokens=3]]")
    assert len(response.text.split()) == 5


def test_cached_tokens_are_inside_the_prompt_count(base: str) -> None:
    usage = generate(base, "/_sim/prompt_tokens=100,cached_tokens=60,cache_write_tokens=30").usage_metadata
    assert (usage.prompt_token_count, usage.cached_content_token_count) == (100, 60)
    assert generate(base).usage_metadata.cached_content_token_count is None


def test_usage_false_leaves_usage_metadata_out(base: str) -> None:
    assert "usageMetadata" not in json.loads(raw(base, {"sim": {"usage": False}})[2])
    assert all("usageMetadata" not in c for c in chunks(raw(base, {}, STREAM, "/_sim/usage=false")[2]))


def test_context_length(base: str) -> None:
    with pytest.raises(errors.ClientError) as info:
        generate(base, "/_sim/context_length=5")
    assert info.value.code == 400 and info.value.status == "INVALID_ARGUMENT"
    assert info.value.message == "The input token count (9) exceeds the maximum number of tokens allowed (5)."
    assert generate(base, "/_sim/context_length=9").text


def test_cut_after_stream_and_body(base: str) -> None:
    before = stats(base)

    async def read() -> bytes:
        got = b""
        async with aiohttp.ClientSession() as session, session.post(
            base + "/_sim/cut_after=3" + STREAM, json={"contents": HI}
        ) as resp:
            with pytest.raises(aiohttp.ClientPayloadError):
                async for line in resp.content:
                    got += line
        return got

    got = asyncio.run(read())
    assert got.count(b"data: ") == 3 and b"finishReason" not in got
    req = urllib.request.Request(base + "/_sim/cut_after=0" + GENERATE, data=json.dumps({"contents": HI}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp, pytest.raises(IncompleteRead) as info:
        resp.read()
    assert info.value.partial.startswith(b'{"candidates":')
    after = wait_stats(base, lambda s: s["streams_cut"] > before["streams_cut"])
    assert after["streams_cut"] == before["streams_cut"] + 1


def test_fail_after_stream_ends_with_an_error_chunk(base: str) -> None:
    before = stats(base)
    status, _, data = raw(base, {"sim": {"fail_after": 2}}, STREAM)
    assert status == 200
    events = [json.loads(payload) for _, payload in sse(data, b"\r\n\r\n")]
    assert len(events) == 3 and events[-1] == {"error": {"code": 500, "message": events[-1]["error"]["message"],
                                                         "status": "INTERNAL"}}
    received = []
    sdk = client(base, "/_sim/fail_after=3")
    with pytest.raises(errors.ServerError) as info:
        for chunk in sdk.models.generate_content_stream(model="m", contents="hi"):
            received.append(chunk.text)
    assert len(received) == 3 and info.value.code == 500
    after = wait_stats(base, lambda s: s["streams_failed"] >= before["streams_failed"] + 2)
    assert after["streams_failed"] == before["streams_failed"] + 2
    with pytest.raises(errors.ServerError):
        generate(base, "/_sim/fail_after=3")


def test_garbage(base: str) -> None:
    status, _, data = raw(base, {"sim": {"garbage": True}})
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(data)
    status, _, data = raw(base, {"sim": {"garbage": True}}, STREAM)
    assert status == 200
    for _, payload in sse(data, b"\r\n\r\n"):
        with pytest.raises(ValueError):
            json.loads(payload)


def test_ttft_and_tokens_per_s(base: str) -> None:
    t0 = time.monotonic()
    generate(base, "/_sim/ttft_ms=300")
    assert time.monotonic() - t0 >= 0.25
    t0 = time.monotonic()
    assert len(stream(base, "/_sim/tokens_per_s=20,output_tokens=6")) == 7
    assert time.monotonic() - t0 >= 0.2


def test_stats_count_generate_and_stream(base: str) -> None:
    before = stats(base)
    raw(base, {}, STREAM)
    raw(base, {})
    after = wait_stats(base, lambda s: s["streams_completed"] > before["streams_completed"])
    assert after["requests"] == before["requests"] + 2
    assert after["streams_started"] == before["streams_started"] + 1
    assert after["streams_completed"] == before["streams_completed"] + 1
