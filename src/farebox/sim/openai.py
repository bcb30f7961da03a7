"""OpenAI Chat Completions dialect of the simulated upstream.

Bodies and SSE chunks mirror https://platform.openai.com/docs/api-reference/chat
closely enough that the official SDK parses them; the behaviour controls (see
controls.py) then bend that faithful baseline into the failure a test wants.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from farebox.sim.controls import ControlError, Controls, resolve, status_error
from farebox.sim.text import Generation, generate

if TYPE_CHECKING:  # server.py imports this module at runtime
    from farebox.sim.server import Stats

_HANG_POLL_S = 1.0
_YIELD_EVERY = 256  # unpaced streams yield to the loop this often so one can't starve others


def _headers() -> dict[str, str]:
    return {"x-request-id": "req_" + secrets.token_hex(12)}


def json_response(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    headers = {**_headers(), **(headers or {})}
    return web.Response(
        body=orjson.dumps(obj), status=status, content_type="application/json", headers=headers
    )


def bad_request(message: str, param: str | None = None, code: str | None = None) -> web.Response:
    err = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return json_response(err, 400)


_NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
    "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)
_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}


def _invalid(param: str, expected: str, value: Any) -> tuple[str, str, str]:
    got = _TYPE_NAMES.get(type(value), "a number")
    return f"Invalid type for '{param}': expected {expected}, but got {got} instead.", param, "invalid_type"


def _problem(body: Any) -> tuple[str, str | None, str | None] | None:
    """(message, param, code) of the 400 OpenAI would give, or None if acceptable."""
    if not isinstance(body, dict):
        return _invalid("body", "an object", body)
    if body.get("model") is None:
        return "you must provide a model parameter", None, None
    if not isinstance(body["model"], str):
        return _invalid("model", "a string", body["model"])
    messages = body.get("messages")
    if messages is None:
        return "Missing required parameter: 'messages'.", "messages", "missing_required_parameter"
    if not isinstance(messages, list):
        return _invalid("messages", "an array of objects", messages)
    if not messages:
        msg = "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead."
        return msg, "messages", "empty_array"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return _invalid(f"messages[{i}]", "an object", message)
        if not isinstance(message.get("role"), str):
            msg = f"Missing required parameter: 'messages[{i}].role'."
            return msg, f"messages[{i}].role", "missing_required_parameter"
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        return _invalid("stream", "a boolean", body["stream"])
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            return _invalid(name, "an integer", value)
        if value is not None and value < 1:
            msg = f"Invalid '{name}': integer below minimum value. Expected a value >= 1, but got {value} instead."
            return msg, name, "integer_below_min_value"
    if body.get("n") not in (None, 1):
        return "farebox sim supports only n=1.", "n", "unsupported_value"  # deliberate simplification
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return _invalid("stream_options", "an object", options)
    if options is not None and body.get("stream") is not True:
        msg = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        return msg, "stream_options", None
    return None


@dataclass(slots=True)
class Plan:
    """One answer: the generated tokens plus its wire identity."""

    id: str
    created: int
    model: str
    gen: Generation
    include_usage: bool  # streaming: "usage": null on every chunk + a final usage chunk


def _plan(body: dict[str, Any], ctl: Controls) -> Plan:
    cap = body.get("max_completion_tokens")
    if cap is None:
        cap = body.get("max_tokens")
    gen = generate(body["model"], body["messages"], cap, ctl)
    options = body.get("stream_options") or {}
    return Plan(
        id="chatcmpl-" + secrets.token_hex(12),
        created=int(time.time()),
        model=body["model"],
        gen=gen,
        include_usage=gen.usage is not None and options.get("include_usage") is True,
    )


def _completion_body(plan: Plan) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": "".join(plan.gen.content), "refusal": None}
    if plan.gen.reasoning:
        message["reasoning"] = "".join(plan.gen.reasoning)  # OpenRouter-style field
    body: dict[str, Any] = {
        "id": plan.id,
        "object": "chat.completion",
        "created": plan.created,
        "model": plan.model,
        "system_fingerprint": "fp_sim",
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": plan.gen.finish_reason}
        ],
    }
    if plan.gen.usage is not None:
        body["usage"] = plan.gen.usage
    return body


class _Chunker:
    """Encodes SSE chunks; the constant envelope is serialised once per stream."""

    def __init__(self, plan: Plan) -> None:
        self._base = {
            "id": plan.id,
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model,
            "system_fingerprint": "fp_sim",
        }
        self._head = b"data: " + orjson.dumps(self._base)[:-1] + b',"choices":[{"index":0,"delta":'
        self._tail = (b',"usage":null' if plan.include_usage else b"") + b"}\n\n"

    def delta(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        end = b',"logprobs":null,"finish_reason":' + orjson.dumps(finish) + b"}]"
        return self._head + orjson.dumps(delta) + end + self._tail

    def usage(self, usage: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({**self._base, "choices": [], "usage": usage}) + b"\n\n"


_GARBAGE_SSE = (
    b'data: {"id": "chatcmpl-garbage", "choices": [\n\n',
    b"data: <html>upstream exploded</html>\n\n",
)
_GARBAGE_BODY = b'<html><body><h1>502 Bad Gateway</h1>{"choices": [</body></html>'


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


async def _stream(request: web.Request, plan: Plan, ctl: Controls) -> tuple[web.StreamResponse, str]:
    sse = {"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
    resp = web.StreamResponse(headers={**_headers(), **sse})
    try:
        await resp.prepare(request)
        if ctl.garbage:
            for line in _GARBAGE_SSE:
                await resp.write(line)
            await resp.write(b"data: [DONE]\n\n")
            return resp, "completed"
        chunker = _Chunker(plan)
        await resp.write(chunker.delta({"role": "assistant", "content": ""}))
        interval = 1.0 / ctl.tokens_per_s if ctl.tokens_per_s else 0.0
        sent = 0
        for field, tokens in (("reasoning", plan.gen.reasoning), ("content", plan.gen.content)):
            for token in tokens:
                if ctl.cut_after is not None and sent >= ctl.cut_after:
                    return _cut(request, resp)
                if interval and sent:
                    await asyncio.sleep(interval)  # one timer per chunk, no extra task
                elif sent % _YIELD_EVERY == _YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                await resp.write(chunker.delta({field: token}))
                sent += 1
        if ctl.cut_after is not None:
            return _cut(request, resp)  # asked to cut: never finish, even if all tokens fit
        await resp.write(chunker.delta({}, plan.gen.finish_reason))
        if plan.include_usage and plan.gen.usage is not None:
            await resp.write(chunker.usage(plan.gen.usage))
        await resp.write(b"data: [DONE]\n\n")
        return resp, "completed"
    except ConnectionError:  # aiohttp's ClientConnectionResetError: the client went away
        return resp, "disconnected"


async def _complete(request: web.Request, plan: Plan, ctl: Controls) -> tuple[web.StreamResponse, str]:
    if ctl.tokens_per_s:
        await asyncio.sleep((len(plan.gen.reasoning) + len(plan.gen.content)) / ctl.tokens_per_s)
    if _gone(request):
        return web.Response(status=499), "disconnected"
    if ctl.garbage:
        return web.Response(
            body=_GARBAGE_BODY, content_type="application/json", headers=_headers()
        ), "completed"
    body = orjson.dumps(_completion_body(plan))
    if ctl.cut_after is None:
        return web.Response(body=body, content_type="application/json", headers=_headers()), "completed"
    resp = web.StreamResponse(headers=_headers())
    resp.content_type = "application/json"
    resp.content_length = len(body)  # promise the full body, deliver half
    try:
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
    except ConnectionError:
        return resp, "disconnected"
    return _cut(request, resp)


async def _until_disconnected(request: web.Request) -> None:
    # The runner from server.start() cancels the handler the moment the client
    # leaves; this slow poll only matters when another runner hosts the app.
    while not _gone(request):
        await asyncio.sleep(_HANG_POLL_S)


def chat_handler(stats: Stats) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The POST /v1/chat/completions handler, counting into `stats`."""

    async def chat_completions(request: web.Request) -> web.StreamResponse:
        stats.requests += 1
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return bad_request(_NOT_JSON)
        problem = _problem(body)
        if problem is not None:
            return bad_request(*problem)
        try:
            ctl = resolve(request.match_info.get("controls"), body)
        except ControlError as exc:
            return bad_request(str(exc), f"sim.{exc.name}", "invalid_sim_control")
        plan = _plan(body, ctl)
        streaming = body.get("stream") is True and ctl.status is None
        stats.begin(streaming)
        outcome = "disconnected"  # what a cancellation (client gone) leaves behind
        try:
            if ctl.hang:
                await _until_disconnected(request)
                return web.Response(status=499)
            if ctl.ttft_ms:
                await asyncio.sleep(ctl.ttft_ms / 1000)
            if ctl.status is not None:
                outcome = "disconnected" if _gone(request) else "completed"
                status, err, headers = status_error(ctl)
                return json_response(err, status, headers)
            resp, outcome = await (_stream if streaming else _complete)(request, plan, ctl)
            return resp
        finally:
            stats.end(streaming, outcome)

    return chat_completions
