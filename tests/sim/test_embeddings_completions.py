"""OpenAI embeddings and legacy text completions, checked with the official `openai` SDK's
types, and the behaviour controls that apply to them."""

from __future__ import annotations

import base64
import json
import math
import struct
import time
from collections.abc import Iterator

import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse

from tests.sim.contract import post, sse, stats, strict, wait_stats
from tests.simthread import running_sim


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_sim() as url:
        yield url


def sdk(base: str, prefix: str = "") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}{prefix}/v1", api_key="x", max_retries=0)


# --- embeddings -----------------------------------------------------------------------


def test_embeddings_parse_strictly_as_deterministic_unit_vectors(base: str) -> None:
    status, headers, data = post(base, "/v1/embeddings", {"model": "emb", "input": ["hello", "world"]})
    assert status == 200 and headers["x-request-id"].startswith("req_")
    response = strict(CreateEmbeddingResponse, json.loads(data))
    assert response.object == "list" and response.model == "emb" and [d.index for d in response.data] == [0, 1]
    first, second = (d.embedding for d in response.data)
    assert len(first) == 256 and math.isclose(math.fsum(v * v for v in first), 1.0, rel_tol=1e-5)
    assert first != second
    assert response.usage.prompt_tokens == response.usage.total_tokens == 2 + 2
    again = sdk(base).embeddings.create(model="emb", input="hello", encoding_format="float")
    assert again.data[0].embedding == first
    assert sdk(base).embeddings.create(model="other", input="hello", encoding_format="float").data[0].embedding != first


def test_dimensions_and_token_arrays(base: str) -> None:
    response = sdk(base).embeddings.create(model="emb", input=[[1, 2, 3], [4, 5]], dimensions=8,
                                           encoding_format="float")
    assert [len(d.embedding) for d in response.data] == [8, 8] and response.usage.prompt_tokens == 5
    single = sdk(base).embeddings.create(model="emb", input=[1, 2, 3], dimensions=8, encoding_format="float")
    assert single.data[0].embedding == response.data[0].embedding


def test_base64_is_little_endian_float32_of_the_same_vector(base: str) -> None:
    body = {"model": "emb", "input": "hello", "dimensions": 16}
    floats = json.loads(post(base, "/v1/embeddings", {**body, "encoding_format": "float"})[2])["data"][0]["embedding"]
    encoded = json.loads(post(base, "/v1/embeddings", {**body, "encoding_format": "base64"})[2])["data"][0]
    assert list(struct.unpack("<16f", base64.b64decode(encoded["embedding"]))) == floats
    # The SDK asks for base64 by default and decodes it itself.
    assert sdk(base).embeddings.create(model="emb", input="hello", dimensions=16).data[0].embedding == floats


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, None),
        ({"model": "emb"}, "input"),
        ({"model": "emb", "input": ""}, "input"),
        ({"model": "emb", "input": [1, "a"]}, "input"),
        ({"model": "emb", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "emb", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "emb", "input": "x", "sim": {"bogus": 1}}, "sim.bogus"),
    ],
)
def test_embedding_validation(base: str, body: dict, param: str | None) -> None:
    status, _, data = post(base, "/v1/embeddings", body)
    error = json.loads(data)["error"]
    assert status == 400 and error["type"] == "invalid_request_error" and error["param"] == param


def test_embedding_controls(base: str) -> None:
    assert "usage" not in json.loads(post(base, "/_sim/usage=false/v1/embeddings", {"model": "e", "input": "x"})[2])
    usage = sdk(base, "/_sim/prompt_tokens=77").embeddings.create(model="e", input="x", encoding_format="float").usage
    assert usage.prompt_tokens == 77
    with pytest.raises(openai.RateLimitError):
        sdk(base, "/_sim/status=429").embeddings.create(model="e", input="x")
    with pytest.raises(openai.BadRequestError) as info:
        sdk(base, "/_sim/context_length=3").embeddings.create(model="e", input="a longer input text")
    assert info.value.code == "context_length_exceeded" and info.value.param == "input"
    with pytest.raises(openai.InternalServerError):
        sdk(base, "/_sim/fail_after=0").embeddings.create(model="e", input="x")
    status, _, data = post(base, "/v1/embeddings", {"model": "e", "input": "x", "sim": {"garbage": True}})
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(data)
    t0 = time.monotonic()
    sdk(base, "/_sim/ttft_ms=300").embeddings.create(model="e", input="x")
    assert time.monotonic() - t0 >= 0.25
    with pytest.raises(openai.APIConnectionError):
        sdk(base, "/_sim/cut_after=0").embeddings.create(model="e", input="x")


# --- legacy completions ---------------------------------------------------------------


def test_completion_parses_strictly_with_the_legacy_default_cap(base: str) -> None:
    status, _, data = post(base, "/v1/completions", {"model": "inst", "prompt": "Say hello"})
    completion = strict(Completion, json.loads(data))
    choice = completion.choices[0]
    assert status == 200 and completion.object == "text_completion" and completion.id.startswith("cmpl-")
    assert choice.index == 0 and choice.logprobs is None
    assert len(choice.text.split()) == 16 and choice.finish_reason == "length"  # max_tokens defaults to 16
    assert completion.usage.prompt_tokens == 3 and completion.usage.completion_tokens == 16
    uncapped = sdk(base).completions.create(model="inst", prompt=["Say hello"], max_tokens=1000)
    assert uncapped.choices[0].finish_reason == "stop" and uncapped.choices[0].text.startswith(choice.text)


def _chunk(chunk: dict) -> dict:
    """A stream chunk as the SDK's Completion type can take it: the SDK parses chunks with that
    type without validating, and it declares finish_reason non-null, while OpenAI's (and the
    sim's) chunks carry null until the last one."""
    choices = [{**c, "finish_reason": c["finish_reason"] or "length"} for c in chunk["choices"]]
    return {**chunk, "choices": choices}


def test_completion_stream_chunks_parse_and_rebuild_the_text(base: str) -> None:
    body = {"model": "inst", "prompt": "Say hello", "max_tokens": 1000, "stream": True,
            "stream_options": {"include_usage": True}}
    status, _, data = post(base, "/v1/completions", body)
    events = sse(data)
    assert status == 200 and events[-1] == (None, "[DONE]")
    payloads = [json.loads(payload) for _, payload in events[:-1]]
    chunks = [strict(Completion, _chunk(payload)) for payload in payloads]
    finishes = [p["choices"][0]["finish_reason"] for p in payloads if p["choices"]]
    assert finishes == [None] * (len(finishes) - 1) + ["stop"]
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    assert all(json.loads(payload)["usage"] is None for _, payload in events[:-2])
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(text.split())
    whole = sdk(base).completions.create(model="inst", prompt="Say hello", max_tokens=1000)
    assert whole.choices[0].text == text
    assert "usage" not in json.loads(sse(post(base, "/v1/completions", {**body, "stream_options": None})[2])[0][1])


def test_completion_prompt_directives_stop_and_token_prompts(base: str) -> None:
    c = sdk(base).completions.create(model="inst", prompt="x [[sim output_tokens=5]]", max_tokens=100)
    assert len(c.choices[0].text.split()) == 5 and c.choices[0].finish_reason == "stop"
    full = sdk(base).completions.create(model="inst", prompt="y", max_tokens=30,
                                        extra_body={"sim": {"output_tokens": 30}})
    stop = full.choices[0].text.split(" ")[10]
    cut = sdk(base).completions.create(model="inst", prompt="y", max_tokens=30, stop=stop,
                                       extra_body={"sim": {"output_tokens": 30}})
    assert cut.choices[0].text == full.choices[0].text[: full.choices[0].text.index(stop)]
    tokens = sdk(base).completions.create(model="inst", prompt=[[1, 2, 3, 4, 5]])
    assert tokens.usage.prompt_tokens == 5


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "m"}, "prompt", "missing_required_parameter"),
        ({"model": "m", "prompt": ["a", "b"]}, "prompt", "unsupported_value"),
        ({"model": "m", "prompt": 3}, "prompt", "invalid_type"),
        ({"model": "m", "prompt": "a", "max_tokens": -1}, "max_tokens", "integer_below_min_value"),
        ({"model": "m", "prompt": "a", "n": 2}, "n", "unsupported_value"),
        ({"model": "m", "prompt": "a", "stop": 5}, "stop", "invalid_type"),
        ({"model": "m", "prompt": "a", "stream_options": {"include_usage": True}}, "stream_options", None),
    ],
)
def test_completion_validation(base: str, body: dict, param: str, code: str | None) -> None:
    status, _, data = post(base, "/v1/completions", body)
    error = json.loads(data)["error"]
    assert status == 400 and (error["param"], error["code"]) == (param, code)


def test_completion_controls(base: str) -> None:
    before = stats(base)
    events = sse(post(base, "/_sim/fail_after=2/v1/completions", {"model": "m", "prompt": "p", "stream": True})[2])
    assert len(events) == 3 and "error" in json.loads(events[-1][1])
    with pytest.raises(openai.APIConnectionError):
        list(sdk(base, "/_sim/cut_after=2").completions.create(model="m", prompt="p", stream=True))
    after = wait_stats(base, lambda s: s["streams_cut"] > before["streams_cut"])
    assert after["streams_failed"] == before["streams_failed"] + 1
    assert after["streams_cut"] == before["streams_cut"] + 1
    with pytest.raises(openai.InternalServerError):
        sdk(base, "/_sim/status=503").completions.create(model="m", prompt="p")
    with pytest.raises(openai.BadRequestError) as info:
        sdk(base, "/_sim/context_length=1").completions.create(model="m", prompt="a long prompt")
    assert info.value.param == "prompt"
    usage = sdk(base, "/_sim/reasoning_tokens=3,output_tokens=2").completions.create(model="m", prompt="p").usage
    assert usage.completion_tokens == 5 and usage.completion_tokens_details.reasoning_tokens == 3
    t0 = time.monotonic()
    list(sdk(base, "/_sim/tokens_per_s=20,output_tokens=6").completions.create(model="m", prompt="p", stream=True))
    assert time.monotonic() - t0 >= 0.2
