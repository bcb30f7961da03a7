"""Streams are forwarded chunk by chunk as they arrive (issue 7, item 3), proven in lockstep:
an upstream in this test sends chunk k+1 only once the test's client, reading through a real
gateway with the official SDK, holds chunk k. A gateway that buffered anything would leave
the upstream waiting; each wait has a generous liveness bound (WAIT_S) whose failure names
the chunk the gateway held back. The upstream speaks OpenAI's and Anthropic's SSE formats
faithfully (chunked HTTP/1.1, the same events and fields as the real APIs), and the streams
must still arrive whole, in order, and be billed exactly from the usage they carry."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from farebox.api.cycle import FLUSH
from tests.e2e.procs import Gateway, http

TOKENS = ("Once", " upon", " a", " time", ".")
PROMPT_TOKENS = 12
WAIT_S = 10.0  # liveness bound of each wait: only a gateway holding a chunk back ever reaches it
# $1 and $2 per million tokens: a stream costs 12 x 0.000001 + 5 x 0.000002 = $0.000022.
COST = PROMPT_TOKENS * Decimal("0.000001") + len(TOKENS) * Decimal("0.000002")
MESSAGES = [{"role": "user", "content": "Tell me a story"}]

CATALOG = """
[providers.lockstep]
name = "Lockstep (OpenAI)"
dialect = "openai"
base_url = "{url}/v1"
api_key = "none"
trains_on_prompts = false
retains_prompts = false

[providers.lockstep-anthropic]
name = "Lockstep (Anthropic)"
dialect = "anthropic"
base_url = "{url}"
api_key = "none"
trains_on_prompts = false
retains_prompts = false

[[models]]
id = "lockstep/chat"
name = "Lockstep: chat"
context_length = 128000

[[models.endpoints]]
provider = "lockstep"
model = "gpt-lockstep"
max_completion_tokens = 4096
pricing = {{ prompt = "0.000001", completion = "0.000002" }}

[[models]]
id = "lockstep/claude"
name = "Lockstep: claude"
context_length = 200000

[[models.endpoints]]
provider = "lockstep-anthropic"
model = "claude-lockstep"
max_completion_tokens = 4096
pricing = {{ prompt = "0.000001", completion = "0.000002" }}
"""


class Lockstep:
    """What the client has received, as one Event per content chunk (and one for the
    finish), and what the upstream saw: the request bodies and every chunk held back."""

    def __init__(self) -> None:
        self.received = [threading.Event() for _ in TOKENS]
        self.finish_received = threading.Event()
        self.held_back: list[str] = []
        self.bodies: list[dict[str, Any]] = []

    def got(self, index: int) -> None:
        """The client holds content chunk `index`."""
        if index < len(self.received):
            self.received[index].set()

    def wait(self, event: threading.Event, what: str, before: str) -> None:
        if self.held_back:
            return  # already failed: finish the stream quickly, the test reports the first hold-up
        if not event.wait(WAIT_S):
            self.held_back.append(f"the gateway held {what} back: the client did not receive it within "
                                  f"{WAIT_S:.0f} s of the upstream sending it (the upstream waited to send {before})")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # each chunk leaves at once, as a provider's would
    timeout = 60  # a kept-alive connection the gateway no longer uses ends its thread
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:  # http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        lock = self.server.lockstep
        lock.bodies.append(body)
        if self.path == "/v1/chat/completions":
            self._start(request_id="x-request-id")
            self._openai(lock, body)
        elif self.path == "/v1/messages":
            self._start(request_id="request-id")
            self._anthropic(lock)
        else:
            self.send_error(404)
            return
        self.wfile.write(b"0\r\n\r\n")  # the last chunk: the response is complete, the connection kept

    def _start(self, request_id: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header(request_id, "req_lockstep")
        self.end_headers()

    def _send(self, *events: bytes) -> None:
        data = b"".join(events)
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    # -- OpenAI: https://platform.openai.com/docs/api-reference/chat-streaming ----------------
    def _openai(self, lock: Lockstep, body: dict[str, Any]) -> None:
        include_usage = (body.get("stream_options") or {}).get("include_usage") is True
        base = {"id": "chatcmpl-lockstep", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": "gpt-lockstep", "system_fingerprint": "fp_lockstep"}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            data = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            if include_usage:
                data["usage"] = None  # as OpenAI sends it on every chunk but the last
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        # The role announcement goes with the first token: the gateway holds chunks back until
        # the first one with content (so it can still fail over), by design.
        self._send(chunk({"role": "assistant", "content": "", "refusal": None}), chunk({"content": TOKENS[0]}))
        for k in range(1, len(TOKENS)):
            lock.wait(lock.received[k - 1], f"content chunk {k - 1} ({TOKENS[k - 1]!r})", f"chunk {k}")
            self._send(chunk({"content": TOKENS[k]}))
        lock.wait(lock.received[-1], f"the last content chunk ({TOKENS[-1]!r})", "the finish chunk")
        self._send(chunk({}, "stop"))
        lock.wait(lock.finish_received, "the finish chunk", "the usage chunk and [DONE]")
        if include_usage:
            usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": len(TOKENS),
                     "total_tokens": PROMPT_TOKENS + len(TOKENS),
                     "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                     "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                   "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
            self._send(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        self._send(b"data: [DONE]\n\n")

    # -- Anthropic: https://docs.anthropic.com/en/api/messages-streaming ----------------------
    def _anthropic(self, lock: Lockstep) -> None:
        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        def delta(text: str) -> bytes:
            return event("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                 "delta": {"type": "text_delta", "text": text}})

        start = {"id": "msg_lockstep", "type": "message", "role": "assistant", "model": "claude-lockstep",
                 "content": [], "stop_reason": None, "stop_sequence": None,
                 "usage": {"input_tokens": PROMPT_TOKENS, "cache_creation_input_tokens": 0,
                           "cache_read_input_tokens": 0, "output_tokens": 1}}
        self._send(event("message_start", {"type": "message_start", "message": start}),
                   event("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "text", "text": ""}}),
                   event("ping", {"type": "ping"}), delta(TOKENS[0]))
        for k in range(1, len(TOKENS)):
            lock.wait(lock.received[k - 1], f"text delta {k - 1} ({TOKENS[k - 1]!r})", f"delta {k}")
            self._send(delta(TOKENS[k]))
        lock.wait(lock.received[-1], f"the last text delta ({TOKENS[-1]!r})", "message_delta")
        self._send(event("content_block_stop", {"type": "content_block_stop", "index": 0}),
                   event("message_delta", {"type": "message_delta",
                                           "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                           "usage": {"output_tokens": len(TOKENS)}}),
                   event("message_stop", {"type": "message_stop"}))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    lockstep: Lockstep


@pytest.fixture
def lockstep(make_gateway: Callable[..., Gateway], tmp_path: Path, org_name: str
             ) -> Iterator[tuple[Gateway, str, str, Lockstep]]:
    """(gateway, organization, API key, lockstep): a gateway whose models lockstep/chat and
    lockstep/claude are served by a lockstep upstream; the organization has $5.00."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.lockstep = Lockstep()
    thread = threading.Thread(target=server.serve_forever, name="lockstep-upstream", daemon=True)
    thread.start()
    try:
        catalog = tmp_path / "lockstep.toml"
        catalog.write_text(CATALOG.format(url=f"http://127.0.0.1:{server.server_address[1]}"))
        gw = make_gateway(catalog_path=str(catalog))
        gw.org(org_name, "5.00")
        key, _ = gw.key(org_name)
        yield gw, org_name, key, server.lockstep
    finally:
        server.shutdown()
        server.server_close()


def generation(gw: Gateway, key: str, gen_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        status, data, _ = http("GET", f"{gw.api}/generation?id={gen_id}", key=key)
        if status == 200:
            return data["data"]
        time.sleep(0.05)
    raise AssertionError(f"generation {gen_id} was never recorded")


def assert_billed(gw: Gateway, org: str, key: str, gen_id: str, finish: str) -> None:
    record = generation(gw, key, gen_id)
    assert record["streamed"] is True and record["cancelled"] is False and record["finish_reason"] == finish
    assert record["tokens_prompt"] == PROMPT_TOKENS and record["tokens_completion"] == len(TOKENS)
    assert record["usage_estimated"] is False  # billed from the upstream's own usage
    assert record["total_cost"] == COST and record["usage"] == COST
    assert gw.balance(org) == Decimal("5.00") - COST


def test_openai_chunks_are_forwarded_one_at_a_time_as_they_arrive(lockstep):
    gw, org, key, lock = lockstep
    client = openai.OpenAI(base_url=gw.api, api_key=key, max_retries=0, timeout=120)
    pieces: list[str] = []
    chunks = []
    for chunk in client.chat.completions.create(model="lockstep/chat", messages=MESSAGES, stream=True):
        chunks.append(chunk)
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
                lock.got(len(pieces) - 1)
            if choice.finish_reason:
                lock.finish_received.set()
    assert lock.held_back == [], lock.held_back[0]
    assert pieces == list(TOKENS)  # each chunk whole, once, in order
    [upstream_request] = lock.bodies
    assert upstream_request["stream"] is True
    final = chunks[-1]  # the gateway's own last chunk: the usage, with the cost committed
    assert final.choices == [] and final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (PROMPT_TOKENS, len(TOKENS))
    assert Decimal(str(final.usage.model_extra["cost"])) == COST
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    assert {c.id for c in chunks} == {final.id}
    assert_billed(gw, org, key, final.id, "stop")


def test_anthropic_events_are_forwarded_one_at_a_time_as_they_arrive(lockstep):
    gw, org, key, lock = lockstep
    # The SDK appends /v1/messages to its base URL: the gateway's /api/v1/messages.
    client = anthropic.Anthropic(base_url=gw.api.removesuffix("/v1"), api_key=key, max_retries=0, timeout=120)
    pieces: list[str] = []
    with client.messages.stream(model="lockstep/claude", max_tokens=100, messages=MESSAGES) as stream:
        for event in stream:
            if event.type == "content_block_delta" and event.delta.type == "text_delta":
                pieces.append(event.delta.text)
                lock.got(len(pieces) - 1)
        final = stream.get_final_message()
    assert lock.held_back == [], lock.held_back[0]
    assert pieces == list(TOKENS)
    [upstream_request] = lock.bodies
    assert upstream_request["stream"] is True and upstream_request["model"] == "claude-lockstep"
    assert final.content[0].text == "".join(TOKENS) and final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (PROMPT_TOKENS, len(TOKENS))
    assert_billed(gw, org, key, final.id, "stop")


# -- the first token leaves at once ---------------------------------------------------------
# Chunks that arrive together leave together, at the end of the loop's pass (one send, not
# one each). The first token is the exception: the relay flushes it (`farebox.flush`) so it
# does not wait for the rest of its read to be relayed, nor for the settlement when the
# stream ends in the same read. Seen here in the ASGI messages the gateway hands its server.

def asgi_spy(path: str, sent: list[dict[str, Any]]) -> Callable[[Any], Any]:
    def wrap(app: Any) -> Any:
        async def spied(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http" or scope["path"] != path:
                await app(scope, receive, send)
                return

            async def recording(message: dict[str, Any]) -> None:
                sent.append(message)
                await send(message)
            await app(scope, receive, recording)
        return spied
    return wrap


def split_at_flush(sent: list[dict[str, Any]]) -> tuple[bytes, bytes]:
    """The response body written before the one flush, and after it."""
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    flushes = [i for i, m in enumerate(bodies) if m.get(FLUSH)]
    assert len(flushes) == 1, f"expected one flush, got {len(flushes)}"
    assert bodies[-1]["more_body"] is False
    return (b"".join(m["body"] for m in bodies[:flushes[0] + 1]),
            b"".join(m["body"] for m in bodies[flushes[0] + 1:]))


def sse_data(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(event[len(b"data: "):]) for event in raw.split(b"\n\n")
            if event.startswith(b"data: ") and event != b"data: [DONE]"]


def test_an_openai_stream_flushes_its_first_token_and_nothing_after_it(make_fake_clock_gateway):
    sent: list[dict[str, Any]] = []
    gw = make_fake_clock_gateway(wrap=asgi_spy("/api/v1/chat/completions", sent))
    gw.org("flush", "5.00")
    key, _ = gw.key("flush")
    client = openai.OpenAI(base_url=gw.api, api_key=key, max_retries=0, timeout=60)
    chunks = list(client.chat.completions.create(model="sim/small", messages=MESSAGES, max_tokens=12, stream=True))
    before, after = split_at_flush(sent)
    first, rest = sse_data(before), sse_data(after)
    content = [bool(c["choices"] and c["choices"][0]["delta"].get("content")) for c in first + rest]
    assert content[:len(first)] == [False] * (len(first) - 1) + [True]  # up to and including the first token
    assert sum(content[len(first):]) >= 2, "the sim's stream should have more tokens after the first"
    assert rest[-1]["choices"] == [] and rest[-1]["usage"]["cost"] > 0 and after.endswith(b"data: [DONE]\n\n")
    # What the SDK read is exactly what was sent, flush or no flush.
    assert [c.id for c in chunks] == [c["id"] for c in first + rest]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "".join(c["choices"][0]["delta"].get("content") or "" for c in first + rest if c["choices"])


def test_an_anthropic_stream_flushes_its_first_text_delta(make_fake_clock_gateway):
    sent: list[dict[str, Any]] = []
    gw = make_fake_clock_gateway(wrap=asgi_spy("/api/v1/messages", sent))
    gw.org("flush", "5.00")
    key, _ = gw.key("flush")
    client = anthropic.Anthropic(base_url=gw.api.removesuffix("/v1"), api_key=key, max_retries=0, timeout=60)
    with client.messages.stream(model="sim/small", max_tokens=12, messages=MESSAGES) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    before, after = split_at_flush(sent)
    kinds = [line.split(b": ", 1)[1] for line in before.split(b"\n") if line.startswith(b"event: ")]
    assert kinds[0] == b"message_start" and kinds[-1] == b"content_block_delta"
    assert kinds.count(b"content_block_delta") == 1
    assert after.count(b"event: content_block_delta") >= 2 and b"event: message_stop" in after
    assert final.content[0].text == text and final.usage.output_tokens > 0
