"""Round trips through every upstream dialect: the official openai SDK talks to the
gateway, which talks to the simulator's OpenAI, Anthropic and Gemini APIs. Each answer is
checked against what the gateway billed and what GET /generation recorded.

Simulator behaviour is asked for with `[[sim ...]]` directives in the message text,
because they survive translation into any dialect (a `sim` body field would not)."""

from __future__ import annotations

import base64
import json
from decimal import Decimal

import openai
import pytest

from tests.e2e.conftest import client
from tests.e2e.procs import Gateway, http

# model -> (prompt, completion, cache read, cache write) in USD per token, from sim_catalog.
PRICES = {
    "sim/small": (Decimal("0.00000015"), Decimal("0.0000006"), Decimal("0.000000075"), Decimal("0.00000015")),
    "sim/claude": (Decimal("0.000003"), Decimal("0.000015"), Decimal("0.0000003"), Decimal("0.00000375")),
    "sim/gemini": (Decimal("0.0000003"), Decimal("0.0000025"), Decimal("0.00000003"), Decimal("0.0000003")),
}
NATIVE_STOP = {"sim/small": "stop", "sim/claude": "end_turn", "sim/gemini": "STOP"}
PROVIDERS = {"sim/small": "Farebox Simulator", "sim/claude": "Farebox Simulator (Anthropic)",
             "sim/gemini": "Farebox Simulator (Gemini)"}
MODELS = list(PRICES)
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string",
                   "enum": ["celsius", "fahrenheit"]}}, "required": ["city"]}}}
# A 1x1 transparent PNG.
PIXEL = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000001e221bc330000000049454e44ae426082")).decode()


def cost_of(model: str, usage) -> Decimal:
    prompt, completion, read, write = PRICES[model]
    details = usage.prompt_tokens_details
    cached = details.cached_tokens if details else 0
    written = (details.model_dump().get("cache_write_tokens") or 0) if details else 0
    return ((usage.prompt_tokens - cached - written) * prompt + cached * read + written * write
            + usage.completion_tokens * completion)


def generation(gw, key: str, gen_id: str) -> dict:
    status, data, _ = http("GET", f"{gw.api}/generation?id={gen_id}", key=key)
    assert status == 200, data
    return data["data"]


def check_billed(gw, org: str, key: str, model: str, gen_id: str, usage, before: Decimal) -> dict:
    """The usage the client saw is what was charged and what /generation recorded."""
    charged = Decimal(str(usage.model_extra["cost"]))
    assert charged == cost_of(model, usage)
    assert gw.balance(org) == before - charged
    record = generation(gw, key, gen_id)
    assert record["tokens_prompt"] == usage.prompt_tokens
    assert record["tokens_completion"] == usage.completion_tokens
    assert Decimal(str(record["total_cost"])) == charged
    assert record["provider_name"] == PROVIDERS[model] and record["model"] == model
    return record


@pytest.mark.parametrize("model", MODELS)
def test_text(funded, model):
    gw, org, key = funded
    before = gw.balance(org)
    completion = client(gw, key).chat.completions.create(
        model=model, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
    choice = completion.choices[0]
    assert choice.message.content and choice.finish_reason == "stop"
    assert choice.model_extra["native_finish_reason"] == NATIVE_STOP[model]
    assert completion.model == model and completion.model_extra["provider"] == PROVIDERS[model]
    record = check_billed(gw, org, key, model, completion.id, completion.usage, before)
    assert record["native_finish_reason"] == NATIVE_STOP[model] and record["finish_reason"] == "stop"


@pytest.mark.parametrize("model", MODELS)
def test_streaming(funded, model):
    gw, org, key = funded
    before = gw.balance(org)
    messages = [{"role": "user", "content": "Tell me something [[sim output_tokens=12]]"}]
    chunks = list(client(gw, key).chat.completions.create(model=model, messages=messages, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == 12
    finishes = [(c.choices[0].finish_reason, c.choices[0].model_extra["native_finish_reason"])
                for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [("stop", NATIVE_STOP[model])]
    final = chunks[-1]
    assert final.choices == [] and final.usage.completion_tokens == 12
    check_billed(gw, org, key, model, final.id, final.usage, before)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", MODELS)
def test_multi_step_tool_call(funded, model, stream):
    gw, org, key = funded
    api = client(gw, key)
    messages = [{"role": "user", "content": "What is the weather in Paris?"}]
    before = gw.balance(org)
    if stream:
        chunks = list(api.chat.completions.create(model=model, messages=messages, tools=[WEATHER], stream=True))
        calls: dict[int, dict] = {}
        for chunk in chunks:
            for call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                entry = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = entry["id"] or call.id
                entry["name"] += call.function.name or "" if call.function else ""
                entry["arguments"] += call.function.arguments or "" if call.function else ""
        finish = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
        call_id, name, arguments = calls[0]["id"], calls[0]["name"], calls[0]["arguments"]
        usage, gen_id = chunks[-1].usage, chunks[-1].id
    else:
        first = api.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
        finish = first.choices[0].finish_reason
        call = first.choices[0].message.tool_calls[0]
        call_id, name, arguments = call.id, call.function.name, call.function.arguments
        usage, gen_id = first.usage, first.id
    assert finish == "tool_calls" and name == "get_weather" and call_id
    assert isinstance(json.loads(arguments)["city"], str)
    check_billed(gw, org, key, model, gen_id, usage, before)

    messages += [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call_id, "content": json.dumps({"temperature": 18, "sky": "clear"})},
    ]
    before = gw.balance(org)
    second = api.chat.completions.create(model=model, messages=messages, tools=[WEATHER])
    assert second.choices[0].finish_reason == "stop" and second.choices[0].message.content
    assert not second.choices[0].message.tool_calls
    check_billed(gw, org, key, model, second.id, second.usage, before)


@pytest.mark.parametrize("model", MODELS)
def test_image_input(funded, model):
    gw, org, key = funded
    before = gw.balance(org)
    plain = client(gw, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": [{"type": "text", "text": "Describe"}]}])
    charged = check_billed(gw, org, key, model, plain.id, plain.usage, before)["total_cost"]
    with_image = client(gw, key).chat.completions.create(model=model, messages=[{"role": "user", "content": [
        {"type": "text", "text": "Describe"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PIXEL}"}}]}])
    # The simulator counts 85 tokens per image, in every dialect.
    assert with_image.usage.prompt_tokens == plain.usage.prompt_tokens + 85
    check_billed(gw, org, key, model, with_image.id, with_image.usage, before - Decimal(str(charged)))
    assert generation(gw, key, with_image.id)["num_media_prompt"] == 1


@pytest.mark.parametrize("model", MODELS)
def test_reasoning_is_billed_as_completion_tokens(funded, model):
    gw, org, key = funded
    before = gw.balance(org)
    completion = client(gw, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Think first [[sim reasoning_tokens=20 output_tokens=5]]"}],
        extra_body={"reasoning": {"max_tokens": 2048}}, max_tokens=4096)
    message = completion.choices[0].message
    assert message.model_extra["reasoning"]
    assert len(message.content.split()) == 5
    assert completion.usage.completion_tokens == 25
    if model != "sim/claude":  # Anthropic reports thinking inside output_tokens, with no separate count
        assert completion.usage.completion_tokens_details.reasoning_tokens == 20
    check_billed(gw, org, key, model, completion.id, completion.usage, before)


@pytest.mark.parametrize("model", MODELS)
def test_cache_reads_are_billed_at_the_cache_price(funded, model):
    gw, org, key = funded
    before = gw.balance(org)
    writes = "cache_write_tokens=30" if model == "sim/claude" else ""
    text = "A long shared prefix. " * 40 + f"[[sim cached_tokens=100 {writes}]]"
    completion = client(gw, key).chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    details = completion.usage.prompt_tokens_details
    assert details.cached_tokens == 100
    if writes:
        assert details.model_dump()["cache_write_tokens"] == 30
    record = check_billed(gw, org, key, model, completion.id, completion.usage, before)
    assert record["native_tokens_cached"] == 100
    assert Decimal(str(record["cache_discount"])) > 0 or writes


# ---------------------------------------------------------------- upstream errors, per dialect

# (directive, status the client gets, error_type, provider_code per model)
ERRORS = [
    ("status=529", 503, "provider_overloaded", {"sim/claude": "overloaded_error"}),
    ("status=503", 503, "provider_overloaded", {"sim/small": None, "sim/gemini": "UNAVAILABLE"}),
    ("status=429 retry_after=4", 429, "rate_limit_exceeded",
     {"sim/small": "rate_limit_exceeded", "sim/claude": "rate_limit_error", "sim/gemini": "RESOURCE_EXHAUSTED"}),
    ("status=400", 400, "invalid_request",
     {"sim/small": None, "sim/claude": "invalid_request_error", "sim/gemini": "INVALID_ARGUMENT"}),
    ("context_length=10", 400, "context_length_exceeded",
     {"sim/small": "context_length_exceeded", "sim/claude": "invalid_request_error", "sim/gemini": "INVALID_ARGUMENT"}),
    ("status=401", 502, "authentication",
     {"sim/small": "invalid_api_key", "sim/claude": "authentication_error", "sim/gemini": "UNAUTHENTICATED"}),
    ("status=500", 502, "provider_unavailable", {"sim/small": None, "sim/claude": "api_error", "sim/gemini": "INTERNAL"}),
]
CASES = [(d, s, t, m, code) for d, s, t, codes in ERRORS for m, code in codes.items()]


@pytest.fixture(scope="module")
def erring(sim_url, tmp_path_factory):
    """A gateway of its own for the injected failures. On the shared one they put endpoints
    in outage for 30 s, and the tests that came next got 503s (with -k, or in another order);
    here no number of errors is an outage, so each case sees its own error."""
    gw = Gateway(tmp_path_factory.mktemp("erring"), sim_url, {"FAREBOX_HEALTH_OUTAGE_FAILURES": "1000000"}).start()
    org = "erring"
    gw.org(org, "5.00")
    key, _ = gw.key(org)
    yield gw, org, key
    report = gw.verify()
    gw.stop()
    assert report["ok"], report


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(("directive", "status", "error_type", "model", "code"), CASES)
def test_upstream_errors_become_openrouter_errors(erring, directive, status, error_type, model, code, stream):
    gw, org, key = erring
    before = gw.balance(org)
    body = {"model": model, "stream": stream,
            "messages": [{"role": "user", "content": f"A question of some length [[sim {directive}]]"}]}
    got, data, headers = http("POST", f"{gw.api}/chat/completions", body, key=key)
    assert got == status, data
    error = data["error"]
    assert error["code"] == status and error["metadata"]["error_type"] == error_type
    assert error["metadata"]["provider_name"] == PROVIDERS[model]
    assert error["metadata"].get("provider_code") == code
    assert error["metadata"]["raw"]  # the upstream's own body, for debugging
    if status == 429:
        assert {k.lower(): v for k, v in headers.items()}["retry-after"] == "4"
    assert gw.balance(org) == before


@pytest.mark.parametrize("model", MODELS)
def test_a_mid_stream_upstream_error_ends_the_stream_and_bills_what_was_sent(funded, model):
    gw, org, key = funded
    before = gw.balance(org)
    messages = [{"role": "user", "content": "Go on [[sim fail_after=3 output_tokens=10]]"}]
    stream = client(gw, key).chat.completions.create(model=model, messages=messages, stream=True)
    received = []
    with pytest.raises(openai.APIError) as caught:  # the SDK raises on the final error chunk
        for chunk in stream:
            received.append(chunk)
    assert caught.value.body["metadata"]["error_type"] in ("provider_overloaded", "provider_unavailable")
    assert caught.value.body["metadata"]["provider_name"] == PROVIDERS[model]
    text = "".join(c.choices[0].delta.content or "" for c in received if c.choices)
    assert len(text.split()) == 3
    record = generation(gw, key, received[0].id)
    assert record["finish_reason"] == "error" and record["tokens_completion"] == 3
    assert Decimal(str(record["total_cost"])) > 0
    assert gw.balance(org) == before - Decimal(str(record["total_cost"]))


def test_an_overloaded_anthropic_endpoint_fails_over_to_the_next(make_gateway, sim_url):
    """Retryable errors from any dialect move on: an Anthropic endpoint answering 529 is
    followed by a Gemini one serving the same model. Sorting by price makes the overloaded
    (cheaper) endpoint first every time; load balancing would put Gemini first one time in 32."""
    gw = make_gateway()
    gw.org("fo", "5.00")
    key, _ = gw.key("fo")
    completion = client(gw, key).chat.completions.create(
        model="sim/claude-or-gemini", messages=[{"role": "user", "content": "Hello"}],
        extra_body={"provider": {"sort": "price"}})
    assert completion.model_extra["provider"] == "Farebox Simulator (Gemini)"
    attempts = generation(gw, key, completion.id)["provider_responses"]
    assert [(a["provider_name"], a["status"]) for a in attempts] == [
        ("Overloaded Anthropic", 503), ("Farebox Simulator (Gemini)", 200)]


def test_claude_thinking_survives_an_openai_client_tool_loop(funded):
    """The OpenAI-shaped client gets Claude's signed thinking as reasoning_details and sends
    it back unchanged; the Anthropic upstream refuses the next turn otherwise."""
    gw, _, key = funded
    api = client(gw, key)
    messages = [{"role": "user", "content": "Weather in Rome? [[sim reasoning_tokens=6]]"}]
    kwargs = {"model": "sim/claude", "tools": [WEATHER], "max_tokens": 4000,
              "extra_body": {"reasoning": {"max_tokens": 2048}}}
    first = api.chat.completions.create(messages=messages, **kwargs).choices[0]
    assert first.finish_reason == "tool_calls"
    details = first.message.model_extra["reasoning_details"]
    assert details[0]["type"] == "reasoning.text" and details[0]["signature"]
    call = first.message.tool_calls[0]
    turn = {"role": "assistant", "content": first.message.content, "reasoning_details": details,
            "tool_calls": [{"id": call.id, "type": "function",
                            "function": {"name": call.function.name, "arguments": call.function.arguments}}]}
    result = {"role": "tool", "tool_call_id": call.id, "content": "21C"}
    second = api.chat.completions.create(messages=[*messages, turn, result], **kwargs)
    assert second.choices[0].finish_reason == "stop"
    # Without the signed thinking the upstream answers 400, as Anthropic does.
    with pytest.raises(openai.BadRequestError, match="thinking"):
        api.chat.completions.create(messages=[*messages, {k: v for k, v in turn.items() if k != "reasoning_details"},
                                              result], **kwargs)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", MODELS)
def test_excluded_reasoning_is_billed_but_not_sent(funded, model, stream):
    gw, org, key = funded
    before = gw.balance(org)
    messages = [{"role": "user", "content": "Think quietly [[sim reasoning_tokens=20 output_tokens=5]]"}]
    kwargs = {"model": model, "messages": messages, "max_tokens": 4096,
              "extra_body": {"reasoning": {"max_tokens": 2048, "exclude": True}}}
    if stream:
        chunks = list(client(gw, key).chat.completions.create(stream=True, **kwargs))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        assert not any((d.model_extra or {}).get("reasoning") for d in deltas)
        assert len("".join(d.content or "" for d in deltas).split()) == 5
        usage, gen_id = chunks[-1].usage, chunks[-1].id
    else:
        completion = client(gw, key).chat.completions.create(**kwargs)
        message = completion.choices[0].message
        assert "reasoning" not in message.model_extra and "reasoning_details" not in message.model_extra
        usage, gen_id = completion.usage, completion.id
    assert usage.completion_tokens == 25  # the reasoning still happened, and is paid for
    check_billed(gw, org, key, model, gen_id, usage, before)
