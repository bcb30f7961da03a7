"""Anthropic Messages dialect of the simulated upstream: POST /v1/messages.

Bodies, SSE events and errors follow Anthropic's published Messages API
(https://docs.anthropic.com/en/api/messages, /en/docs/build-with-claude/streaming,
/en/api/errors) closely enough that the official `anthropic` SDK parses every one of
them with its own types. A stream is message_start, then per content block
content_block_start / content_block_delta... / content_block_stop (a ping after the first
start), then message_delta (stop reason, cumulative usage) and message_stop.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from farebox.sim.controls import ControlError, Controls, resolve, retry_after_headers
from farebox.sim.flow import Frame, Refusal, bearer_token, stream_frames
from farebox.sim.model import DEFAULT_THINKING, Ask, Generation, Usage, generate
from farebox.sim.text import count_units, seed_for
from farebox.sim.tools import ToolSpec

_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}

# What the `status` control answers with: Anthropic's error type for that status.
_STATUS_KINDS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "Simulated bad request."),
    401: ("authentication_error", "invalid x-api-key (simulated)"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API (simulated)."),
    403: ("permission_error", "Your API key does not have permission to use the specified resource (simulated)."),
    404: ("not_found_error", "Not found (simulated)."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes (simulated)."),
    429: ("rate_limit_error", "This request would exceed your rate limit (simulated)."),
    500: ("api_error", "Internal server error (simulated)."),
    504: ("timeout_error", "Request timeout (simulated)."),
    529: ("overloaded_error", "Overloaded (simulated)."),
}

_GARBAGE = (
    b'event: message_start\ndata: {"type": "message_start", "message": {\n\n',
    b"event: content_block_delta\ndata: <html>upstream exploded</html>\n\n",
)
_FAILURE = b"event: error\ndata: " + orjson.dumps(
    {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded (simulated)."}}
) + b"\n\n"


def error_response(status: int, type_: str, message: str, extra: dict[str, str] | None = None) -> web.Response:
    """Anthropic's error shape; its request_id is also the request-id header."""
    request_id = "req_" + secrets.token_hex(12)
    body = {"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json",
                        headers={"request-id": request_id, **(extra or {})})


def _refuse(message: str) -> Refusal:
    return Refusal(error_response(400, "invalid_request_error", message))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _problem(body: Any) -> str | None:
    """The message of the 400 Anthropic would give, or None if acceptable."""
    if not isinstance(body, dict):
        return "body: Input should be a valid dictionary"
    for name in ("model", "max_tokens", "messages"):
        if body.get(name) is None:
            return f"{name}: Field required"
    if not isinstance(body["model"], str):
        return "model: Input should be a valid string"
    if not _is_int(body["max_tokens"]):
        return "max_tokens: Input should be a valid integer"
    if body["max_tokens"] < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    messages = body["messages"]
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: at least one message is required"
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{i}: Input should be a valid dictionary"
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if message.get("content") is None:
            return f"messages.{i}.content: Field required"
        if not isinstance(message["content"], (str, list)):
            return f"messages.{i}.content: Input should be a valid list"
    if body.get("system") is not None and not isinstance(body["system"], (str, list)):
        return "system: Input should be a valid list"
    if body.get("stream") is not None and not isinstance(body["stream"], bool):
        return "stream: Input should be a valid boolean"
    stops = body.get("stop_sequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        return "stop_sequences: Input should be a valid list of strings"
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        return "tools: Input should be a valid list"
    if body.get("tool_choice") is not None and not isinstance(body["tool_choice"], dict):
        return "tool_choice: Input should be a valid dictionary"
    return _thinking_problem(body.get("thinking"), body["max_tokens"]) or _signature_problem(body)


def _signature_problem(body: dict[str, Any]) -> str | None:
    """Anthropic's rule for extended thinking with tools: the last assistant turn, when it
    called a tool, must be sent back starting with its thinking block, signature intact."""
    thinking = body.get("thinking")
    if not isinstance(thinking, dict) or thinking.get("type") != "enabled":
        return None
    turns = [(i, m) for i, m in enumerate(body["messages"]) if m.get("role") == "assistant"]
    if not turns or not isinstance(turns[-1][1]["content"], list):
        return None
    i, last = turns[-1]
    blocks = [b for b in last["content"] if isinstance(b, dict)]
    if not any(b.get("type") == "tool_use" for b in blocks):
        return None
    first = blocks[0] if blocks else {}
    if first.get("type") == "redacted_thinking":
        return None
    if first.get("type") != "thinking":
        return (f"messages.{i}.content.0.type: Expected `thinking` or `redacted_thinking`, but found "
                f"`{first.get('type')}`. When `thinking` is enabled, a final `assistant` message must start "
                "with a thinking block.")
    if first.get("signature") != signature(str(first.get("thinking", ""))):
        return f"messages.{i}.content.0: Invalid `signature` in `thinking` block"
    return None


def _thinking_problem(thinking: Any, max_tokens: int) -> str | None:
    if thinking is None:
        return None
    if not isinstance(thinking, dict) or thinking.get("type") not in ("enabled", "disabled", "adaptive"):
        return "thinking: Input tag should be 'enabled', 'disabled' or 'adaptive'"
    if thinking["type"] != "enabled":
        return None
    budget = thinking.get("budget_tokens")
    if not _is_int(budget) or budget < 1:
        return "thinking.enabled.budget_tokens: Input should be a valid positive integer"
    # Anthropic's own rule (its 1024-token minimum budget is not enforced, to keep tests small).
    if max_tokens <= budget:
        return "`max_tokens` must be greater than `thinking.budget_tokens`."
    return None


def _content_units(content: Any) -> tuple[str, int]:
    """(text, images) of message content: text blocks, and the text inside tool results;
    image and document blocks count as images."""
    if isinstance(content, str):
        return content, 0
    texts: list[str] = []
    images = 0
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind in ("image", "document"):
            images += 1
        elif kind == "tool_result":
            text, inner = _content_units(block.get("content"))
            texts.append(text)
            images += inner
    return "".join(texts), images


def units(body: dict[str, Any]) -> list[tuple[str, int]]:
    """(text, images) per message, the system prompt first when there is one."""
    system = [_content_units(body["system"])] if body.get("system") is not None else []
    return system + [_content_units(m["content"]) for m in body["messages"]]


def _tools(body: dict[str, Any]) -> tuple[ToolSpec, ...]:
    # Client tools only: server tools (web search, code execution, ...) have no input_schema.
    return tuple(
        ToolSpec(tool["name"], tool["input_schema"])
        for tool in body.get("tools") or ()
        if isinstance(tool, dict) and isinstance(tool.get("name"), str) and "input_schema" in tool
    )


def _awaiting_answer(last: dict[str, Any]) -> bool:
    content = last["content"]
    results = isinstance(content, list) and any(
        isinstance(b, dict) and b.get("type") == "tool_result" for b in content
    )
    return last["role"] == "user" and not results


def ask(body: dict[str, Any], counted: int) -> Ask:
    """What a (validated) Messages request asks of the simulated model."""
    thinking = body.get("thinking")
    wants = 0
    if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "adaptive"):
        budget = thinking.get("budget_tokens")
        wants = min(DEFAULT_THINKING, budget) if _is_int(budget) else DEFAULT_THINKING
    choice = body.get("tool_choice") or {}
    return Ask(
        seed=seed_for(body["model"], [body.get("system"), body["messages"]]),
        prompt_tokens=counted,
        cap=body["max_tokens"],
        thinking=wants,
        tools=_tools(body),
        forced_tool=choice.get("name") if choice.get("type") == "tool" else None,
        tools_allowed=choice.get("type") != "none",
        awaiting_answer=_awaiting_answer(body["messages"][-1]),
        stop=tuple(body.get("stop_sequences") or ()),
    )


def signature(thinking: str) -> str:
    """An opaque, deterministic signature of a thinking block (a stream and a whole answer agree)."""
    return base64.b64encode(hashlib.blake2b(thinking.encode("utf-8"), digest_size=48).digest()).decode()


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def _delta_head(index: int, kind: str, field: str) -> bytes:
    # The constant part of a block's content_block_delta events, serialised once per block.
    return (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":' + str(index).encode()
            + b',"delta":{"type":"' + kind.encode() + b'","' + field.encode() + b'":')


@dataclass(slots=True)
class MessageAnswer:
    ctl: Controls
    streaming: bool
    headers: dict[str, str]
    id: str
    model: str
    gen: Generation
    tool_use_id: str

    @property
    def prompt_tokens(self) -> int:
        return self.gen.prompt_tokens

    @property
    def output_tokens(self) -> int:
        return self.gen.output_tokens

    def _stop(self) -> dict[str, Any]:
        gen = self.gen
        reason = "stop_sequence" if gen.stop_sequence is not None else _STOP_REASONS[gen.finish]
        return {"stop_reason": reason, "stop_sequence": gen.stop_sequence}

    def _message(
        self, content: list[dict[str, Any]], usage: dict[str, Any] | None, stop: dict[str, Any]
    ) -> dict[str, Any]:
        message: dict[str, Any] = {"id": self.id, "type": "message", "role": "assistant", "model": self.model,
                                   "content": content, **stop}
        if usage is not None:
            message["usage"] = usage
        return message

    def _usage(self, at_start: bool = False) -> dict[str, Any] | None:
        """Anthropic's usage (None with usage=false); message_start reports one output token so far."""
        u: Usage | None = self.gen.usage
        if u is None:
            return None
        output = min(1, u.completion) if at_start else u.completion
        return {"input_tokens": u.uncached, "cache_creation_input_tokens": u.cache_write,
                "cache_read_input_tokens": u.cached, "output_tokens": output}

    def _thinking_block(self) -> dict[str, Any]:
        thinking = "".join(self.gen.reasoning)
        return {"type": "thinking", "thinking": thinking, "signature": signature(thinking)}

    def body(self) -> bytes:
        gen = self.gen
        content: list[dict[str, Any]] = []
        if gen.reasoning:
            content.append(self._thinking_block())
        if gen.content:
            content.append({"type": "text", "text": "".join(gen.content)})
        if gen.tool_call is not None:
            call = gen.tool_call
            content.append({"type": "tool_use", "id": self.tool_use_id, "name": call.name, "input": call.arguments})
        return orjson.dumps(self._message(content, self._usage(), self._stop()))

    def frames(self) -> Iterator[Frame]:
        gen = self.gen
        start = self._message([], self._usage(at_start=True), {"stop_reason": None, "stop_sequence": None})
        yield _event("message_start", {"type": "message_start", "message": start}), 0
        # (the block as content_block_start opens it, its delta type, the delta's field, the pieces)
        blocks: list[tuple[dict[str, Any], str, str, list[str]]] = []
        if gen.reasoning:
            blocks.append(({"type": "thinking", "thinking": "", "signature": ""}, "thinking_delta", "thinking",
                           gen.reasoning))
        if gen.content:
            blocks.append(({"type": "text", "text": ""}, "text_delta", "text", gen.content))
        if gen.tool_call is not None:
            call = gen.tool_call
            opening = {"type": "tool_use", "id": self.tool_use_id, "name": call.name, "input": {}}
            blocks.append((opening, "input_json_delta", "partial_json", list(call.pieces)))
        if not blocks:
            yield _event("ping", {"type": "ping"}), 0
        for index, (opening, kind, field, pieces) in enumerate(blocks):
            yield _event("content_block_start", {"type": "content_block_start", "index": index,
                                                 "content_block": opening}), 0
            if index == 0:
                yield _event("ping", {"type": "ping"}), 0  # where Anthropic's own streams ping
            head = _delta_head(index, kind, field)
            for piece in pieces:
                yield head + orjson.dumps(piece) + b"}}\n\n", 1
            if opening["type"] == "thinking":
                delta = {"type": "signature_delta", "signature": signature("".join(gen.reasoning))}
                yield _event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                     "delta": delta}), 0
            yield _event("content_block_stop", {"type": "content_block_stop", "index": index}), 0

    def closing(self) -> Iterator[bytes]:
        delta: dict[str, Any] = {"type": "message_delta", "delta": self._stop()}
        usage = self._usage()
        if usage is not None:
            delta["usage"] = usage  # cumulative, as Anthropic reports it
        yield _event("message_delta", delta)
        yield _event("message_stop", {"type": "message_stop"})

    async def stream(self, request: web.Request) -> tuple[web.StreamResponse, str]:
        return await stream_frames(request, self, self.frames(), self.closing(), garbage=_GARBAGE, failure=_FAILURE)


class MessagesDialect:
    """POST /v1/messages. x-api-key and anthropic-version are accepted, not required; a key
    starting with sk-sim-invalid is refused as Anthropic refuses an unknown key."""

    def api_key(self, request: web.Request) -> str | None:
        """Anthropic's key header is x-api-key; its newer SDKs send the key as a bearer token."""
        return request.headers.get("x-api-key") or bearer_token(request)

    def key_error(self, key: str) -> web.Response:
        return error_response(401, "authentication_error", "invalid x-api-key")

    def answer(self, request: web.Request, raw: bytes) -> MessageAnswer:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _refuse("There was an issue with the JSON body of your request: it is not valid JSON.") from None
        problem = _problem(body)
        if problem is not None:
            raise _refuse(problem)
        parts = units(body)
        try:
            ctl = resolve(request.match_info.get("controls"), body.get("sim"), (text for text, _ in parts))
        except ControlError as exc:
            raise _refuse(str(exc)) from None
        request_id = "req_" + secrets.token_hex(12)
        return MessageAnswer(
            ctl=ctl,
            streaming=body.get("stream") is True,
            headers={"request-id": request_id},
            id="msg_" + secrets.token_hex(12),
            model=body["model"],
            gen=generate(ask(body, count_units(parts)), ctl),
            tool_use_id="toolu_" + secrets.token_hex(12),
        )

    def status_error(self, status: int, retry_after: int | None) -> web.Response:
        default = ("invalid_request_error", f"Simulated client error {status}.") if status < 500 else (
            "api_error", "Internal server error (simulated).")
        type_, message = _STATUS_KINDS.get(status, default)
        return error_response(status, type_, message, retry_after_headers(status, retry_after))

    def context_error(self, prompt_tokens: int, limit: int) -> web.Response:
        message = f"prompt is too long: {prompt_tokens} tokens > {limit} maximum"
        return error_response(400, "invalid_request_error", message)
