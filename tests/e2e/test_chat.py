"""Chat completions through a real gateway and simulator with the official openai SDK."""

from __future__ import annotations

import re
from decimal import Decimal

import openai
import pytest

from tests.e2e.conftest import client
from tests.e2e.procs import http

GEN_ID = re.compile(r"^gen-\d{10}-[A-Za-z0-9]{20}$")
SMALL_PROMPT, SMALL_COMPLETION = Decimal("0.00000015"), Decimal("0.0000006")


def expected_cost(prompt_tokens: int, completion_tokens: int) -> Decimal:
    return prompt_tokens * SMALL_PROMPT + completion_tokens * SMALL_COMPLETION


def test_non_streaming_response_shape_and_exact_charge(funded):
    gw, org, key = funded
    before = gw.balance(org)
    raw = client(gw, key).chat.completions.with_raw_response.create(
        model="sim/small", messages=[{"role": "user", "content": "Hello there"}])
    completion = raw.parse()
    extra = completion.model_extra
    assert GEN_ID.match(completion.id)
    assert raw.headers["x-generation-id"] == completion.id
    assert extra["provider"] == "Farebox Simulator"
    assert completion.model == "sim/small"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop" and choice.model_extra["native_finish_reason"] == "stop"
    assert choice.message.content
    usage = completion.usage
    cost = Decimal(str(usage.model_extra["cost"]))
    assert cost == expected_cost(usage.prompt_tokens, usage.completion_tokens)
    assert usage.model_extra["is_byok"] is False
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0
    assert Decimal(str(usage.model_extra["cost_details"]["upstream_inference_cost"])) == cost
    assert gw.balance(org) == before - cost


def test_streaming_chunks_and_final_usage_chunk(funded):
    gw, org, key = funded
    before = gw.balance(org)
    stream = client(gw, key).chat.completions.create(
        model="sim/small", messages=[{"role": "user", "content": "Stream please"}], stream=True)
    chunks = list(stream)
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and GEN_ID.match(ids.pop())
    assert all(c.model == "sim/small" and c.model_extra["provider"] == "Farebox Simulator" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    final = chunks[-1]
    assert final.choices == [] and final.usage is not None
    assert sum(1 for c in chunks if c.usage is not None) == 1
    cost = Decimal(str(final.usage.model_extra["cost"]))
    assert cost == expected_cost(final.usage.prompt_tokens, final.usage.completion_tokens)
    assert gw.balance(org) == before - cost


@pytest.mark.parametrize("model", ["sim/small", "sim/claude", "sim/gemini"])
def test_every_chunk_has_the_generations_id_object_and_created(fake_clock_gateway, model):
    # The gateway's clock stands at 2026-01-01 while the simulator stamps its own chunks with
    # the real time: a chunk passed through with the upstream's `created` would show it.
    gw = fake_clock_gateway
    gw.org("acme", "5.00")
    key, _ = gw.key("acme")
    created = int(gw.clock.now())
    chunks = list(client(gw, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Stream please"}], stream=True))
    assert len(chunks) >= 3 and chunks[-1].usage is not None
    assert {(c.id, c.object, c.created) for c in chunks} == {(chunks[-1].id, "chat.completion.chunk", created)}


def test_every_legacy_completion_chunk_has_the_generations_id_object_and_created(fake_clock_gateway):
    gw = fake_clock_gateway
    gw.org("acme", "5.00")
    key, _ = gw.key("acme")
    created = int(gw.clock.now())
    text = list(client(gw, key).completions.create(model="sim/small", prompt="Stream a story", stream=True))
    assert len(text) >= 3 and text[-1].usage is not None
    assert {(c.id, c.object, c.created) for c in text} == {(text[-1].id, "text_completion", created)}


def test_max_tokens_gives_length(funded):
    gw, _, key = funded
    for kwargs in ({"max_tokens": 3}, {"max_completion_tokens": 4}):
        completion = client(gw, key).chat.completions.create(
            model="sim/small", messages=[{"role": "user", "content": "Long answer"}],
            extra_body={"sim": {"output_tokens": 50}}, **kwargs)
        assert completion.choices[0].finish_reason == "length"
        assert completion.usage.completion_tokens == next(iter(kwargs.values()))


def test_unknown_fields_pass_through_to_openai_upstreams(funded):
    gw, _, key = funded
    completion = client(gw, key).chat.completions.create(
        model="sim/small", messages=[{"role": "user", "content": "x"}], extra_body={"sim": {"output_tokens": 7}})
    assert completion.usage.completion_tokens == 7


def test_reasoning_and_cached_tokens_are_reported_and_priced(funded):
    gw, org, key = funded
    before = gw.balance(org)
    completion = client(gw, key).chat.completions.create(
        model="sim/small", messages=[{"role": "user", "content": "think " * 200}],
        extra_body={"sim": {"output_tokens": 5, "reasoning_tokens": 4, "cached_tokens": 100}})
    usage = completion.usage
    assert usage.completion_tokens_details.reasoning_tokens == 4
    assert usage.prompt_tokens_details.cached_tokens == 100
    cached_price = Decimal("0.000000075")
    expected = ((usage.prompt_tokens - 100) * SMALL_PROMPT + 100 * cached_price
                + usage.completion_tokens * SMALL_COMPLETION)
    assert Decimal(str(usage.model_extra["cost"])) == expected
    assert gw.balance(org) == before - expected


def test_free_model_costs_nothing(funded):
    gw, org, key = funded
    before = gw.balance(org)
    completion = client(gw, key).chat.completions.create(
        model="sim/small:free", messages=[{"role": "user", "content": "free"}])
    assert completion.usage.model_extra["cost"] == 0
    assert gw.balance(org) == before


def test_failover_to_the_next_endpoint_before_the_first_byte(make_gateway):
    """sim/flaky's cheaper endpoint always answers 503; the request still succeeds on the
    other, is billed at the serving endpoint's price, and both attempts are recorded. (A
    fresh gateway, sorted by price: the shared one has long put the broken endpoint in
    outage, and load balancing would try it first only most of the time.)"""
    gw = make_gateway()
    gw.org("fo", "5.00")
    key, _ = gw.key("fo")
    for stream in (False, True):
        response = client(gw, key).chat.completions.create(
            model="sim/flaky", messages=[{"role": "user", "content": "hi"}], stream=stream,
            extra_body={"provider": {"sort": "price"}})
        if stream:
            chunks = list(response)
            gen_id, usage = chunks[0].id, chunks[-1].usage
        else:
            gen_id, usage = response.id, response.usage
        assert usage.model_extra["cost"] > 0
        status, data, _ = http("GET", f"{gw.api}/generation?id={gen_id}", key=key)
        assert status == 200
        attempts = data["data"]["provider_responses"]
        assert [a["status"] for a in attempts] == [503, 200]
        assert [a["provider_name"] for a in attempts] == ["Broken Simulator", "Farebox Simulator"]
        assert data["data"]["provider_name"] == "Farebox Simulator"


def test_model_fallbacks_serve_and_bill_the_fallback_model(funded):
    gw, org, key = funded
    before = gw.balance(org)
    completion = client(gw, key).chat.completions.create(
        model="sim/broken", messages=[{"role": "user", "content": "hi"}], extra_body={"models": ["sim/small"]})
    assert completion.model == "sim/small"
    usage = completion.usage
    assert Decimal(str(usage.model_extra["cost"])) == expected_cost(usage.prompt_tokens, usage.completion_tokens)
    assert gw.balance(org) == before - Decimal(str(usage.model_extra["cost"]))


def test_more_than_three_fallback_models_is_refused(funded):
    gw, _, key = funded
    with pytest.raises(openai.BadRequestError, match=r"'models' array must have 3 items or fewer\."):
        client(gw, key).chat.completions.create(
            model="sim/small", messages=[{"role": "user", "content": "hi"}],
            extra_body={"models": ["sim/small", "sim/large", "sim/small:free", "sim/flaky"]})


def test_keepalive_comments_while_waiting_for_the_first_token(make_gateway):
    gw = make_gateway(sse_keepalive_s=0.1)
    gw.org("keepalive", "1.00")
    key, _ = gw.key("keepalive")
    import urllib.request

    request = urllib.request.Request(
        f"{gw.api}/chat/completions", method="POST",
        data=b'{"model":"sim/small","stream":true,"messages":[{"role":"user","content":"hi"}],"sim":{"ttft_ms":600}}',
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        body = response.read().decode()
        assert response.headers["content-type"] == "text/event-stream"
    first_data = body.index("data: ")
    assert ": OPENROUTER PROCESSING\n\n" in body[:first_data]
    assert body.rstrip().endswith("data: [DONE]")
    # The SDK's SSE parser skips the comments.
    chunks = list(client(gw, key).chat.completions.create(
        model="sim/small", messages=[{"role": "user", "content": "hi"}], stream=True,
        extra_body={"sim": {"ttft_ms": 400}}))
    assert chunks[-1].usage is not None


def test_chunks_are_forwarded_as_they_arrive(funded, sim_url):
    """The client holds the first token while the upstream is still generating: nothing
    is buffered until the end."""
    gw, _, key = funded
    stream = client(gw, key).chat.completions.create(
        model="sim/small", messages=[{"role": "user", "content": "slow"}], stream=True,
        extra_body={"sim": {"output_tokens": 4, "tokens_per_s": 0.5}})
    _, before, _ = http("GET", f"{sim_url}/_sim/stats")
    got_content = False
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got_content = True
            break
    assert got_content
    _, stats, _ = http("GET", f"{sim_url}/_sim/stats")
    assert stats["active_streams"] >= 1  # the upstream is still generating...
    assert stats["streams_completed"] == before["streams_completed"]  # ...and has not finished
    stream.close()
