"""The OpenAI dialect: request building (pure) and replies from a real simulator."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import orjson
import pytest

from farebox.catalog.load import parse_layers
from farebox.catalog.simulated import sim_catalog
from farebox.errors import ProviderError, UpstreamTimeout
from farebox.providers.base import Call, normalize_finish, usage_from_openai
from farebox.providers.http import Upstreams
from farebox.providers.openai import OpenAIDialect
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
    u = usage_from_openai({"prompt_tokens": 10, "completion_tokens": 5,
                           "prompt_tokens_details": {"cached_tokens": 3, "cache_write_tokens": 2},
                           "completion_tokens_details": {"reasoning_tokens": 4}})
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.cache_write_tokens, u.reasoning_tokens) == (
        10, 5, 3, 2, 4)
