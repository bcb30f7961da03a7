"""The OpenAI Chat Completions dialect: OpenAI itself and every server that speaks it.

The neutral request is already OpenAI-shaped, so a request needs only its model replaced,
the gateway's own fields removed and usage reporting switched on for streams. Unknown
fields pass through untouched: upstreams may support parameters we have never heard of.
"""

from __future__ import annotations

from typing import Any

import orjson

from farebox.catalog.model import Provider
from farebox.errors import ProviderError
from farebox.ledger.pricing import Usage
from farebox.providers.base import APIS, GATEWAY_FIELDS, Call, Reply, usage_from_openai
from farebox.providers.faults import Fault, by_status, provider_error
from farebox.providers.http import Upstreams, invalid_response, read_json, read_line
from farebox.providers.response import Response

_PATHS = {"chat": "/chat/completions", "completion": "/completions", "embedding": "/embeddings"}


class OpenAIDialect:
    apis = frozenset(APIS)

    def __init__(self, upstreams: Upstreams) -> None:
        self.upstreams = upstreams

    def request(self, call: Call, stream: bool) -> tuple[str, bytes, dict[str, str]]:
        provider = call.endpoint.provider
        options = provider.options
        body = {k: v for k, v in call.body.items() if k not in GATEWAY_FIELDS and k != "cache_control"}
        body["model"] = call.endpoint.upstream_model
        if "messages" in body:
            body["messages"] = _messages(body["messages"], options)
        reasoning = call.body.get("reasoning")
        if (call.api == "chat" and options.get("reasoning_effort", True) and isinstance(reasoning, dict) and "effort" in reasoning
                and "reasoning_effort" not in body):
            body["reasoning_effort"] = reasoning["effort"]
        if call.api == "chat":  # the legacy completions API only ever knew max_tokens
            _rename_max_tokens(body, options.get("max_tokens_field", "as_sent"))
        if options.get("seed_field", "seed") != "seed" and "seed" in body:
            body[options["seed_field"]] = body.pop("seed")
        if call.user_tag is not None and options.get("send_user", True):
            body["user"] = call.user_tag
        else:
            body.pop("user", None)
        if stream:
            body["stream"] = True
            if options.get("stream_usage", "stream_options") == "stream_options":
                body["stream_options"] = {"include_usage": True}
            else:
                body.pop("stream_options", None)
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        for name in options.get("drop_fields", ()):
            body.pop(name, None)
        headers = {"Content-Type": "application/json"}
        if call.credential:
            headers["Authorization"] = f"Bearer {call.credential}"
        return provider.base_url + _PATHS[call.api], orjson.dumps(body), headers

    async def complete(self, call: Call) -> Reply:
        provider = call.endpoint.provider
        url, body, headers = self.request(call, stream=False)
        # A whole answer is its first byte: the attempt's budget bounds all of it.
        response = await self.upstreams.post(provider, url, body, headers, read_fault, timeout_s=call.budget_s)
        data = await read_json(provider, response)
        if not _valid_reply(call.api, data):
            raise invalid_response(provider, orjson.dumps(data))
        if call.api == "chat":
            for choice in data["choices"]:
                _reasoning_field(choice["message"])
        upstream_id = data.get("id")
        usage = _embedding_usage(data.get("usage")) if call.api == "embedding" else usage_from_openai(data.get("usage"))
        return Reply(body=data, usage=usage, upstream_id=upstream_id if isinstance(upstream_id, str) else None)

    async def open_stream(self, call: Call) -> OpenAIStream:
        provider = call.endpoint.provider
        url, body, headers = self.request(call, stream=True)
        response = await self.upstreams.post(provider, url, body, headers, read_fault, first_byte_s=call.first_byte_s)
        return OpenAIStream(provider, response)


class OpenAIStream:
    """Server-sent events from an OpenAI-dialect upstream, one chunk at a time."""

    def __init__(self, provider: Provider, response: Response) -> None:
        self.provider = provider
        self.response = response
        self.upstream_id: str | None = None
        self.usage: Usage | None = None
        self._done = False

    async def next(self) -> dict[str, Any] | None:
        while not self._done:
            line = self.response.buffered_line() or await read_line(self.provider, self.response)
            if not line:
                self.close()
                # A stream that ends without [DONE] was cut off, unless it had finished.
                raise ProviderError(f"{self.provider.name} closed the stream before it finished",
                                    provider_name=self.provider.name, raw="stream ended without [DONE]")
            if not line.startswith(b"data:"):
                continue  # blank separators, comments, event: and id: fields
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self._done = True
                self.response.release()
                return None
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                self.close()
                raise invalid_response(self.provider, payload) from None
            if not isinstance(chunk, dict):
                self.close()
                raise invalid_response(self.provider, payload)
            error = chunk.get("error")
            if error:
                self.close()
                raise provider_error(self.provider.name, read_fault(_stream_status(error), chunk), error)
            if self.upstream_id is None and isinstance(chunk.get("id"), str):
                self.upstream_id = chunk["id"]
            if "usage" in chunk:
                usage = usage_from_openai(chunk.pop("usage"))
                if usage is not None:
                    self.usage = usage
            x_groq = chunk.get("x_groq")
            if x_groq is not None:  # Groq reports stream usage in its own envelope
                chunk.pop("x_groq")
                usage = usage_from_openai(x_groq.get("usage")) if isinstance(x_groq, dict) else None
                if usage is not None:
                    self.usage = usage
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if delta and "reasoning_content" in delta:
                    _reasoning_field(delta)
            return chunk
        return None

    def started(self) -> None:
        self.response.started()

    def close(self) -> None:
        if not self._done:
            self._done = True
            self.response.close()


def _valid_reply(api: str, data: Any) -> bool:
    if not isinstance(data, dict):
        return False
    if api == "embedding":
        items = data.get("data")
        return isinstance(items, list) and bool(items) and all(
            isinstance(d, dict) and isinstance(d.get("embedding"), list | str) for d in items)
    choices = data.get("choices")
    part, kind = ("message", dict) if api == "chat" else ("text", str)
    return isinstance(choices, list) and bool(choices) and all(
        isinstance(c, dict) and isinstance(c.get(part), kind) for c in choices)


def _embedding_usage(raw: Any) -> Usage | None:
    """Embeddings report prompt tokens only."""
    prompt = raw.get("prompt_tokens") if isinstance(raw, dict) else None
    if not isinstance(prompt, int) or isinstance(prompt, bool) or prompt < 0:
        return None
    return Usage(prompt_tokens=prompt)


_REASONING_KEYS = ("reasoning", "reasoning_content", "reasoning_details")


def _messages(messages: Any, options: dict[str, Any]) -> Any:
    """Assistant messages may carry reasoning from an earlier turn (OpenRouter's
    `reasoning`/`reasoning_details`). Most OpenAI-dialect servers reject or ignore it, so it
    is removed, or sent under the one field the server reads when it asks for it.
    Anthropic-style `cache_control` marks on content parts (Claude Code sends them on every
    request) mean nothing to this family, whose caching is automatic: they are removed."""
    if not isinstance(messages, list):
        return messages
    keep = options.get("reasoning_in_messages", False)
    field = options.get("reasoning_field", "reasoning")
    out = []
    for message in messages:
        if isinstance(message, dict):
            if any(k in message for k in _REASONING_KEYS):
                message = dict(message)
                text = message.pop("reasoning", None) or message.pop("reasoning_content", None)
                message.pop("reasoning_content", None)
                message.pop("reasoning_details", None)
                if keep and isinstance(text, str) and text:
                    message[field] = text
            content = message.get("content")
            if isinstance(content, list) and any(isinstance(p, dict) and "cache_control" in p for p in content):
                message = {**message, "content": [
                    {k: v for k, v in p.items() if k != "cache_control"} if isinstance(p, dict) else p
                    for p in content]}
        out.append(message)
    return out


def _reasoning_field(message: dict[str, Any]) -> None:
    """DeepSeek, vLLM, xAI and llama.cpp name reasoning text `reasoning_content`;
    OpenRouter's clients read `reasoning`."""
    if "reasoning_content" in message:
        text = message.pop("reasoning_content")
        if not message.get("reasoning"):
            message["reasoning"] = text


def _rename_max_tokens(body: dict[str, Any], field: str) -> None:
    if field == "as_sent":
        return
    other = "max_tokens" if field == "max_completion_tokens" else "max_completion_tokens"
    if other in body:
        value = body.pop(other)
        body.setdefault(field, value)


# OpenAI's error `code`s and `type`s, and those of the servers that copy its format
# (vLLM, DeepSeek, Groq, Mistral, llama.cpp), as OpenRouter error types.
_CODES = {
    "context_length_exceeded": "context_length_exceeded",
    "string_above_max_length": "string_too_long",
    "max_tokens_exceeded": "max_tokens_exceeded",
    "insufficient_quota": "payment_required",
    "invalid_api_key": "authentication",
    "model_not_found": "not_found",
    "rate_limit_exceeded": "rate_limit_exceeded",
    "content_policy_violation": "content_policy_violation",
    "content_filter": "content_policy_violation",
    "invalid_image_url": "image_download_failed",
    "invalid_image_format": "unsupported_image_format",
    "image_too_large": "image_too_large",
}
_TYPES = {
    "insufficient_quota": "payment_required",
    "authentication_error": "authentication",
    "permission_error": "permission_denied",
    "rate_limit_error": "rate_limit_exceeded",
    "tokens": "rate_limit_exceeded",
    "requests": "rate_limit_exceeded",
    "server_error": "provider_unavailable",
    "overloaded_error": "provider_overloaded",
}


def read_fault(status: int, raw: Any) -> Fault:
    """Read an OpenAI-shaped error body: `{"error": {message, type, param, code}}`, or the
    flat `{"object": "error", message, type, code}` of vLLM and Mistral."""
    error = raw.get("error") if isinstance(raw, dict) else None
    if not isinstance(error, dict):
        error = raw if isinstance(raw, dict) else {}
    code, kind, message = error.get("code"), error.get("type"), error.get("message")
    code = code if isinstance(code, str) else None
    message = message if isinstance(message, str) else (raw if isinstance(raw, str) and raw else None)
    error_type = _CODES.get(code or "") or _TYPES.get(kind if isinstance(kind, str) else "")
    if error_type is None or (status >= 500 and error_type not in ("provider_overloaded",)):
        error_type = by_status(status)
    if error_type == "invalid_request" and message and _too_long(message):
        error_type = "context_length_exceeded"
    return Fault(error_type, code, message)


def _too_long(message: str) -> bool:
    text = message.lower()
    return "context length" in text or "context window" in text or "maximum context" in text


def _stream_status(error: Any) -> int:
    """A mid-stream error names no HTTP status; its `code` sometimes is one."""
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) and 400 <= code <= 599 else 502
