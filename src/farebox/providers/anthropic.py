"""The Anthropic Messages dialect: `POST {base_url}/v1/messages`.

The neutral request is OpenAI-shaped, so everything is translated at this edge: the
request into a Messages request (pure `to_anthropic`, in anthropic_request.py), a Message back into a
chat.completion (pure `from_anthropic`), and each streamed event into OpenAI chunks as it
arrives (`StreamTranslator`). Unlike the OpenAI dialect nothing unknown passes through:
Anthropic answers 400 to any field it does not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from farebox.clock import Clock
from farebox.errors import ProviderError
from farebox.ledger.pricing import Usage
from farebox.providers.anthropic_request import REASONING_FORMAT, to_anthropic
from farebox.providers.base import Call, Reply, count, is_count
from farebox.providers.faults import Fault, by_status, provider_error
from farebox.providers.http import TranslatedStream, Upstreams, invalid_response, read_json, read_line

ANTHROPIC_VERSION = "2023-06-01"
# Anthropic's stop_reason -> OpenRouter's normalized finish_reason; anything else is "stop".
FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    # The reply filled the model's context window: cut short, like max_tokens.
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}


def finish_reason(stop_reason: str) -> str:
    return FINISH_REASONS.get(stop_reason, "stop")


# -- reply -------------------------------------------------------------------------


def usage_from_anthropic(raw: Any) -> Usage | None:
    """Anthropic's usage in OpenAI's convention: its input_tokens exclude cache reads and
    writes, our prompt_tokens include them. None when absent or malformed."""
    if not isinstance(raw, dict):
        return None
    fresh, output = raw.get("input_tokens"), raw.get("output_tokens")
    if not is_count(fresh) or not is_count(output):
        return None
    read, written = count(raw.get("cache_read_input_tokens")), count(raw.get("cache_creation_input_tokens"))
    details = raw.get("output_tokens_details")
    # Only a count Anthropic reports: thinking tokens are otherwise inside output_tokens, unsplit.
    thinking = min(count(details.get("thinking_tokens")), output) if isinstance(details, dict) else 0
    return Usage(prompt_tokens=fresh + read + written, completion_tokens=output, cached_tokens=read,
                 cache_write_tokens=written, reasoning_tokens=thinking)


def from_anthropic(data: dict[str, Any], created: int = 0) -> tuple[dict[str, Any], Usage | None, str | None]:
    """(chat.completion body without usage, Usage, upstream id) for an Anthropic Message.
    Raises ValueError when `data` is not one. `created` is 0 unless given: the relay stamps
    its own on every reply."""
    if not isinstance(data, dict) or data.get("type") != "message":
        raise ValueError("not an Anthropic Message")
    content, message_id = data.get("content"), data.get("id")
    if not isinstance(content, list) or not isinstance(message_id, str):
        raise ValueError("a Message needs an id and a content list")
    texts: list[str] = []
    thoughts: list[str] = []
    details: list[dict[str, Any]] = []
    tool_calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif kind == "tool_use" and isinstance(block.get("id"), str) and isinstance(block.get("name"), str):
            if not isinstance(block.get("input"), dict):
                raise ValueError("a tool_use block needs an input object")
            tool_calls.append({"id": block["id"], "type": "function",
                               "function": {"name": block["name"], "arguments": orjson.dumps(block["input"]).decode()}})
        elif kind == "thinking" and isinstance(block.get("thinking"), str):
            thoughts.append(block["thinking"])
            details.append({"type": "reasoning.text", "text": block["thinking"], "signature": block.get("signature"),
                            "format": REASONING_FORMAT, "index": len(details)})
        elif kind == "redacted_thinking" and isinstance(block.get("data"), str):
            details.append({"type": "reasoning.encrypted", "data": block["data"], "format": REASONING_FORMAT,
                            "index": len(details)})
        elif kind in ("text", "tool_use", "thinking", "redacted_thinking") or not isinstance(kind, str):
            raise ValueError(f"malformed content block: {block!r}"[:200])
        # Other blocks (server tools' calls and results) answer tools we never send.
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None,
                               "reasoning": "".join(thoughts) if thoughts else None, "reasoning_details": details}
    if tool_calls:
        message["tool_calls"] = tool_calls
    stop_reason = data.get("stop_reason")
    stop_reason = stop_reason if isinstance(stop_reason, str) else None
    body = {"id": message_id, "object": "chat.completion", "created": created, "model": data.get("model"),
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": finish_reason(stop_reason) if stop_reason else None,
                         "native_finish_reason": stop_reason}]}
    return body, usage_from_anthropic(data.get("usage")), message_id



# -- stream ------------------------------------------------------------------------


@dataclass(slots=True)
class _Block:
    """A content block being streamed: its kind and its place among the reply's tool calls
    (tool_use) or reasoning_details (thinking, redacted_thinking)."""

    kind: str
    position: int = 0
    has_arguments: bool = False


class StreamTranslator:
    """Anthropic stream events in, OpenAI chat.completion.chunk dicts out, one event at a
    time and without holding text back. Malformed events raise ValueError; `error` events
    raise ProviderError."""

    def __init__(self, provider_name: str, created: int) -> None:
        self.provider_name = provider_name
        self.created = created
        self.upstream_id: str | None = None
        self.model: str | None = None
        # Published once message_delta reports the output count: message_start's is a
        # placeholder, and a stream cut before the end is better estimated by the relay.
        self.usage: Usage | None = None
        self.done = False
        self._usage_counts: dict[str, Any] = {}
        self._blocks: dict[int, _Block] = {}
        self._tool_calls = 0
        self._reasoning_details = 0

    def feed(self, event: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        if event == "error":
            raise provider_error(self.provider_name, read_fault(STREAM_ERROR_STATUS, data), data)
        if self.done:
            return []
        if event == "message_start":
            return self._message_start(data)
        if self.upstream_id is None and event in _AFTER_START:
            raise ValueError(f"{event} before message_start")
        if event == "content_block_start":
            return self._block_start(_index(data), _object(data, "content_block"))
        if event == "content_block_delta":
            return self._block_delta(_index(data), _object(data, "delta"))
        if event == "content_block_stop":
            block = self._blocks.get(_index(data))
            if block is not None and block.kind == "tool_use" and not block.has_arguments:
                return [self._chunk({"tool_calls": [{"index": block.position, "function": {"arguments": "{}"}}]})]
            return []
        if event == "message_delta":
            return self._message_delta(data)
        if event == "message_stop":
            self.done = True
        # ping, and event types newer than this code: Anthropic may add them at any time.
        return []

    def _message_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        message = _object(data, "message")
        if not isinstance(message.get("id"), str):
            raise ValueError("message_start without a message id")
        self.upstream_id = message["id"]
        self.model = message.get("model") if isinstance(message.get("model"), str) else None
        usage = message.get("usage")
        self._usage_counts = dict(usage) if isinstance(usage, dict) else {}
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, index: int, block: dict[str, Any]) -> list[dict[str, Any]]:
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = _Block("text")
            text = block.get("text")
            return [self._chunk({"content": text})] if isinstance(text, str) and text else []
        if kind == "tool_use":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise ValueError("tool_use block without an id and a name")
            state = self._blocks[index] = _Block("tool_use", self._tool_calls)
            self._tool_calls += 1
            given = block.get("input")  # {} when the arguments follow as input_json_delta
            arguments = orjson.dumps(given).decode() if isinstance(given, dict) and given else ""
            state.has_arguments = bool(arguments)
            return [self._chunk({"tool_calls": [{"index": state.position, "id": block["id"], "type": "function",
                                                 "function": {"name": block["name"], "arguments": arguments}}]})]
        if kind in ("thinking", "redacted_thinking"):
            state = self._blocks[index] = _Block(kind, self._reasoning_details)
            self._reasoning_details += 1
            if kind == "redacted_thinking":
                return [self._chunk({"reasoning_details": [{"type": "reasoning.encrypted", "data": block.get("data"),
                                                            "format": REASONING_FORMAT, "index": state.position}]})]
            chunks = self._thinking(state, block.get("thinking"))
            if block.get("signature"):
                chunks += self._signature(state, block["signature"])
            return chunks
        self._blocks[index] = _Block("other")  # server tools' blocks: nothing for an OpenAI client
        return []

    def _block_delta(self, index: int, delta: dict[str, Any]) -> list[dict[str, Any]]:
        block = self._blocks.get(index)
        if block is None:
            raise ValueError(f"content_block_delta for block {index}, which never started")
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return [self._chunk({"content": text})] if isinstance(text, str) and text else []
        if kind == "input_json_delta" and block.kind == "tool_use":
            if not delta.get("partial_json"):
                return []
            block.has_arguments = True
            return [self._chunk({"tool_calls": [{"index": block.position,
                                                 "function": {"arguments": delta["partial_json"]}}]})]
        if kind == "thinking_delta" and block.kind == "thinking":
            return self._thinking(block, delta.get("thinking"))
        if kind == "signature_delta" and block.kind == "thinking":
            return self._signature(block, delta.get("signature"))
        if kind in ("input_json_delta", "thinking_delta", "signature_delta"):
            raise ValueError(f"{kind} for a {block.kind} block")
        return []  # citations and delta types newer than this code

    def _thinking(self, block: _Block, text: Any) -> list[dict[str, Any]]:
        if not isinstance(text, str) or not text:
            return []
        return [self._chunk({"reasoning": text, "reasoning_details": [
            {"type": "reasoning.text", "text": text, "format": REASONING_FORMAT, "index": block.position}]})]

    def _signature(self, block: _Block, signature: Any) -> list[dict[str, Any]]:
        if not isinstance(signature, str) or not signature:
            return []
        return [self._chunk({"reasoning_details": [
            {"type": "reasoning.text", "signature": signature, "format": REASONING_FORMAT, "index": block.position}]})]

    def _message_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        usage = data.get("usage")
        if isinstance(usage, dict):
            # output_tokens is cumulative; newer API versions repeat the input and cache
            # counts here too (null when they have nothing to add).
            self._usage_counts.update({k: v for k, v in usage.items() if v is not None})
            self.usage = usage_from_anthropic(self._usage_counts)
        delta = data.get("delta")
        stop_reason = delta.get("stop_reason") if isinstance(delta, dict) else None
        if not isinstance(stop_reason, str):
            return []
        return [self._chunk({}, finish_reason(stop_reason), stop_reason)]

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, native: str | None = None) -> dict[str, Any]:
        return {"id": self.upstream_id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "native_finish_reason": native}]}


# An error event names no HTTP status: one whose type we do not know counts as a server error.
STREAM_ERROR_STATUS = 500
_AFTER_START = frozenset({"content_block_start", "content_block_delta", "content_block_stop", "message_delta"})


def _index(data: dict[str, Any]) -> int:
    index = data.get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        raise ValueError("content block event without an index")
    return index


def _object(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"event without its {key} object")
    return value


# -- errors ------------------------------------------------------------------------

# Anthropic's error types (docs: "Errors") as OpenRouter error types.
ERROR_TYPES = {
    "invalid_request_error": "invalid_request",
    "authentication_error": "authentication",
    "billing_error": "payment_required",
    "permission_error": "permission_denied",
    "not_found_error": "not_found",
    "request_too_large": "payload_too_large",
    "rate_limit_error": "rate_limit_exceeded",
    "api_error": "provider_unavailable",
    "overloaded_error": "provider_overloaded",
    "timeout_error": "timeout",
}


def read_fault(status: int, raw: Any) -> Fault:
    """Read Anthropic's `{"type": "error", "error": {"type", "message"}, "request_id"}`."""
    error = raw.get("error") if isinstance(raw, dict) else None
    error = error if isinstance(error, dict) else {}
    kind, message = error.get("type"), error.get("message")
    kind = kind if isinstance(kind, str) else None
    message = message if isinstance(message, str) else (raw if isinstance(raw, str) and raw else None)
    error_type = ERROR_TYPES.get(kind or "") or by_status(status)
    if error_type == "invalid_request" and message and _too_long(message):
        error_type = "context_length_exceeded"
    return Fault(error_type, kind, message)


def _too_long(message: str) -> bool:
    # "prompt is too long: 208310 tokens > 200000 maximum"; "input length and `max_tokens`
    # exceed context limit: 198000 + 8192 > 200000, ..."
    text = message.lower()
    return "prompt is too long" in text or "exceed context limit" in text


# -- transport ---------------------------------------------------------------------


class AnthropicDialect:
    def __init__(self, upstreams: Upstreams, clock: Clock | None = None) -> None:
        self.upstreams = upstreams
        self.clock = clock or Clock()

    def request(self, call: Call, stream: bool) -> tuple[str, bytes, dict[str, str]]:
        provider, endpoint = call.endpoint.provider, call.endpoint
        body = to_anthropic(call.body, endpoint.upstream_model, endpoint.max_completion_tokens, call.user_tag, stream)
        headers = {"content-type": "application/json",
                   "anthropic-version": provider.options.get("anthropic_version", ANTHROPIC_VERSION)}
        if call.credential:
            headers["x-api-key"] = call.credential
        beta = provider.options.get("anthropic_beta")
        if beta:
            headers["anthropic-beta"] = ",".join(beta)
        return f"{provider.base_url.rstrip('/')}/v1/messages", orjson.dumps(body), headers

    async def complete(self, call: Call) -> Reply:
        provider = call.endpoint.provider
        url, body, headers = self.request(call, stream=False)
        # A whole answer is its first byte: the attempt's budget bounds all of it.
        response = await self.upstreams.post(provider, url, body, headers, read_fault, timeout_s=call.budget_s)
        data = await read_json(provider, response)
        try:
            reply, usage, upstream_id = from_anthropic(data, int(self.clock.now()))
        except ValueError:
            raise invalid_response(provider, orjson.dumps(data)) from None
        return Reply(body=reply, usage=usage, upstream_id=upstream_id)

    async def open_stream(self, call: Call) -> AnthropicStream:
        provider = call.endpoint.provider
        url, body, headers = self.request(call, stream=True)
        response = await self.upstreams.post(provider, url, body, headers, read_fault, first_byte_s=call.first_byte_s)
        return AnthropicStream(provider, response, StreamTranslator(provider.name, int(self.clock.now())))


class AnthropicStream(TranslatedStream):
    """Server-sent events from /v1/messages, translated into OpenAI chunks."""

    translator: StreamTranslator

    async def next(self) -> dict[str, Any] | None:
        while not self._pending and not self.translator.done:
            event, data = await self._read_event()
            try:
                self._pending.extend(self.translator.feed(event, data))
            except ValueError:
                self.close()
                raise invalid_response(self.provider, orjson.dumps(data)) from None
            except ProviderError:
                self.close()
                raise
            if self.translator.done:
                self._finished()
        return self._pending.popleft() if self._pending else None

    async def _read_event(self) -> tuple[str, dict[str, Any]]:
        """The next complete event: its name (from `event:`, else the data's `type`) and data."""
        name: str | None = None
        data: list[bytes] = []
        while True:
            line = self.response.buffered_line() or await read_line(self.provider, self.response)
            if not line:
                # An event not ended by a blank line is incomplete (SSE) and dropped with the stream.
                self.close()
                raise ProviderError(f"{self.provider.name} closed the stream before it finished",
                                    provider_name=self.provider.name, raw="stream ended without message_stop")
            line = line.rstrip(b"\r\n")
            if not line:
                if data:
                    break
                name = None  # an event without data is no event
                continue
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"event":
                name = value.decode("utf-8", "replace")
            elif field == b"data":
                data.append(value)
            # comments (":" lines), id: and retry: mean nothing here
        payload = b"\n".join(data)
        try:
            parsed = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.close()
            raise invalid_response(self.provider, payload) from None
        if not isinstance(parsed, dict):
            self.close()
            raise invalid_response(self.provider, payload)
        kind = parsed.get("type")
        return name or (kind if isinstance(kind, str) else ""), parsed
