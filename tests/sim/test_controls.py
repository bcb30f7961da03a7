"""Behaviour controls, observed over real HTTP (SDK, urllib and aiohttp clients)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.client import IncompleteRead

import aiohttp
import openai
import pytest
from aiohttp import web

from farebox.sim.controls import ControlError, from_prefix, from_texts, resolve
from farebox.sim.server import create_app
from tests.simthread import running_sim

HI = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    """The sim as `farebox sim` runs it: server.start() on a free port."""
    with running_sim() as url:
        yield url


@pytest.fixture(scope="module")
def plain_base() -> Iterator[str]:
    """create_app() under a plain AppRunner (no handler cancellation), as another host might run it."""

    async def plain() -> tuple[web.AppRunner, int]:
        runner = web.AppRunner(create_app(), shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner, runner.addresses[0][1]

    with running_sim(plain) as url:
        yield url


def client(base: str, prefix: str = "", **kw: object) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}{prefix}/v1", api_key="x", max_retries=0, **kw)  # type: ignore[arg-type]


def chat(base: str, prefix: str = "", **kw: object):
    kw.setdefault("model", "m")
    kw.setdefault("messages", HI)
    return client(base, prefix).chat.completions.create(**kw)  # type: ignore[call-overload]


def post(base: str, body: dict, path: str = "/v1/chat/completions") -> tuple[int, dict, bytes]:
    req = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def stats(base: str) -> dict[str, int]:
    with urllib.request.urlopen(base + "/_sim/stats", timeout=10) as resp:
        return json.loads(resp.read())


def wait_stats(base: str, pred: Callable[[dict[str, int]], bool], timeout: float = 10.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        current = stats(base)
        if pred(current) or time.monotonic() > deadline:
            return current
        time.sleep(0.02)


def content(r) -> str:
    return r.choices[0].message.content


# --- timing ---------------------------------------------------------------


def test_ttft_delays_non_stream_body(base: str) -> None:
    t0 = time.monotonic()
    chat(base, extra_body={"sim": {"ttft_ms": 300}})
    assert time.monotonic() - t0 >= 0.25


def test_ttft_delays_first_stream_chunk(base: str) -> None:
    t0 = time.monotonic()
    stream = chat(base, "/_sim/ttft_ms=300", stream=True)
    next(iter(stream))
    assert time.monotonic() - t0 >= 0.25
    stream.close()


def test_tokens_per_s_paces_stream_and_body(base: str) -> None:
    t0 = time.monotonic()
    chunks = list(chat(base, stream=True, extra_body={"sim": {"tokens_per_s": 20, "output_tokens": 6}}))
    assert time.monotonic() - t0 >= 0.2  # 5 gaps of 50 ms between 6 token chunks
    assert len(chunks) == 2 + 6
    t0 = time.monotonic()
    chat(base, extra_body={"sim": {"tokens_per_s": 20, "output_tokens": 6}})
    assert time.monotonic() - t0 >= 0.25  # 6 tokens / 20 per second


# --- output shaping -------------------------------------------------------


def test_output_tokens_exact_and_zero(base: str) -> None:
    r = chat(base, extra_body={"sim": {"output_tokens": 7}})
    assert len(content(r).split(" ")) == 7 and r.usage.completion_tokens == 7
    r = chat(base, extra_body={"sim": {"output_tokens": 0}})
    assert content(r) == "" and r.choices[0].finish_reason == "stop" and r.usage.completion_tokens == 0
    chunks = list(chat(base, stream=True, extra_body={"sim": {"output_tokens": 0}}))
    assert len(chunks) == 2 and chunks[-1].choices[0].finish_reason == "stop"


def test_usage_false_omits_usage_even_when_requested(base: str) -> None:
    status, _, raw = post(base, {"model": "m", "messages": HI, "sim": {"usage": False}})
    assert status == 200 and "usage" not in json.loads(raw)
    body = {"model": "m", "messages": HI, "stream": True, "stream_options": {"include_usage": True}}
    _, _, raw = post(base, body, "/_sim/usage=false/v1/chat/completions")
    assert b"usage" not in raw and raw.endswith(b"data: [DONE]\n\n")
    chunks = list(chat(base, "/_sim/usage=0", stream=True, stream_options={"include_usage": True}))
    assert all(ch.usage is None and ch.choices for ch in chunks)


def test_reasoning_tokens_stream_first_and_are_counted(base: str) -> None:
    sim = {"reasoning_tokens": 4, "output_tokens": 3}
    chunks = list(chat(base, stream=True, stream_options={"include_usage": True}, extra_body={"sim": sim}))
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    reasoning = [d.model_extra.get("reasoning") for d in deltas[1:5]]
    assert all(isinstance(r, str) and r for r in reasoning)
    assert all(d.content is None for d in deltas[1:5]) and all(d.content for d in deltas[5:8])
    usage = chunks[-1].usage
    assert usage.completion_tokens == 7 and usage.completion_tokens_details.reasoning_tokens == 4
    r = chat(base, extra_body={"sim": sim})
    assert r.usage.completion_tokens == 7 and r.usage.completion_tokens_details.reasoning_tokens == 4
    assert r.choices[0].message.model_extra["reasoning"] == "".join(reasoning)


def test_max_tokens_caps_reasoning_plus_output(base: str) -> None:
    r = chat(base, max_tokens=3, extra_body={"sim": {"reasoning_tokens": 5, "output_tokens": 3}})
    assert r.usage.completion_tokens == 3 and r.usage.completion_tokens_details.reasoning_tokens == 3
    assert content(r) == "" and r.choices[0].finish_reason == "length"


def test_cached_tokens_reported_and_capped(base: str) -> None:
    r = chat(base, extra_body={"sim": {"cached_tokens": 5}})
    assert r.usage.prompt_tokens_details.cached_tokens == 5
    r = chat(base, extra_body={"sim": {"cached_tokens": 10**6}})
    assert r.usage.prompt_tokens_details.cached_tokens == r.usage.prompt_tokens


def test_prompt_tokens_override(base: str) -> None:
    r = chat(base, "/_sim/prompt_tokens=12345")
    assert r.usage.prompt_tokens == 12345 and r.usage.total_tokens == 12345 + r.usage.completion_tokens


# --- errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "exc", "etype"),
    [
        (400, openai.BadRequestError, "invalid_request_error"),
        (401, openai.AuthenticationError, "authentication_error"),
        (404, openai.NotFoundError, "invalid_request_error"),
        (429, openai.RateLimitError, "rate_limit_error"),
        (500, openai.InternalServerError, "server_error"),
        (503, openai.InternalServerError, "server_error"),
    ],
)
def test_status_maps_to_sdk_exceptions(base: str, status: int, exc: type, etype: str) -> None:
    for stream in (False, True):
        with pytest.raises(exc) as info:
            chat(base, f"/_sim/status={status}", stream=stream)
        assert info.value.status_code == status
        assert info.value.body["type"] == etype  # the SDK unwraps {"error": {...}}


def test_429_has_retry_after_and_retry_after_control(base: str) -> None:
    status, headers, raw = post(base, {"model": "m", "messages": HI, "sim": {"status": 429}})
    assert status == 429 and headers["retry-after"] == "1"
    assert json.loads(raw)["error"]["type"] == "rate_limit_error"
    status, headers, _ = post(
        base, {"model": "m", "messages": HI}, "/_sim/status=503,retry_after=7/v1/chat/completions"
    )
    assert status == 503 and headers["retry-after"] == "7"


def test_cut_after_stream_sdk_raises_and_raw_has_no_done(base: str) -> None:
    before = stats(base)
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for ch in chat(base, "/_sim/cut_after=3", stream=True):
            received.append(ch.choices[0].delta.content or "")
    assert len(received) == 1 + 3  # role chunk + 3 token chunks, then nothing

    async def raw() -> bytes:
        got = b""
        async with aiohttp.ClientSession() as s:
            body = {"model": "m", "messages": HI, "stream": True, "sim": {"cut_after": 2}}
            async with s.post(base + "/v1/chat/completions", json=body) as resp:
                with pytest.raises(aiohttp.ClientPayloadError):
                    async for line in resp.content:
                        got += line
        return got

    got = asyncio.run(raw())
    assert got.count(b"data: ") == 3 and b"[DONE]" not in got and b'finish_reason":"stop' not in got
    after = wait_stats(base, lambda s: s["streams_cut"] >= before["streams_cut"] + 2)
    assert after["streams_cut"] == before["streams_cut"] + 2
    assert after["streams_completed"] == before["streams_completed"]


def test_cut_after_non_stream_truncates_body(base: str) -> None:
    req = urllib.request.Request(
        base + "/_sim/cut_after=0/v1/chat/completions",
        data=json.dumps({"model": "m", "messages": HI}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        with pytest.raises(IncompleteRead) as info:
            resp.read()
    partial = info.value.partial
    assert partial.startswith(b'{"id":"chatcmpl-') and info.value.expected > 0  # bytes still promised
    with pytest.raises(openai.APIConnectionError):
        chat(base, "/_sim/cut_after=0")


def test_garbage_non_stream_is_not_json(base: str) -> None:
    status, _, raw = post(base, {"model": "m", "messages": HI, "sim": {"garbage": True}})
    assert status == 200
    with pytest.raises(ValueError):
        json.loads(raw)


def test_garbage_stream_data_lines_are_not_json(base: str) -> None:
    status, headers, raw = post(
        base, {"model": "m", "messages": HI, "stream": True}, "/_sim/garbage=1/v1/chat/completions"
    )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [e[len("data: ") :] for e in raw.decode().split("\n\n") if e.startswith("data: ")]
    assert events and events[-1] == "[DONE]"
    for event in events[:-1]:
        with pytest.raises(ValueError):
            json.loads(event)


def test_hang_until_client_timeout_and_no_leak(base: str) -> None:
    before = stats(base)
    with pytest.raises(openai.APITimeoutError):
        client(base, timeout=0.5).chat.completions.create(
            model="m", messages=HI, extra_body={"sim": {"hang": True}}
        )
    after = wait_stats(
        base,
        lambda s: s["requests_disconnected"] > before["requests_disconnected"] and s["active_requests"] == 0,
    )
    assert after["requests_disconnected"] == before["requests_disconnected"] + 1
    assert after["active_requests"] == 0


# --- sources and precedence -----------------------------------------------


def test_prefix_then_body_then_directive_precedence(base: str) -> None:
    assert len(content(chat(base, "/_sim/output_tokens=3")).split(" ")) == 3
    r = chat(base, "/_sim/output_tokens=3", extra_body={"sim": {"output_tokens": 4}})
    assert len(content(r).split(" ")) == 4
    messages = [
        {"role": "system", "content": "be brief [[sim output_tokens=9]]"},
        {"role": "user", "content": [{"type": "text", "text": "hi [[sim output_tokens=5 cached_tokens=2]]"}]},
    ]
    r = chat(base, "/_sim/output_tokens=3", messages=messages, extra_body={"sim": {"output_tokens": 4}})
    assert len(content(r).split(" ")) == 5  # the later message's directive wins
    assert r.usage.prompt_tokens_details.cached_tokens == 2


@pytest.mark.parametrize(
    ("prefix", "sim", "text", "name"),
    [
        ("/_sim/bogus=1", None, "hi", "bogus"),
        ("/_sim/status=200", None, "hi", "status"),
        ("", {"ttft_ms": -1}, "hi", "ttft_ms"),
        ("", {"hang": "maybe"}, "hi", "hang"),
        ("", {"output_tokens": 1.5}, "hi", "output_tokens"),
        ("", None, "[[sim tokens_per_s=fast]]", "tokens_per_s"),
        ("", None, "[[sim nope=1]]", "nope"),
    ],
)
def test_bad_controls_are_400_naming_the_control(
    base: str, prefix: str, sim: dict | None, text: str, name: str
) -> None:
    body: dict = {"model": "m", "messages": [{"role": "user", "content": text}]}
    if sim is not None:
        body["sim"] = sim
    status, _, raw = post(base, body, prefix + "/v1/chat/completions")
    assert status == 400
    err = json.loads(raw)["error"]
    assert name in err["message"] and err["param"] == f"sim.{name}" and err["type"] == "invalid_request_error"


def test_control_parsing_units() -> None:
    assert from_prefix("ttft_ms=200,status=503,garbage=true,tokens_per_s=2.5") == {
        "ttft_ms": 200,
        "status": 503,
        "garbage": True,
        "tokens_per_s": 2.5,
    }
    assert from_texts(["x [[sim hang=0 usage=1]] y"]) == {
        "hang": False,
        "usage": True,
    }
    with pytest.raises(ControlError):
        from_prefix("ttft_ms")
    ctl = resolve("usage=0", {"usage": True}, ["hi"])
    assert ctl.usage is True
    assert resolve("usage=0", {"usage": True}, ["[[sim usage=0]]"]).usage is False


# --- disconnects ----------------------------------------------------------


def _disconnect_mid_stream(base: str, caplog: pytest.LogCaptureFixture) -> None:
    requests = wait_stats(base, lambda s: s["active_streams"] == 0)
    assert requests["active_streams"] == 0

    async def go() -> None:
        body = {
            "model": "m",
            "messages": HI,
            "stream": True,
            "sim": {"tokens_per_s": 20, "output_tokens": 1000},
        }
        async with aiohttp.ClientSession() as s:
            resp = await s.post(base + "/v1/chat/completions", json=body)
            for _ in range(3):
                assert (await resp.content.readuntil(b"\n\n")).startswith(b"data: ")
            resp.close()

    before = stats(base)
    with caplog.at_level(logging.DEBUG):
        asyncio.run(go())
        after = wait_stats(
            base,
            lambda s: (
                s["streams_disconnected"] == before["streams_disconnected"] + 1 and s["active_streams"] == 0
            ),
        )
    assert after["streams_disconnected"] == before["streams_disconnected"] + 1
    assert after["active_streams"] == 0
    assert after["streams_completed"] == before["streams_completed"]
    noisy = [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info]
    assert not noisy, [r.getMessage() for r in noisy]


def test_client_disconnect_mid_stream_is_counted(base: str, caplog: pytest.LogCaptureFixture) -> None:
    _disconnect_mid_stream(base, caplog)


def test_disconnect_detected_without_handler_cancellation(
    plain_base: str, caplog: pytest.LogCaptureFixture
) -> None:
    _disconnect_mid_stream(plain_base, caplog)


def test_stats_reset(base: str) -> None:
    chat(base)
    assert stats(base)["requests"] >= 1
    status, _, raw = post(base, {}, "/_sim/stats/reset")
    assert status == 200 and json.loads(raw)["requests"] == 0
    current = stats(base)
    assert current["requests"] == 0 and current["streams_started"] == 0


def test_fail_rate_is_parsed_and_bounded():
    from farebox.sim.controls import ControlError, from_prefix

    assert from_prefix("fail_rate=0.5") == {"fail_rate": 0.5}
    with pytest.raises(ControlError):
        from_prefix("fail_rate=1.5")
