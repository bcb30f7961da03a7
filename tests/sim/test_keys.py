"""API keys in the simulator: each dialect reads the key where its provider carries it,
refuses `sk-sim-invalid…` keys as the real provider refuses an unknown key, and counts
requests per key (GET /_sim/keys), over real HTTP with the official SDKs."""

from __future__ import annotations

import hashlib
import json
import urllib.request
from collections.abc import Iterator

import anthropic
import openai
import pytest
from google import genai
from google.genai import errors, types

from farebox.providers import anthropic as anthropic_provider
from farebox.providers import gemini as gemini_provider
from farebox.providers import openai as openai_provider
from tests.sim.contract import post, stats
from tests.simthread import running_sim

INVALID = "sk-sim-invalid-0123456789abcdef"
HI = [{"role": "user", "content": "hello"}]
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}


@pytest.fixture
def base() -> Iterator[str]:
    with running_sim() as url:   # a fresh sim per test: its key counts start empty
        yield url


def fingerprint(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def keys(base: str) -> tuple[dict[str, int], bytes]:
    with urllib.request.urlopen(base + "/_sim/keys", timeout=10) as resp:
        raw = resp.read()
    return json.loads(raw), raw


def reset(base: str) -> None:
    urllib.request.urlopen(urllib.request.Request(base + "/_sim/stats/reset", method="POST"), timeout=10).close()


def test_openai_refuses_an_invalid_bearer_key_like_openai(base: str) -> None:
    client = openai.OpenAI(base_url=base + "/v1", api_key=INVALID, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as info:
        client.chat.completions.create(model="m", messages=HI)  # type: ignore[arg-type]
    err = info.value
    assert err.status_code == 401 and err.code == "invalid_api_key" and err.type == "invalid_request_error"
    message = err.body["message"]  # type: ignore[index]
    assert message.startswith("Incorrect API key provided: sk-sim-i") and message.endswith("account/api-keys.")
    assert INVALID not in message
    # The other OpenAI endpoints read the key the same way; behaviour controls do not apply first.
    for path, body in (("/v1/completions", {"model": "m", "prompt": "hi"}),
                       ("/v1/embeddings", {"model": "m", "input": "hi"}),
                       ("/_sim/status=503/v1/chat/completions", {"model": "m", "messages": HI})):
        status, _, raw = post(base, path, body, {"Authorization": f"Bearer {INVALID}"})
        assert status == 401 and json.loads(raw)["error"]["code"] == "invalid_api_key", path
    # The gateway's OpenAI dialect reads it as an authentication failure (another endpoint may serve).
    status, _, raw = post(base, "/v1/chat/completions", {"model": "m", "messages": HI},
                          {"Authorization": f"Bearer {INVALID}"})
    assert openai_provider.read_fault(status, json.loads(raw)).error_type == "authentication"
    # Any other key, or none, is accepted.
    assert openai.OpenAI(base_url=base + "/v1", api_key="sk-sim-good", max_retries=0).chat.completions.create(
        model="m", messages=HI).choices[0].message.content  # type: ignore[arg-type]
    assert post(base, "/v1/chat/completions", {"model": "m", "messages": HI})[0] == 200


def test_anthropic_refuses_an_invalid_x_api_key_like_anthropic(base: str) -> None:
    client = anthropic.Anthropic(base_url=base, api_key=INVALID, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError) as info:
        client.messages.create(model="claude-sim", max_tokens=50, messages=HI)  # type: ignore[arg-type]
    err = info.value
    assert err.status_code == 401
    assert err.body["error"] == {"type": "authentication_error", "message": "invalid x-api-key"}
    assert err.body["type"] == "error" and err.body["request_id"].startswith("req_")
    # The SDK sends the key as a bearer token; x-api-key, the header of the API reference
    # (and of the gateway's Anthropic dialect), is read first.
    for headers in ({"x-api-key": INVALID}, {"x-api-key": INVALID, "Authorization": "Bearer sk-ant-good"}):
        status, _, raw = post(base, "/v1/messages", {"model": "c", "max_tokens": 5, "messages": HI}, headers)
        assert status == 401
        assert anthropic_provider.read_fault(status, json.loads(raw)).error_type == "authentication"
    good = anthropic.Anthropic(base_url=base, api_key="sk-ant-sim-good", max_retries=0)
    assert good.messages.create(model="claude-sim", max_tokens=50, messages=HI).content  # type: ignore[arg-type]


def test_gemini_refuses_an_invalid_key_in_the_header_or_the_query_like_google(base: str) -> None:
    sdk = genai.Client(api_key=INVALID, http_options=types.HttpOptions(base_url=base + "/"))
    with pytest.raises(errors.ClientError) as info:
        sdk.models.generate_content(model="sim-gem", contents="hello")
    err = info.value
    # Google answers a bad key with 400 INVALID_ARGUMENT; the ErrorInfo reason says which.
    assert err.code == 400 and err.status == "INVALID_ARGUMENT"
    assert err.message == "API key not valid. Please pass a valid API key."
    assert any(d.get("reason") == "API_KEY_INVALID" for d in err.details["error"]["details"])
    for path in ("/v1beta/models/g:generateContent?key=" + INVALID,
                 "/v1beta/models/g:streamGenerateContent?alt=sse&key=" + INVALID):
        status, _, raw = post(base, path, GEMINI_BODY)
        assert status == 400 and json.loads(raw)["error"]["details"][0]["reason"] == "API_KEY_INVALID", path
        # The gateway's Gemini dialect tells it apart from a bad request.
        assert gemini_provider.read_fault(status, json.loads(raw)).error_type == "authentication"
    good = genai.Client(api_key="AIza-sim-good", http_options=types.HttpOptions(base_url=base + "/"))
    assert good.models.generate_content(model="sim-gem", contents="hello").text


def test_a_refused_key_starts_nothing(base: str) -> None:
    reset(base)
    body = {"model": "m", "messages": HI, "stream": True}
    assert post(base, "/v1/chat/completions", body, {"Authorization": f"Bearer {INVALID}"})[0] == 401
    counters = stats(base)
    assert counters["requests"] == 1 and counters["streams_started"] == 0 and counters["active_requests"] == 0


def test_requests_are_counted_per_key_and_reset_with_the_stats(base: str) -> None:
    a, b, c, d = "sk-openai-AAAA", "sk-ant-BBBB", "AIza-CCCC", "AIza-DDDD"
    assert keys(base)[0] == {}
    chat = {"model": "m", "messages": HI}
    post(base, "/v1/chat/completions", chat, {"Authorization": f"Bearer {a}"})
    post(base, "/v1/completions", {"model": "m", "prompt": "hi"}, {"Authorization": f"Bearer {a}"})
    post(base, "/v1/embeddings", {"model": "m", "input": "hi"}, {"Authorization": f"Bearer {a}"})
    post(base, "/_sim/ttft_ms=1/v1/chat/completions", chat, {"Authorization": f"Bearer {a}"})
    for _ in range(2):
        post(base, "/v1/messages", {"model": "c", "max_tokens": 5, "messages": HI}, {"x-api-key": b})
    post(base, "/v1beta/models/g:generateContent", GEMINI_BODY, {"x-goog-api-key": c})
    post(base, "/v1/models/g:generateContent?key=" + c, GEMINI_BODY)
    post(base, "/v1beta/models/g:generateContent?key=" + d, GEMINI_BODY, {"x-goog-api-key": c})  # header wins
    post(base, "/v1/chat/completions", chat, {"Authorization": f"Bearer {INVALID}"})  # refused, still counted
    post(base, "/v1/chat/completions", chat)                                          # no key: not counted
    post(base, "/v1/chat/completions", chat, {"Authorization": f"Basic {a}"})         # not a bearer key
    post(base, "/v1/messages", {"model": "c", "max_tokens": 5, "messages": HI}, {"Authorization": f"Bearer {b}"})
    counts, raw = keys(base)
    assert counts == {fingerprint(a): 4, fingerprint(b): 3, fingerprint(c): 3, fingerprint(INVALID): 1}
    for key in (a, b, c, INVALID):
        assert key.encode() not in raw     # the sim never echoes a key
    assert stats(base)["requests"] == 13

    reset(base)
    assert keys(base)[0] == {}
    post(base, "/v1/messages", {"model": "c", "max_tokens": 5, "messages": HI}, {"x-api-key": b})
    assert keys(base)[0] == {fingerprint(b): 1}
