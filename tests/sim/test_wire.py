"""The simulator speaks faithful OpenAI Chat Completions: checked over real HTTP
with the official SDK and with raw HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import openai
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farebox.sim.text import count_prompt_tokens
from tests.simthread import running_sim

HI = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    """A real sim server on a free port, served from a background thread's loop."""
    with running_sim() as url:
        yield url


def client(base: str, prefix: str = "") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}{prefix}/v1", api_key="x", max_retries=0)


def post(base: str, body: bytes | dict, path: str = "/v1/chat/completions") -> tuple[int, dict, bytes]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def sse_events(raw: bytes) -> list[str]:
    assert raw.endswith(b"\n\n")
    events = raw.decode().split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events)
    return [e[len("data: ") :] for e in events]


def test_sdk_parses_non_streaming_body(base: str) -> None:
    r = client(base).chat.completions.create(model="sim-small", messages=HI)
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == "sim-small"
    assert r.system_fingerprint == "fp_sim"
    choice = r.choices[0]
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant" and choice.message.refusal is None
    n_words = len(choice.message.content.split(" "))
    assert 16 <= n_words <= 64
    u = r.usage
    assert u is not None and u.completion_tokens == n_words
    assert u.prompt_tokens == 3 + 4 + 2  # "hello" is 5 bytes -> ceil(5/4) = 2
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens == 0
    assert u.completion_tokens_details.reasoning_tokens == 0


def test_raw_non_streaming_body_has_exact_shape(base: str) -> None:
    status, headers, raw = post(base, {"model": "m", "messages": HI, "sim": {"output_tokens": 2}})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    body = json.loads(raw)
    assert set(body) == {"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}
    assert set(body["choices"][0]) == {"index", "message", "logprobs", "finish_reason"}
    assert set(body["choices"][0]["message"]) == {"role", "content", "refusal"}
    assert body["usage"]["completion_tokens_details"] == {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    }
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}


def test_sdk_parses_stream_and_it_matches_non_stream(base: str) -> None:
    c = client(base)
    chunks = list(c.chat.completions.create(model="sim-large", messages=HI, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].choices[0].delta.content is None
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    assert all(ch.usage is None for ch in chunks)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert len(chunks) == 2 + len(text.split(" "))  # role chunk + one per token + finish chunk
    whole = c.chat.completions.create(model="sim-large", messages=HI)
    assert whole.choices[0].message.content == text


def test_raw_stream_without_include_usage_has_no_usage_key(base: str) -> None:
    status, headers, raw = post(base, {"model": "m", "messages": HI, "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        chunk = json.loads(event)
        assert "usage" not in chunk
        assert set(chunk["choices"][0]) == {"index", "delta", "logprobs", "finish_reason"}
    assert json.loads(events[-2])["choices"][0]["delta"] == {}


def test_include_usage_adds_final_usage_chunk(base: str) -> None:
    body = {"model": "m", "messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    events = sse_events(post(base, body)[2])
    chunks = [json.loads(e) for e in events[:-1]]
    assert all("usage" in ch for ch in chunks)
    assert all(ch["usage"] is None for ch in chunks[:-1])
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == len(chunks) - 3
    # the SDK sees the same
    sdk = list(
        client(base).chat.completions.create(
            model="m", messages=HI, stream=True, stream_options={"include_usage": True}
        )
    )
    assert sdk[-1].choices == [] and sdk[-1].usage is not None
    assert sdk[-1].usage.completion_tokens == last["usage"]["completion_tokens"]


def test_same_request_gives_same_text_and_different_requests_differ(base: str) -> None:
    c = client(base)
    a = c.chat.completions.create(model="sim-small", messages=HI).choices[0].message.content
    b = c.chat.completions.create(model="sim-small", messages=HI).choices[0].message.content
    other = c.chat.completions.create(model="sim-large", messages=HI).choices[0].message.content
    assert a == b
    assert a != other


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_max_tokens_cuts_with_finish_reason_length(base: str, field: str) -> None:
    c = client(base)
    full = c.chat.completions.create(model="m", messages=HI).choices[0].message.content
    r = c.chat.completions.create(model="m", messages=HI, **{field: 5})
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 5
    assert full.startswith(r.choices[0].message.content)
    chunks = list(c.chat.completions.create(model="m", messages=HI, stream=True, **{field: 5}))
    assert chunks[-1].choices[0].finish_reason == "length"
    assert len(chunks) == 2 + 5


def test_max_completion_tokens_wins_over_max_tokens(base: str) -> None:
    r = client(base).chat.completions.create(model="m", messages=HI, max_tokens=3, max_completion_tokens=4)
    assert r.usage is not None and r.usage.completion_tokens == 4


def test_cap_above_output_keeps_finish_stop(base: str) -> None:
    r = client(base).chat.completions.create(model="m", messages=HI, max_tokens=1000)
    assert r.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": HI}, None),
        ({"model": 3, "messages": HI}, "model"),
        ({"model": "m"}, "messages"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": "m", "messages": ["hi"]}, "messages[0]"),
        ({"model": "m", "messages": [{"content": "hi"}]}, "messages[0].role"),
        ({"model": "m", "messages": HI, "n": 2}, "n"),
        ({"model": "m", "messages": HI, "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "messages": HI, "stream": "yes"}, "stream"),
        ({"model": "m", "messages": HI, "stream_options": {"include_usage": True}}, "stream_options"),
        (["not", "an", "object"], "body"),
    ],
)
def test_invalid_requests_get_openai_400(base: str, body: object, param: str | None) -> None:
    status, _, raw = post(base, json.dumps(body).encode())
    assert status == 400
    err = json.loads(raw)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["param"] == param


def test_non_json_body_is_400(base: str) -> None:
    status, _, raw = post(base, b"{this is not json")
    assert status == 400
    assert json.loads(raw)["error"]["type"] == "invalid_request_error"


def test_sdk_maps_validation_error_to_bad_request(base: str) -> None:
    with pytest.raises(openai.BadRequestError):
        client(base).chat.completions.create(model="m", messages=[])


def test_any_auth_header_or_none_is_accepted(base: str) -> None:
    req = urllib.request.Request(
        base + "/v1/chat/completions", data=json.dumps({"model": "m", "messages": HI}).encode()
    )
    with urllib.request.urlopen(req, timeout=10) as resp:  # no Authorization header at all
        assert resp.status == 200


def test_models_list_and_retrieve(base: str) -> None:
    c = client(base)
    ids = [m.id for m in c.models.list()]
    assert {"sim-small", "sim-large"} <= set(ids)
    assert c.models.retrieve("anything-at-all").owned_by == "farebox-sim"
    assert "sim-small" in [m.id for m in client(base, "/_sim/status=503").models.list()]


def test_prompt_tokens_formula_for_text_parts_and_images(base: str) -> None:
    messages = [
        {"role": "system", "content": "héllo wörld"},  # 13 UTF-8 bytes -> 4
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "abcd"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "text", "text": "efgh"},  # 8 text bytes in total -> 2
            ],
        },
        {"role": "assistant", "content": None, "tool_calls": []},
    ]
    r = client(base).chat.completions.create(model="m", messages=messages)
    assert r.usage is not None
    assert r.usage.prompt_tokens == 3 + (4 + 4) + (4 + 2 + 85) + 4


def _bound(messages: list[dict]) -> int:
    nbytes = images = 0
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            nbytes += len(content.encode())
        elif isinstance(content, list):
            for part in content:
                if part.get("type") == "text":
                    nbytes += len(part["text"].encode())
                elif part.get("type") == "image_url":
                    images += 1
    return nbytes + 16 * len(messages) + 64 + 6000 * images


_part = st.one_of(
    st.builds(lambda t: {"type": "text", "text": t}, st.text(max_size=40)),
    st.just({"type": "image_url", "image_url": {"url": "http://x/y.png"}}),
)
_message = st.builds(
    lambda role, content: {"role": role, "content": content},
    st.sampled_from(["system", "user", "assistant", "tool", "developer"]),
    st.one_of(st.none(), st.text(max_size=200), st.lists(_part, max_size=5)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_message, min_size=1, max_size=8))
def test_prompt_tokens_never_exceed_gateway_bound(messages: list[dict]) -> None:
    assert count_prompt_tokens(messages) <= _bound(messages)


def test_prompt_tokens_bound_holds_over_http(base: str) -> None:
    cases = [
        [{"role": "user", "content": ""}],
        [{"role": "user", "content": "x"}] * 50,
        [{"role": "user", "content": "日本語のテキスト" * 30}],
        [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}] * 3}],
    ]
    for messages in cases:
        r = client(base).chat.completions.create(model="m", messages=messages)
        assert r.usage is not None and r.usage.prompt_tokens <= _bound(messages)


def test_run_prints_listening_line_and_stops_on_sigterm() -> None:
    code = "from farebox.sim.server import run; run(port=0)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=os.environ)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("farebox sim listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1]
        status, _, raw = post(url, {"model": "m", "messages": HI})
        assert status == 200 and json.loads(raw)["object"] == "chat.completion"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_fail_rate_fails_about_that_share_of_requests(base):
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    always = [post(f"{base}/_sim/fail_rate=1", body)[0] for _ in range(5)]
    never = [post(f"{base}/_sim/fail_rate=0", body)[0] for _ in range(5)]
    assert always == [503] * 5 and never == [200] * 5
    assert {post(f"{base}/_sim/fail_rate=1,status=429", body)[0] for _ in range(3)} == {429}
    half = [post(f"{base}/_sim/fail_rate=0.5", body)[0] for _ in range(200)]
    # Binomial(200, 0.5): outside 60..140 has a probability below 1e-8.
    assert 60 <= half.count(503) <= 140 and half.count(503) + half.count(200) == 200
