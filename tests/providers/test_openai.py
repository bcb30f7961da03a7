"""The OpenAI dialect: request building (pure) and replies from a real simulator."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator

import orjson
import pytest

from farebox.catalog.load import parse_layers
from farebox.catalog.simulated import sim_catalog
from farebox.errors import ProviderError, UpstreamTimeout
from farebox.providers.base import Call, normalize_finish, usage_from_openai
from farebox.providers.http import Upstreams
from farebox.providers.openai import OpenAIDialect, read_fault
from tests.simthread import running_sim

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def sim() -> Iterator[str]:
    with running_sim() as url:
        yield url


def endpoint(base_url: str):
    _, models = parse_layers([("t", sim_catalog(base_url))])
    return models["sim/small"].endpoints[0]


def call(base_url: str, **body) -> Call:
    return Call(endpoint(base_url), {"model": "sim/small", "messages": MSG, **body}, "secret", None)


def dialect(timeout: float = 10) -> tuple[OpenAIDialect, Upstreams]:
    upstreams = Upstreams(connect_timeout_s=2, idle_timeout_s=timeout, total_timeout_s=timeout)
    return OpenAIDialect(upstreams), upstreams


def test_request_replaces_model_strips_gateway_fields_and_invents_nothing():
    d, _ = dialect()
    c = call("http://up/v1", models=["a/b"], provider={"order": ["x"]}, transforms=[], usage={"include": True},
             session_id="s", plugins=[], route="fallback", custom_field={"kept": True}, temperature=0.2,
             reasoning={"effort": "high"})
    url, body, headers = d.request(c, stream=False)
    sent = orjson.loads(body)
    assert url == "http://up/v1/chat/completions"
    assert headers["Authorization"] == "Bearer secret"
    assert sent == {"model": "sim-small", "messages": MSG, "custom_field": {"kept": True}, "temperature": 0.2,
                    "reasoning_effort": "high"}
    # Absent parameters are not invented.
    _, body, _ = d.request(call("http://up/v1"), stream=False)
    assert orjson.loads(body) == {"model": "sim-small", "messages": MSG}


def test_stream_request_asks_for_usage_and_non_stream_drops_stream_options():
    d, _ = dialect()
    _, body, _ = d.request(call("http://up/v1", stream=True), stream=True)
    assert orjson.loads(body)["stream_options"] == {"include_usage": True}
    _, body, _ = d.request(call("http://up/v1", stream=False, stream_options={"include_usage": True}), stream=False)
    assert "stream_options" not in orjson.loads(body) and "stream" not in orjson.loads(body)


def test_no_credential_no_authorization_header_and_user_is_tagged():
    d, _ = dialect()
    c = call("http://up/v1", user="alice")
    c.credential, c.user_tag = "", "hashed"
    _, body, headers = d.request(c, stream=False)
    assert "Authorization" not in headers and orjson.loads(body)["user"] == "hashed"


async def _complete(base: str, timeout: float = 10, **body):
    d, upstreams = dialect(timeout)
    try:
        return await d.complete(call(f"{base}/v1", **body))
    finally:
        await upstreams.close()


async def _stream(base: str, **body):
    d, upstreams = dialect()
    chunks = []
    try:
        s = await d.open_stream(call(f"{base}/v1", **body))
        while (chunk := await s.next()) is not None:
            chunks.append(chunk)
        return chunks, s.usage, s.upstream_id
    finally:
        await upstreams.close()


def test_complete_parses_reply_and_usage(sim):
    reply = asyncio.run(_complete(sim, sim={"output_tokens": 6, "cached_tokens": 2, "reasoning_tokens": 1}))
    assert reply.upstream_id.startswith("chatcmpl-")
    assert reply.usage.completion_tokens == 7 and reply.usage.cached_tokens == 2
    assert reply.usage.reasoning_tokens == 1
    assert reply.body["choices"][0]["message"]["content"]


def test_stream_yields_chunks_and_captures_usage(sim):
    chunks, usage, upstream_id = asyncio.run(_stream(sim, sim={"output_tokens": 4}))
    assert upstream_id.startswith("chatcmpl-")
    content = [c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content) == 4
    assert usage.completion_tokens == 4
    assert all("usage" not in c for c in chunks)


@pytest.mark.parametrize(("control", "status", "failover", "error_type"), [
    ({"status": 400}, 400, False, "invalid_request"), ({"status": 404}, 404, False, "not_found"),
    ({"status": 422}, 422, False, "unprocessable"), ({"status": 401}, 502, True, "authentication"),
    ({"status": 402}, 502, True, "payment_required"), ({"status": 429}, 429, True, "rate_limit_exceeded"),
    ({"status": 500}, 502, True, "provider_unavailable"), ({"status": 503}, 503, True, "provider_overloaded"),
    ({"garbage": True}, 502, True, "provider_unavailable"), ({"cut_after": 1}, 502, True, "provider_unavailable"),
])
def test_upstream_errors_are_typed(sim, control, status, failover, error_type):
    with pytest.raises(ProviderError) as caught:
        asyncio.run(_complete(sim, sim=control))
    error = caught.value
    assert (error.status, error.failover, error.error_type) == (status, failover, error_type)
    assert error.metadata["provider_name"] == "Farebox Simulator"


def test_status_errors_keep_the_raw_body_and_retry_after(sim):
    with pytest.raises(ProviderError) as caught:
        asyncio.run(_complete(sim, sim={"status": 429, "retry_after": 3}))
    assert caught.value.headers == {"Retry-After": "3"}
    assert caught.value.metadata["raw"]["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("control", [{"garbage": True}, {"cut_after": 2}])
def test_stream_failures_are_typed(sim, control):
    with pytest.raises(ProviderError):
        asyncio.run(_stream(sim, sim=control))


def test_hang_times_out(sim):
    with pytest.raises(UpstreamTimeout):
        asyncio.run(_complete(sim, timeout=0.3, sim={"hang": True}))


def test_connection_refused_is_a_provider_error():
    with pytest.raises(ProviderError, match="Could not reach"):
        asyncio.run(_complete("http://127.0.0.1:9"))


def test_finish_reasons_and_usage_parsing():
    assert [normalize_finish(r) for r in ("stop", "length", "tool_calls", "function_call", "content_filter",
                                           "eos", "weird", None, "")] == [
        "stop", "length", "tool_calls", "tool_calls", "content_filter", "stop", "stop", None, None]
    assert usage_from_openai(None) is None
    assert usage_from_openai({"prompt_tokens": -1, "completion_tokens": 1}) is None
    assert usage_from_openai({"prompt_tokens": "1", "completion_tokens": 1}) is None
    # JSON true is a bool, and a bool is an int to Python: it is not a count.
    assert usage_from_openai({"prompt_tokens": True, "completion_tokens": 1}) is None
    odd = usage_from_openai({"prompt_tokens": 10, "completion_tokens": 5,
                             "prompt_tokens_details": {"cached_tokens": True, "cache_write_tokens": -2},
                             "completion_tokens_details": {"reasoning_tokens": "4"}})
    assert (odd.cached_tokens, odd.cache_write_tokens, odd.reasoning_tokens) == (0, 0, 0)
    u = usage_from_openai({"prompt_tokens": 10, "completion_tokens": 5,
                           "prompt_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 2},
                           "completion_tokens_details": {"reasoning_tokens": 4}})
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.cache_write_tokens, u.reasoning_tokens) == (
        10, 5, 3, 2, 4)


# ---------------------------------------------------------------- the OpenAI-compatible family's options

def family_call(options: dict, **body) -> Call:
    c = call("http://up/v1", **body)
    provider = dataclasses.replace(c.endpoint.provider, options=options)
    c.endpoint = dataclasses.replace(c.endpoint, provider=provider)
    return c


def sent(options: dict, stream: bool = False, user_tag: str | None = None, **body) -> dict:
    d, _ = dialect()
    c = family_call(options, **body)
    c.user_tag = user_tag
    return orjson.loads(d.request(c, stream=stream)[1])


@pytest.mark.parametrize(("field", "body", "expected"), [
    ("as_sent", {"max_tokens": 5}, {"max_tokens": 5}),
    ("as_sent", {"max_completion_tokens": 5}, {"max_completion_tokens": 5}),
    ("max_completion_tokens", {"max_tokens": 5}, {"max_completion_tokens": 5}),
    ("max_tokens", {"max_completion_tokens": 5}, {"max_tokens": 5}),
    # Both sent: the one the server understands wins.
    ("max_tokens", {"max_completion_tokens": 5, "max_tokens": 7}, {"max_tokens": 7}),
])
def test_max_tokens_field_names_the_cap_as_the_server_wants(field, body, expected):
    out = sent({"max_tokens_field": field}, **body)
    assert {k: v for k, v in out.items() if k.startswith("max_")} == expected


def test_stream_usage_always_sends_no_stream_options():
    assert "stream_options" not in sent({"stream_usage": "always"}, stream=True, stream_options={"x": 1})
    assert sent({}, stream=True)["stream_options"] == {"include_usage": True}


def test_seed_user_effort_and_dropped_fields():
    out = sent({"seed_field": "random_seed", "send_user": False, "reasoning_effort": False,
                "drop_fields": ["logit_bias"]}, user_tag="tag", seed=7, user="alice",
               reasoning={"effort": "low"}, logit_bias={"1": 2})
    assert out == {"model": "sim-small", "messages": MSG, "random_seed": 7}


def test_reasoning_on_assistant_messages_is_dropped_unless_the_server_reads_it():
    history = [{"role": "user", "content": "q"},
               {"role": "assistant", "content": "a", "reasoning": "because", "reasoning_details": [{"x": 1}]},
               {"role": "user", "content": "again"}]
    assert sent({}, messages=history)["messages"][1] == {"role": "assistant", "content": "a"}
    out = sent({"reasoning_in_messages": True, "reasoning_field": "reasoning_content"}, messages=history)
    assert out["messages"][1] == {"role": "assistant", "content": "a", "reasoning_content": "because"}
    assert history[1]["reasoning"] == "because"  # the client's request is not mutated


class _Replies:
    """A tiny OpenAI-compatible server that answers with fixed bytes, like DeepSeek or Groq."""

    def __init__(self, body: bytes, content_type: str) -> None:
        self.body, self.content_type = body, content_type

    async def __aenter__(self) -> str:
        from aiohttp import web

        async def handler(request: web.Request) -> web.Response:
            await request.read()
            return web.Response(body=self.body, content_type=self.content_type)

        app = web.Application()
        app.router.add_post("/v1/chat/completions", handler)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{self.runner.addresses[0][1]}/v1"

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def test_reasoning_content_replies_read_as_reasoning():
    body = orjson.dumps({"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "finish_reason": "stop",
         "message": {"role": "assistant", "content": "4", "reasoning_content": "2+2"}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2}})

    async def run():
        async with _Replies(body, "application/json") as base:
            d, upstreams = dialect()
            try:
                return await d.complete(call(base))
            finally:
                await upstreams.close()

    reply = asyncio.run(run())
    assert reply.body["choices"][0]["message"] == {"role": "assistant", "content": "4", "reasoning": "2+2"}


def test_groq_stream_usage_and_reasoning_content_deltas():
    lines = [
        {"id": "g", "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": "hm"}}]},
        {"id": "g", "choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": "stop"}],
         "x_groq": {"id": "req", "usage": {"prompt_tokens": 9, "completion_tokens": 2}}},
    ]
    body = b"".join(b"data: " + orjson.dumps(x) + b"\n\n" for x in lines) + b"data: [DONE]\n\n"

    async def run():
        async with _Replies(body, "text/event-stream") as base:
            d, upstreams = dialect()
            try:
                stream = await d.open_stream(call(base))
                chunks = []
                while (chunk := await stream.next()) is not None:
                    chunks.append(chunk)
                return chunks, stream.usage
            finally:
                await upstreams.close()

    chunks, usage = asyncio.run(run())
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "reasoning": "hm"}
    assert "x_groq" not in chunks[1]
    assert (usage.prompt_tokens, usage.completion_tokens) == (9, 2)


@pytest.mark.parametrize(("status", "raw", "error_type", "code"), [
    (400, {"error": {"message": "This model's maximum context length is 8192 tokens.", "type": "invalid_request_error",
                     "code": "context_length_exceeded"}}, "context_length_exceeded", "context_length_exceeded"),
    # vLLM and Mistral: a flat body and no code, the limit only in the message.
    (400, {"object": "error", "message": "maximum context length is 4096 tokens", "type": "BadRequestError",
           "code": 400}, "context_length_exceeded", None),
    (429, {"error": {"message": "You exceeded your current quota", "type": "insufficient_quota",
                     "code": "insufficient_quota"}}, "payment_required", "insufficient_quota"),
    (401, {"error": {"message": "Incorrect API key", "type": "invalid_request_error", "code": "invalid_api_key"}},
     "authentication", "invalid_api_key"),
    (429, {"error": {"message": "slow down", "type": "tokens", "code": "rate_limit_exceeded"}},
     "rate_limit_exceeded", "rate_limit_exceeded"),
    (500, {"error": {"message": "boom", "type": "server_error"}}, "provider_unavailable", None),
    (503, "<html>overloaded</html>", "provider_overloaded", None),
    (422, {"detail": [{"msg": "Extra inputs are not permitted"}]}, "unprocessable", None),
])
def test_read_fault_understands_the_family_error_bodies(status, raw, error_type, code):
    fault = read_fault(status, raw)
    assert (fault.error_type, fault.code) == (error_type, code)


def test_cache_control_marks_are_not_sent_to_the_openai_family():
    messages = [{"role": "system", "content": [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}]},
                {"role": "user", "content": "hi"}]
    out = sent({}, messages=messages, cache_control={"type": "ephemeral"})
    assert out == {"model": "sim-small", "messages": [
        {"role": "system", "content": [{"type": "text", "text": "rules"}]}, {"role": "user", "content": "hi"}]}
    assert messages[0]["content"][0]["cache_control"] == {"type": "ephemeral"}  # the client's request is untouched
