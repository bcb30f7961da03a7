"""OpenAI dialect of the simulated upstream: Chat Completions, plus the wire pieces the
legacy completions and embeddings endpoints share with it (errors, usage, controls).

Bodies and SSE chunks mirror https://platform.openai.com/docs/api-reference/chat
closely enough that the official SDK parses them; the behaviour controls (see
controls.py) then bend that faithful baseline into the failure a test wants.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from farebox.sim.controls import ControlError, Controls, resolve, retry_after_headers, stop_point
from farebox.sim.flow import SSE_HEADERS, YIELD_EVERY, Refusal, bearer_token, end_early
from farebox.sim.model import Ask, Generation, Usage, generate
from farebox.sim.text import count_prompt_tokens, message_text, seed_for
from farebox.sim.tools import ToolSpec


def headers() -> dict[str, str]:
    return {"x-request-id": "req_" + secrets.token_hex(12)}


def json_response(obj: Any, status: int = 200, extra: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(obj), status=status, content_type="application/json", headers={**headers(), **(extra or {})}
    )


def error_response(
    status: int, message: str, type_: str, param: str | None = None, code: str | None = None,
    extra: dict[str, str] | None = None,
) -> web.Response:
    return json_response({"error": {"message": message, "type": type_, "param": param, "code": code}}, status, extra)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> web.Response:
    return error_response(400, message, "invalid_request_error", param, code)


_NOT_JSON = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
    "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)
_TYPE_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}

Problem = tuple[str, str | None, str | None]  # (message, param, code) of a 400


def invalid(param: str, expected: str, value: Any) -> Problem:
    got = _TYPE_NAMES.get(type(value), "a number")
    return f"Invalid type for '{param}': expected {expected}, but got {got} instead.", param, "invalid_type"


def missing(param: str) -> Problem:
    return f"Missing required parameter: '{param}'.", param, "missing_required_parameter"


def below_min(param: str, value: int, minimum: int) -> Problem:
    msg = f"Invalid '{param}': integer below minimum value. Expected a value >= {minimum}, but got {value} instead."
    return msg, param, "integer_below_min_value"


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def model_problem(body: Any) -> Problem | None:
    """Every OpenAI endpoint's first checks: a JSON object naming a model."""
    if not isinstance(body, dict):
        return invalid("body", "an object", body)
    if body.get("model") is None:
        return "you must provide a model parameter", None, None
    if not isinstance(body["model"], str):
        return invalid("model", "a string", body["model"])
    return None


def stream_problem(body: dict[str, Any]) -> Problem | None:
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        return invalid("stream", "a boolean", body["stream"])
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        return invalid("stream_options", "an object", options)
    if options is not None and body.get("stream") is not True:
        msg = "The 'stream_options' parameter is only allowed when 'stream' is enabled."
        return msg, "stream_options", None
    return None


def stop_problem(body: dict[str, Any]) -> Problem | None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        return None
    return invalid("stop", "a string or an array of strings", stop)


def stop_sequences(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    return (stop,) if isinstance(stop, str) else tuple(stop or ())


def read_body(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise Refusal(bad_request(_NOT_JSON)) from None


def controls(request: web.Request, body: dict[str, Any], texts: Iterable[str]) -> Controls:
    try:
        return resolve(request.match_info.get("controls"), body.get("sim"), texts)
    except ControlError as exc:
        raise Refusal(bad_request(str(exc), f"sim.{exc.name}", "invalid_sim_control")) from None


# What the `status` control answers with: OpenAI's error `type` (which SDKs map
# to exception classes together with the status) and `code` for that status.
_STATUS_KINDS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Simulated bad request."),
    401: ("authentication_error", "invalid_api_key", "Incorrect API key provided (simulated)."),
    403: ("permission_error", None, "You are not allowed to access this resource (simulated)."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist (simulated)."),
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached (simulated). Try again later."),
    503: ("server_error", None, "The server is overloaded or not ready yet (simulated)."),
}


class OpenAIErrors:
    """The key and the error answers every OpenAI endpoint shares. `prompt_param` names
    the request field that holds the prompt, for the context-length error."""

    prompt_param = "messages"

    def api_key(self, request: web.Request) -> str | None:
        """OpenAI carries the key as `Authorization: Bearer <key>`."""
        return bearer_token(request)

    def key_error(self, key: str) -> web.Response:
        """OpenAI's answer to an unknown key: a 401 naming the key masked, code invalid_api_key."""
        masked = key[:8] + "*" * (len(key) - 12) + key[-4:] if len(key) > 12 else "*" * len(key)
        message = (f"Incorrect API key provided: {masked}. You can find your API key at "
                   "https://platform.openai.com/account/api-keys.")
        return error_response(401, message, "invalid_request_error", None, "invalid_api_key")

    def status_error(self, status: int, retry_after: int | None) -> web.Response:
        if status < 500:
            default = ("invalid_request_error", None, f"Simulated client error {status}.")
        else:
            default = ("server_error", None, "The server had an error while processing your request (simulated).")
        type_, code, message = _STATUS_KINDS.get(status, default)
        return error_response(status, message, type_, None, code, retry_after_headers(status, retry_after))

    def context_error(self, prompt_tokens: int, limit: int) -> web.Response:
        what = self.prompt_param
        message = (
            f"This model's maximum context length is {limit} tokens. However, your {what} resulted in "
            f"{prompt_tokens} tokens. Please reduce the length of the {what}."
        )
        return bad_request(message, what, "context_length_exceeded")


def usage_body(usage: Usage) -> dict[str, Any]:
    """OpenAI's usage object. cache_write_tokens is OpenRouter's field, only present when
    there were writes (as OpenRouter reports it only for explicit-cache models)."""
    prompt_details: dict[str, int] = {"cached_tokens": usage.cached, "audio_tokens": 0}
    if usage.cache_write:
        prompt_details["cache_write_tokens"] = usage.cache_write
    return {
        "prompt_tokens": usage.prompt,
        "completion_tokens": usage.completion,
        "total_tokens": usage.prompt + usage.completion,
        "prompt_tokens_details": prompt_details,
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


# --- chat completions ------------------------------------------------------------------


def _problem(body: Any) -> Problem | None:
    """(message, param, code) of the 400 OpenAI would give, or None if acceptable."""
    problem = model_problem(body)
    if problem is not None:
        return problem
    messages = body.get("messages")
    if messages is None:
        return missing("messages")
    if not isinstance(messages, list):
        return invalid("messages", "an array of objects", messages)
    if not messages:
        msg = "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead."
        return msg, "messages", "empty_array"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return invalid(f"messages[{i}]", "an object", message)
        if not isinstance(message.get("role"), str):
            return missing(f"messages[{i}].role")
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is not None and not is_int(value):
            return invalid(name, "an integer", value)
        if value is not None and value < 1:
            return below_min(name, value, 1)
    if body.get("n") not in (None, 1):
        return "farebox sim supports only n=1.", "n", "unsupported_value"  # deliberate simplification
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        return invalid("tools", "an array", body["tools"])
    return stream_problem(body) or stop_problem(body)


def _tools(body: dict[str, Any]) -> tuple[ToolSpec, ...]:
    specs = []
    for tool in body.get("tools") or ():
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            specs.append(ToolSpec(function["name"], function.get("parameters")))
    return tuple(specs)


def _forced_tool(choice: Any) -> str | None:
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    return name if isinstance(name, str) else None


def chat_ask(body: dict[str, Any]) -> Ask:
    """What a (validated) Chat Completions request asks of the simulated model."""
    messages = body["messages"]
    cap = body.get("max_completion_tokens")
    return Ask(
        seed=seed_for(body["model"], messages),
        prompt_tokens=count_prompt_tokens(messages),
        cap=body.get("max_tokens") if cap is None else cap,
        tools=_tools(body),
        forced_tool=_forced_tool(body.get("tool_choice")),
        tools_allowed=body.get("tool_choice") != "none",
        awaiting_answer=messages[-1].get("role") == "user",
        stop=stop_sequences(body),
    )


@dataclass(slots=True)
class ChatAnswer:
    """One Chat Completions answer: the generated tokens plus its wire identity."""

    ctl: Controls
    streaming: bool
    headers: dict[str, str]
    id: str
    created: int
    model: str
    gen: Generation
    usage: dict[str, Any] | None  # OpenAI's usage object; None with the `usage=false` control
    include_usage: bool  # streaming: "usage": null on every chunk + a final usage chunk
    call_id: str

    @property
    def prompt_tokens(self) -> int:
        return self.gen.prompt_tokens

    @property
    def output_tokens(self) -> int:
        return self.gen.output_tokens

    def body(self) -> bytes:
        gen = self.gen
        text = "".join(gen.content)
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if gen.reasoning:
            message["reasoning"] = "".join(gen.reasoning)  # OpenRouter-style field
        if gen.tool_call is not None:
            message["content"] = text or None  # as OpenAI answers a bare tool call
            function = {"name": gen.tool_call.name, "arguments": gen.tool_call.json}
            message["tool_calls"] = [{"id": self.call_id, "type": "function", "function": function}]
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": "fp_sim",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": gen.finish}],
        }
        if self.usage is not None:
            body["usage"] = self.usage
        return orjson.dumps(body)

    def sections(self) -> list[tuple[str, dict[str, Any] | None, list[Any]]]:
        """The stream after its role chunk, as (delta field, a delta opening the section or
        None, the section's tokens): each token is sent as `{field: token}`."""
        gen = self.gen
        sections: list[tuple[str, dict[str, Any] | None, list[Any]]] = [
            ("reasoning", None, gen.reasoning),
            ("content", None, gen.content),
        ]
        if gen.tool_call is not None:
            # id, type and name come first with empty arguments, then the argument pieces.
            function = {"name": gen.tool_call.name, "arguments": ""}
            opening = {"tool_calls": [{"index": 0, "id": self.call_id, "type": "function", "function": function}]}
            pieces = [[{"index": 0, "function": {"arguments": piece}}] for piece in gen.tool_call.pieces]
            sections.append(("tool_calls", opening, pieces))
        return sections

    async def stream(self, request: web.Request) -> tuple[web.StreamResponse, str]:
        return await _stream(request, self)


class _Chunker:
    """Encodes SSE chunks; the constant envelope is serialised once per stream."""

    def __init__(self, answer: ChatAnswer) -> None:
        self._base = {
            "id": answer.id,
            "object": "chat.completion.chunk",
            "created": answer.created,
            "model": answer.model,
            "system_fingerprint": "fp_sim",
        }
        self._head = b"data: " + orjson.dumps(self._base)[:-1] + b',"choices":[{"index":0,"delta":'
        self._tail = (b',"usage":null' if answer.include_usage else b"") + b"}\n\n"

    def delta(self, delta: dict[str, Any], finish: str | None = None) -> bytes:
        end = b',"logprobs":null,"finish_reason":' + orjson.dumps(finish) + b"}]"
        return self._head + orjson.dumps(delta) + end + self._tail

    def usage(self, usage: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({**self._base, "choices": [], "usage": usage}) + b"\n\n"


_GARBAGE_SSE = (
    b'data: {"id": "chatcmpl-garbage", "choices": [\n\n',
    b"data: <html>upstream exploded</html>\n\n",
)
# What OpenAI sends when a stream fails after it started: an error object in a data line.
STREAM_FAILURE = b"data: " + orjson.dumps(
    {"error": {"message": "The server had an error while processing your request (simulated).",
               "type": "server_error", "param": None, "code": None}}
) + b"\n\n"


async def _stream(request: web.Request, answer: ChatAnswer) -> tuple[web.StreamResponse, str]:
    # The hot path of the benchmarks: its own loop, with a pre-serialised chunk envelope,
    # rather than flow.stream_frames.
    ctl = answer.ctl
    resp = web.StreamResponse(headers={**answer.headers, **SSE_HEADERS})
    try:
        await resp.prepare(request)
        if ctl.garbage:
            for line in _GARBAGE_SSE:
                await resp.write(line)
            await resp.write(b"data: [DONE]\n\n")
            return resp, "completed"
        chunker = _Chunker(answer)
        await resp.write(chunker.delta({"role": "assistant", "content": ""}))
        interval = 1.0 / ctl.tokens_per_s if ctl.tokens_per_s else 0.0
        limit, fails = stop_point(ctl)
        sent = 0
        for field, opening, tokens in answer.sections():
            if opening is not None:
                await resp.write(chunker.delta(opening))
            for token in tokens:
                if limit is not None and sent >= limit:
                    return await end_early(request, resp, fails, STREAM_FAILURE)
                if interval and sent:
                    await asyncio.sleep(interval)  # one timer per chunk, no extra task
                elif sent % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)
                await resp.write(chunker.delta({field: token}))
                sent += 1
        if limit is not None:
            return await end_early(request, resp, fails, STREAM_FAILURE)  # never finish, even if all fit
        await resp.write(chunker.delta({}, answer.gen.finish))
        if answer.include_usage and answer.usage is not None:
            await resp.write(chunker.usage(answer.usage))
        await resp.write(b"data: [DONE]\n\n")
        return resp, "completed"
    except ConnectionError:  # aiohttp's ClientConnectionResetError: the client went away
        return resp, "disconnected"


class ChatDialect(OpenAIErrors):
    """POST /v1/chat/completions."""

    def answer(self, request: web.Request, raw: bytes) -> ChatAnswer:
        body = read_body(raw)
        problem = _problem(body)
        if problem is not None:
            raise Refusal(bad_request(*problem))
        ctl = controls(request, body, (message_text(m)[0] for m in body["messages"]))
        gen = generate(chat_ask(body), ctl)
        options = body.get("stream_options") or {}
        usage = usage_body(gen.usage) if gen.usage is not None else None
        return ChatAnswer(
            ctl=ctl,
            streaming=body.get("stream") is True,
            headers=headers(),
            id="chatcmpl-" + secrets.token_hex(12),
            created=int(time.time()),
            model=body["model"],
            gen=gen,
            usage=usage,
            include_usage=usage is not None and options.get("include_usage") is True,
            call_id="call_" + secrets.token_hex(12),
        )
