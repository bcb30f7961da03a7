"""The life of one simulated API request, whatever its dialect.

A dialect reads the request into an `Answer` (or refuses it in its own error shape);
everything after that is the same for every dialect and lives here: the statistics,
then hang, ttft_ms, status, context_length and fail_after, then the answer itself,
whole (paced, garbled or cut) or streamed (paced, garbled, cut or failed).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

from aiohttp import web

from farebox.sim.controls import Controls, stop_point
from farebox.sim.stats import INVALID_KEY_PREFIX, KeyCounts, Stats

# A streamed frame: its wire bytes and the output tokens it carries. Envelope frames
# (a stream's start, block boundaries, pings) carry none; b"" with tokens is a token the
# client never sees (hidden reasoning) but that still takes time and counts toward cut_after.
Frame = tuple[bytes, int]

SSE_HEADERS = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
GARBAGE_BODY = b'<html><body><h1>502 Bad Gateway</h1>{"choices": [</body></html>'

_HANG_POLL_S = 1.0
YIELD_EVERY = 256  # unpaced streams yield to the loop this often so one can't starve others


class Refusal(Exception):
    """A request its dialect refuses before any control applies (bad JSON, bad fields,
    bad controls), with the dialect's error response."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class Answer(Protocol):
    """One accepted request, planned by its dialect."""

    ctl: Controls
    streaming: bool  # the client asked for a stream
    headers: dict[str, str]  # the dialect's response headers (request id)

    @property
    def prompt_tokens(self) -> int: ...  # as the upstream counts them, for context_length

    @property
    def output_tokens(self) -> int: ...  # what generating it takes, to pace a whole answer

    def body(self) -> bytes: ...  # the whole (non-streamed) answer, JSON

    async def stream(self, request: web.Request) -> tuple[web.StreamResponse, str]: ...


class Dialect(Protocol):
    def api_key(self, request: web.Request) -> str | None: ...  # where this provider carries the key

    def key_error(self, key: str) -> web.Response: ...  # this provider's answer to a key it does not know

    def answer(self, request: web.Request, raw: bytes) -> Answer: ...  # raises Refusal

    def status_error(self, status: int, retry_after: int | None) -> web.Response: ...

    def context_error(self, prompt_tokens: int, limit: int) -> web.Response: ...


def bearer_token(request: web.Request) -> str | None:
    """The key of an `Authorization: Bearer <key>` header, if the request has one."""
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _cut(request: web.Request, resp: web.StreamResponse) -> tuple[web.StreamResponse, str]:
    # close() flushes what was written, then FINs: the client sees a body that
    # ends early (no terminating chunk / short of Content-Length). aiohttp's
    # write_eof afterwards raises ConnectionError, which aiohttp swallows.
    if request.transport is not None:
        request.transport.close()
    return resp, "cut"


async def end_early(
    request: web.Request, resp: web.StreamResponse, fails: bool, failure: bytes
) -> tuple[web.StreamResponse, str]:
    """End a stream stopped by cut_after (drop the connection) or fail_after (send the
    dialect's in-stream error `failure`, then end the body properly: the error is the last word)."""
    if fails:
        await resp.write(failure)
        return resp, "failed"
    return _cut(request, resp)


async def _until_disconnected(request: web.Request) -> None:
    # The runner from server.start() cancels the handler the moment the client
    # leaves; this slow poll only matters when another runner hosts the app.
    while not _gone(request):
        await asyncio.sleep(_HANG_POLL_S)


_FLAKY = random.Random()


def handler(dialect: Dialect, stats: Stats, keys: KeyCounts | None = None,
            ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The POST handler of one endpoint of `dialect`, counting into `stats` and, per API
    key, into `keys`."""

    async def handle(request: web.Request) -> web.StreamResponse:
        stats.requests += 1
        key = dialect.api_key(request)
        if key is not None:
            if keys is not None:
                keys.count(key)
            if key.startswith(INVALID_KEY_PREFIX):
                # Providers check the key before they read the body. A missing key is
                # still accepted: tests and benchmarks call the sim without one.
                return dialect.key_error(key)
        try:
            answer = dialect.answer(request, await request.read())
        except Refusal as refusal:
            return refusal.response
        ctl = answer.ctl
        if ctl.fail_rate:
            # A flaky provider: this request fails with `status` (503 unless given) or is answered.
            ctl.status = (ctl.status or 503) if _FLAKY.random() < ctl.fail_rate else None
        limit = ctl.context_length
        overflow = limit is not None and answer.prompt_tokens > limit
        streaming = answer.streaming and ctl.status is None and not overflow
        stats.begin(streaming)
        outcome = "disconnected"  # what a cancellation (client gone) leaves behind
        try:
            if ctl.hang:
                await _until_disconnected(request)
                return web.Response(status=499)
            if ctl.ttft_ms:
                await asyncio.sleep(ctl.ttft_ms / 1000)
            if ctl.status is not None or overflow:
                outcome = "disconnected" if _gone(request) else "completed"
                if ctl.status is not None:
                    return dialect.status_error(ctl.status, ctl.retry_after)
                assert limit is not None
                return dialect.context_error(answer.prompt_tokens, limit)
            if streaming:
                resp, outcome = await answer.stream(request)
                return resp
            if ctl.fail_after is not None:
                # Not streamed, a failure mid-generation is a 500 once the tokens before it took their time.
                if ctl.tokens_per_s:
                    await asyncio.sleep(min(ctl.fail_after, answer.output_tokens) / ctl.tokens_per_s)
                outcome = "disconnected" if _gone(request) else "completed"
                return dialect.status_error(500, ctl.retry_after)
            resp, outcome = await _complete(request, answer)
            return resp
        finally:
            stats.end(streaming, outcome)

    return handle


async def _complete(request: web.Request, answer: Answer) -> tuple[web.StreamResponse, str]:
    ctl = answer.ctl
    if ctl.tokens_per_s:
        await asyncio.sleep(answer.output_tokens / ctl.tokens_per_s)
    if _gone(request):
        return web.Response(status=499), "disconnected"
    headers = answer.headers
    if ctl.garbage:
        return web.Response(body=GARBAGE_BODY, content_type="application/json", headers=headers), "completed"
    body = answer.body()
    if ctl.cut_after is None:
        return web.Response(body=body, content_type="application/json", headers=headers), "completed"
    resp = web.StreamResponse(headers=headers)
    resp.content_type = "application/json"
    resp.content_length = len(body)  # promise the full body, deliver half
    try:
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
    except ConnectionError:
        return resp, "disconnected"
    return _cut(request, resp)


async def stream_frames(
    request: web.Request,
    answer: Answer,
    frames: Iterable[Frame],
    closing: Iterable[bytes],
    *,
    garbage: Sequence[bytes],
    failure: bytes,
) -> tuple[web.StreamResponse, str]:
    """Stream `frames`, then `closing` (the frames that end a stream properly), applying
    tokens_per_s, garbage, cut_after and fail_after (`failure` is the dialect's in-stream
    error frame); returns the response and the Stats outcome."""
    ctl = answer.ctl
    resp = web.StreamResponse(headers={**answer.headers, **SSE_HEADERS})
    try:
        await resp.prepare(request)
        if ctl.garbage:
            for chunk in garbage:
                await resp.write(chunk)
            return resp, "completed"
        interval = 1.0 / ctl.tokens_per_s if ctl.tokens_per_s else 0.0
        limit, fails = stop_point(ctl)
        sent = 0
        for data, tokens in frames:
            if tokens:
                if limit is not None and sent + tokens > limit:
                    break
                if interval and sent:
                    await asyncio.sleep(interval * tokens)  # one timer per frame, no extra task
                elif sent % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                sent += tokens
            if data:
                await resp.write(data)
        if limit is None:
            for data in closing:
                await resp.write(data)
            return resp, "completed"
        return await end_early(request, resp, fails, failure)  # never finish, even if all tokens fit
    except ConnectionError:  # aiohttp's ClientConnectionResetError: the client went away
        return resp, "disconnected"
