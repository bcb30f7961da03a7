"""Providers reached over HTTP/2 (`http2 = true`): the gateway against the simulator's h2c,
with the official SDKs as clients. Everything a client sees is what HTTP/1.1 gives: answers,
streams, usage, exact charges, failover, and a client that leaves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import anthropic
import pytest

from tests.e2e.conftest import client
from tests.e2e.procs import Gateway, http

H2_CATALOG = """
[providers.h2-sim]
name = "Simulator over HTTP/2"
dialect = "openai"
base_url = "{sim}/v1"
api_key = "none"
trains_on_prompts = false
retains_prompts = false
http2 = true

[providers.h2-sim-anthropic]
name = "Simulator over HTTP/2 (Anthropic)"
dialect = "anthropic"
base_url = "{sim}"
api_key = "none"
trains_on_prompts = false
retains_prompts = false
http2 = true

[providers.h2-sim-broken]
name = "Broken simulator over HTTP/2"
dialect = "openai"
base_url = "{sim}/_sim/status=503/v1"
api_key = "none"
trains_on_prompts = false
retains_prompts = false
http2 = true

[[models]]
id = "h2/small"
name = "Simulated over HTTP/2"
context_length = 128000

[[models.endpoints]]
provider = "h2-sim"
model = "sim-small"
max_completion_tokens = 16384
pricing = { prompt = "0.00000015", completion = "0.0000006" }

[[models]]
id = "h2/claude"
name = "Simulated Anthropic over HTTP/2"
context_length = 200000

[[models.endpoints]]
provider = "h2-sim-anthropic"
model = "sim-claude"
max_completion_tokens = 8192
pricing = { prompt = "0.000003", completion = "0.000015" }

[[models]]
id = "h2/flaky"
name = "Simulated over HTTP/2, first endpoint failing"
context_length = 128000

[[models.endpoints]]
provider = "h2-sim-broken"
model = "sim-small"
max_completion_tokens = 16384
pricing = { prompt = "0.0000001", completion = "0.0000004" }

[[models.endpoints]]
provider = "h2-sim"
model = "sim-small"
max_completion_tokens = 16384
pricing = { prompt = "0.00000015", completion = "0.0000006" }
"""

HI = [{"role": "user", "content": "hi"}]
NANOS = Decimal("0.000000001")


@pytest.fixture(scope="module")
def h2_gateway(sim_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("h2"), sim_url, {}, H2_CATALOG).start()
    yield gw
    report = gw.verify()
    gw.stop()
    assert report["ok"], report


@pytest.fixture
def funded_h2(h2_gateway: Gateway) -> Iterator[tuple[Gateway, str, str]]:
    org = f"h2org{time.monotonic_ns()}"
    h2_gateway.org(org, "5.00")
    key, _ = h2_gateway.key(org)
    yield h2_gateway, org, key
    report = h2_gateway.verify()
    assert report["ok"], report


def cost(prompt: int, completion: int, prompt_price: int = 150, completion_price: int = 600) -> Decimal:
    return (prompt * prompt_price + completion * completion_price) * NANOS


def test_a_completion_over_http2_is_answered_and_charged_exactly(funded_h2):
    gw, org, key = funded_h2
    reply = client(gw, key).chat.completions.create(model="h2/small", messages=HI)
    assert reply.choices[0].message.content and reply.model == "h2/small"
    assert gw.balance(org) == Decimal("5.00") - cost(reply.usage.prompt_tokens, reply.usage.completion_tokens)


def test_a_stream_over_http2_arrives_whole_with_usage_and_is_charged_exactly(funded_h2):
    gw, org, key = funded_h2
    chunks = list(client(gw, key).chat.completions.create(
        model="h2/small", messages=HI, stream=True, extra_body={"sim": {"output_tokens": 12, "tokens_per_s": 200}}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens == 12 and text
    assert len({c.id for c in chunks}) == 1
    gw.wait_idle()
    assert gw.balance(org) == Decimal("5.00") - cost(usage.prompt_tokens, usage.completion_tokens)


def test_an_anthropic_stream_over_http2_through_the_messages_api(funded_h2):
    gw, org, key = funded_h2
    sdk = anthropic.Anthropic(base_url=gw.api.removesuffix("/v1"), api_key=key, max_retries=0)
    with sdk.messages.stream(model="h2/claude", max_tokens=64, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text and final.usage.output_tokens > 0
    gw.wait_idle()
    expected = cost(final.usage.input_tokens, final.usage.output_tokens, 3000, 15000)
    assert gw.balance(org) == Decimal("5.00") - expected


def test_an_http2_endpoint_that_fails_is_failed_over(funded_h2):
    gw, _, key = funded_h2
    reply = client(gw, key).chat.completions.with_raw_response.create(model="h2/flaky", messages=HI)
    assert reply.parse().choices[0].message.content
    _, generation, _ = http("GET", f"{gw.api}/generation?id={reply.parse().id}", key=key)
    assert generation["data"]["provider_name"] == "Simulator over HTTP/2"


def test_many_concurrent_streams_over_http2_all_complete_and_are_each_charged(funded_h2, sim_url):
    gw, org, key = funded_h2
    sdk = client(gw, key)

    def one(_: int) -> int:
        chunks = list(sdk.chat.completions.create(
            model="h2/small", messages=HI, stream=True, extra_body={"sim": {"output_tokens": 5, "tokens_per_s": 50}}))
        assert chunks[-1].usage is not None
        return chunks[-1].usage.prompt_tokens * 150 + chunks[-1].usage.completion_tokens * 600

    with ThreadPoolExecutor(24) as pool:
        nanos = sum(pool.map(one, range(48)))
    gw.wait_idle()
    assert gw.balance(org) == Decimal("5.00") - nanos * NANOS


def test_a_client_that_leaves_mid_stream_stops_the_upstream_stream(funded_h2, sim_url):
    gw, _, key = funded_h2
    _, before, _ = http("GET", f"{sim_url}/_sim/stats")
    stream = client(gw, key).chat.completions.create(
        model="h2/small", messages=HI, stream=True, extra_body={"sim": {"output_tokens": 50, "tokens_per_s": 5}})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            break
    stream.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _, stats, _ = http("GET", f"{sim_url}/_sim/stats")
        if stats["streams_disconnected"] > before["streams_disconnected"]:
            break
        time.sleep(0.05)
    assert stats["streams_disconnected"] == before["streams_disconnected"] + 1
    assert stats["streams_completed"] == before["streams_completed"]
