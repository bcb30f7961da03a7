"""Anthropic Messages API replies, from the relay's neutral (OpenAI Chat Completions)
answers. Pure: no I/O, no gateway state. The way in is `anthropic_wire`.

- `message_from_chat`: the relay's chat.completion -> an Anthropic Message.
- `StreamEncoder`: the relay's chat.completion.chunk dicts -> Anthropic stream events, as
  they arrive; `sse` frames them.
- `error_body`: any error -> Anthropic's error shape (the one place it is rendered).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from farebox.api.anthropic_wire import CLAUDE_FORMAT, Event

STOP_REASONS = frozenset({"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
                          "model_context_window_exceeded"})
_STOP_OF_FINISH = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                   "content_filter": "refusal", "error": "end_turn"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}


# -- reply -----------------------------------------------------------------------------

def stop_reason(finish: str | None, native: str | None) -> str:
    """An upstream that speaks Anthropic reports the stop reason itself; any other's
    normalized finish reason is mapped (an error or a missing reason ends the turn)."""
    if native in STOP_REASONS:
        return native
    return _STOP_OF_FINISH.get(finish or "stop", "end_turn")


def matched_stop(reason: str, stop: list[str] | None) -> str | None:
    """The stop sequence that ended the turn. Upstreams do not say which one matched,
    so it is known only when the request gave exactly one."""
    if reason == "stop_sequence" and stop and len(stop) == 1:
        return stop[0]
    return None


def usage_to_anthropic(usage: dict[str, Any]) -> dict[str, Any]:
    """The relay's usage (OpenAI's convention: prompt_tokens includes cache reads and
    writes) -> Anthropic's, where input_tokens excludes both. `cost` (USD, what the
    balance paid) is OpenRouter's addition."""
    prompt_details = usage.get("prompt_tokens_details") or {}
    cached = prompt_details.get("cached_tokens") or 0
    written = prompt_details.get("cache_write_tokens") or 0
    out: dict[str, Any] = {
        "input_tokens": max(usage["prompt_tokens"] - cached - written, 0),
        "output_tokens": usage["completion_tokens"],
        "cache_creation_input_tokens": written,
        "cache_read_input_tokens": cached,
    }
    reasoning = (usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0
    if reasoning:
        out["output_tokens_details"] = {"thinking_tokens": reasoning}
    if "cost" in usage:
        out["cost"] = usage["cost"]
    return out


def message_from_chat(body: dict[str, Any], stop: list[str] | None) -> dict[str, Any]:
    """The relay's chat.completion -> an Anthropic Message. `stop` is the request's stop
    sequences."""
    choice = body["choices"][0]
    message = choice.get("message") or {}
    blocks = _thinking_blocks(message)
    text = message.get("content")
    if isinstance(text, list):
        text = "".join(p.get("text") or "" for p in text if isinstance(p, dict))
    if not text and isinstance(message.get("refusal"), str):
        text = message["refusal"]
    if text:
        blocks.append({"type": "text", "text": text})
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        blocks.append({"type": "tool_use", "id": call.get("id") or "", "name": function.get("name") or "",
                       "input": _arguments(function.get("arguments"))})
    reason = stop_reason(choice.get("finish_reason"), choice.get("native_finish_reason"))
    return {"id": body["id"], "type": "message", "role": "assistant", "model": body["model"], "content": blocks,
            "stop_reason": reason, "stop_sequence": matched_stop(reason, stop),
            "usage": usage_to_anthropic(body["usage"]), "provider": body.get("provider")}


def _thinking_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    details = message.get("reasoning_details")
    blocks = [b for d in details if (b := _thinking_block(d)) is not None] if isinstance(details, list) else []
    if blocks:
        return blocks
    reasoning = message.get("reasoning") or message.get("reasoning_content")
    return [_unsigned(reasoning)] if isinstance(reasoning, str) and reasoning else []


def _unsigned(text: str) -> dict[str, Any]:
    """Reasoning a model other than Claude wrote has no signature: the block carries an
    empty one (the SDKs require the field), which tells a client it cannot be verified."""
    return {"type": "thinking", "thinking": text, "signature": ""}


def _thinking_block(detail: Any) -> dict[str, Any] | None:
    """One reasoning_details entry -> a thinking or redacted_thinking block, or None for
    an entry no Anthropic client can use (another provider's encrypted reasoning)."""
    if not isinstance(detail, dict):
        return None
    kind = detail.get("type")
    if kind == "reasoning.text":
        signature = detail.get("signature")
        return {**_unsigned(detail.get("text") or ""), "signature": signature if isinstance(signature, str) else ""}
    if kind == "reasoning.summary":
        return _unsigned(detail.get("summary") or "")
    if kind == "reasoning.encrypted" and detail.get("format") in (None, CLAUDE_FORMAT) \
            and isinstance(detail.get("data"), str):
        return {"type": "redacted_thinking", "data": detail["data"]}
    return None


def _arguments(raw: Any) -> dict[str, Any]:
    """A tool call's JSON arguments as the object Anthropic's `input` must be. Arguments
    a model garbled become {}: the tool then reports what is missing, which the model can
    act on, where an invalid block would fail the client."""
    if isinstance(raw, dict):
        return raw
    try:
        value = orjson.loads(raw or "{}")
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return value if isinstance(value, dict) else {}


# -- stream ----------------------------------------------------------------------------

PING: Event = ("ping", {"type": "ping"})


def sse(events: Iterable[Event]) -> bytes:
    """Anthropic frames every event with its name: `event: <type>` then `data: <json>`."""
    return b"".join(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n" for name, data in events)


class StreamEncoder:
    """The relay's chunks -> Anthropic stream events, as each chunk arrives.

    Content blocks follow the deltas: reasoning opens a thinking block, text a text block,
    each tool call a tool_use block; a block stops when a delta of another kind arrives.
    message_start goes out with the first chunk (the served model is known then; token
    counts are not, so they are 0) and message_delta at the end carries the cumulative
    counts, which the SDKs' accumulators take over."""

    def __init__(self, message_id: str, stop: list[str] | None) -> None:
        self.message_id = message_id
        self.stop = stop
        self.started = False
        self.blocks = 0                          # blocks started so far: the next block's index
        self.open: str | None = None             # the open block's key: "thinking", "text", "tool <n>", ...
        self.open_index = -1
        self.signed = False                      # the open thinking block has its signature: it is complete
        self.tool_blocks: dict[int, int] = {}    # tool call index -> the block of its latest call
        self.tool_ids: dict[int, str] = {}       # tool call index -> that call's id
        self.finish_reason: str | None = None
        self.native_finish: str | None = None

    def chunk(self, chunk: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        self._start(chunk, events)
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            self._reasoning(delta, events)
            for text in (delta.get("content"), delta.get("refusal")):
                if isinstance(text, str) and text:
                    self._begin("text", {"type": "text", "text": ""}, events)
                    self._delta(self.open_index, {"type": "text_delta", "text": text}, events)
            for call in delta.get("tool_calls") or ():
                self._tool_call(call, events)
            if choice.get("finish_reason"):
                self.finish_reason, self.native_finish = choice["finish_reason"], choice.get("native_finish_reason")
        return events

    def finish(self, chunk: dict[str, Any]) -> list[Event]:
        """The relay's final chunk (usage, after the charge is committed) -> the end."""
        events: list[Event] = []
        self._start(chunk, events)
        self._close(events)
        reason = stop_reason(self.finish_reason, self.native_finish)
        events.append(("message_delta", {"type": "message_delta",
                                         "delta": {"stop_reason": reason, "stop_sequence": matched_stop(reason, self.stop)},
                                         "usage": usage_to_anthropic(chunk["usage"])}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    @staticmethod
    def fail(chunk: dict[str, Any]) -> list[Event]:
        """The relay's error chunk (OpenRouter's error object) -> Anthropic's error event."""
        error = chunk["error"]
        return [("error", error_body(error["code"], error["message"], error.get("metadata") or {}))]

    def _start(self, chunk: dict[str, Any], events: list[Event]) -> None:
        if self.started:
            return
        self.started = True
        events.append(("message_start", {"type": "message_start", "message": {
            "id": self.message_id, "type": "message", "role": "assistant", "model": chunk.get("model"),
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}}))

    def _reasoning(self, delta: dict[str, Any], events: list[Event]) -> None:
        details = delta.get("reasoning_details")
        if details:
            # `reasoning` repeats the details' text when both are present: use the details.
            for detail in details:
                if isinstance(detail, dict):
                    self._detail(detail, events)
            return
        text = delta.get("reasoning") or delta.get("reasoning_content")
        if isinstance(text, str) and text:
            self._thinking(text, events)

    def _detail(self, detail: dict[str, Any], events: list[Event]) -> None:
        kind = detail.get("type")
        if kind in ("reasoning.text", "reasoning.summary"):
            text = detail.get("text") if kind == "reasoning.text" else detail.get("summary")
            if isinstance(text, str) and text:
                self._thinking(text, events)
            signature = detail.get("signature")
            if isinstance(signature, str) and signature:
                if self.open != "thinking":
                    self._begin("thinking", {"type": "thinking", "thinking": "", "signature": ""}, events)
                self._delta(self.open_index, {"type": "signature_delta", "signature": signature}, events)
                self.signed = True
        elif (block := _thinking_block(detail)) is not None:  # Claude's redacted thinking: a whole block
            self._close(events)
            self._begin("redacted", block, events)
            self._close(events)

    def _thinking(self, text: str, events: list[Event]) -> None:
        if self.open == "thinking" and self.signed:
            self._close(events)  # a signed block is complete: more thinking is a new block
        self._begin("thinking", {"type": "thinking", "thinking": "", "signature": ""}, events)
        self._delta(self.open_index, {"type": "thinking_delta", "thinking": text}, events)

    def _tool_call(self, call: dict[str, Any], events: list[Event]) -> None:
        index = call.get("index", 0)
        function = call.get("function") or {}
        call_id = call.get("id") or ""
        if index not in self.tool_blocks or (call_id and self.tool_ids[index] and call_id != self.tool_ids[index]):
            # A new call. Some upstreams number every parallel call 0 and tell them apart by id.
            self._begin(f"tool {self.blocks}", {"type": "tool_use", "id": call_id, "name": function.get("name") or "",
                                                "input": {}}, events)
            self.tool_blocks[index], self.tool_ids[index] = self.open_index, call_id
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            # A fragment for a call whose block another call already closed (upstreams that
            # interleave parallel calls) still names its own block; the SDKs file it by index.
            self._delta(self.tool_blocks[index], {"type": "input_json_delta", "partial_json": arguments}, events)

    def _begin(self, key: str, block: dict[str, Any], events: list[Event]) -> None:
        """Make `key` the open block, closing the one before it."""
        if self.open == key:
            return
        self._close(events)
        self.open, self.open_index, self.signed = key, self.blocks, False
        self.blocks += 1
        events.append(("content_block_start", {"type": "content_block_start", "index": self.open_index,
                                               "content_block": block}))

    def _close(self, events: list[Event]) -> None:
        if self.open is not None:
            events.append(("content_block_stop", {"type": "content_block_stop", "index": self.open_index}))
            self.open = None

    def _delta(self, index: int, delta: dict[str, Any], events: list[Event]) -> None:
        assert 0 <= index < self.blocks, (index, self.blocks)  # a delta belongs to a started block
        events.append(("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))


# -- errors ----------------------------------------------------------------------------

def error_type(status: int) -> str:
    """Anthropic's error type for a status. The SDKs pick the exception class by status
    alone; the type is what clients show: 503 is our provider_overloaded (the upstream's
    own 503/529), so overloaded_error; other 5xx are api_error."""
    return _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")


def error_body(status: int, message: str, metadata: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's error shape, with OpenRouter's `error_type` beside Anthropic's `type`
    and the rest of OpenRouter's metadata (the field at fault, the provider, ...)."""
    extra = dict(metadata)
    kind = extra.pop("error_type", None)
    error: dict[str, Any] = {"type": error_type(status), "message": message}
    if kind is not None:
        error["error_type"] = kind
    if extra:
        error["metadata"] = extra
    return {"type": "error", "error": error}
