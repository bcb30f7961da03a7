"""The Anthropic Messages API on the wire, translated to and from the gateway's neutral
(OpenAI Chat Completions) shapes. Pure: no I/O, no gateway state.

- `to_chat`: an Anthropic Messages request -> the neutral request the relay runs.
- `message_from_chat`: the relay's chat.completion -> an Anthropic Message.
- `StreamEncoder`: the relay's chat.completion.chunk dicts -> Anthropic stream events, as
  they arrive; `sse` frames them.
- `error_body`: any error -> Anthropic's error shape (the one place it is rendered).

Field paths in validation errors use the gateway's notation (`messages[2].content[0].text`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from farebox.catalog.model import Catalog
from farebox.errors import BadRequest

Event = tuple[str, dict[str, Any]]  # (SSE event name, its data)

FALLBACKS_MAX = 3
# The neutral request carries at most 4 stop sequences (OpenAI's limit, which the chat
# validator enforces); checked here so the error names the Anthropic field.
STOP_SEQUENCES_MAX = 4
EFFORTS = ("low", "medium", "high", "xhigh", "max")
CLAUDE_FORMAT = "anthropic-claude-v1"  # OpenRouter's reasoning_details format for Claude's thinking
STOP_REASONS = frozenset({"end_turn", "max_tokens", "stop_sequence", "tool_use", "pause_turn", "refusal",
                          "model_context_window_exceeded"})
_STOP_OF_FINISH = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                   "content_filter": "refusal", "error": "end_turn"}
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
                503: "overloaded_error", 504: "timeout_error", 529: "overloaded_error"}


def _fail(path: str, message: str) -> BadRequest:
    return BadRequest(f"{path}: {message}", field=path)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _string(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(path, "expected a non-empty string")
    return value


# -- request ---------------------------------------------------------------------------

def to_chat(body: dict[str, Any], *, counting: bool = False) -> dict[str, Any]:
    """An Anthropic Messages request -> the neutral request. Fields the gateway does not
    know are dropped, not forwarded: an OpenAI-dialect upstream would reject them.
    `counting`: a count_tokens request, which has only the prompt's fields."""
    out: dict[str, Any] = {"model": _string(body.get("model"), "model")}
    out["messages"] = _system(body.get("system")) + _messages(body.get("messages"))
    if body.get("tools") is not None:
        out["tools"] = _tools(body["tools"])
    if body.get("tool_choice") is not None:
        out.update(_tool_choice(body["tool_choice"]))
    reasoning = _reasoning(body.get("thinking"), body.get("output_config"))
    if reasoning is not None:
        out["reasoning"] = reasoning
    if body.get("cache_control") is not None:
        if not isinstance(body["cache_control"], dict):
            raise _fail("cache_control", "expected an object such as {\"type\": \"ephemeral\"}")
        out["cache_control"] = body["cache_control"]
    if counting:
        return out
    max_tokens = body.get("max_tokens")
    if max_tokens is None:
        raise _fail("max_tokens", "is required")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise _fail("max_tokens", f"expected an integer of at least 1, got {max_tokens!r}")
    out["max_tokens"] = max_tokens
    out.update(_sampling(body))
    models = _fallbacks(body)
    if models is not None:
        out["models"] = models
    return out


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, high in (("temperature", 1), ("top_p", 1)):
        value = body.get(name)
        if value is not None:
            if not _is_number(value) or not 0 <= value <= high:
                raise _fail(name, f"expected a number between 0 and {high}, got {value!r}")
            out[name] = value
    top_k = body.get("top_k")
    if top_k is not None:
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
            raise _fail("top_k", f"expected a non-negative integer, got {top_k!r}")
        out["top_k"] = top_k
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise _fail("stop_sequences", "expected an array of non-empty strings")
        if len(stop) > STOP_SEQUENCES_MAX:
            raise _fail("stop_sequences", f"at most {STOP_SEQUENCES_MAX} are supported by this gateway")
        if stop:
            out["stop"] = stop
    stream = body.get("stream")
    if stream is not None:
        if not isinstance(stream, bool):
            raise _fail("stream", "expected a boolean")
        out["stream"] = stream
    metadata = body.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, dict):
            raise _fail("metadata", "expected an object")
        user = metadata.get("user_id")
        if user is not None:
            if not isinstance(user, str):
                raise _fail("metadata.user_id", "expected a string")
            out["user"] = user
    for name, kind, what in (("provider", dict, "an object"), ("session_id", str, "a string")):
        value = body.get(name)
        if value is not None:
            if not isinstance(value, kind):
                raise _fail(name, f"expected {what}")
            out[name] = value
    return out


def _fallbacks(body: dict[str, Any]) -> list[str] | None:
    """OpenRouter's fallback models: `models` (ids) or Anthropic-style `fallbacks` ({model})."""
    models, fallbacks = body.get("models"), body.get("fallbacks")
    if models is not None and fallbacks is not None:
        raise BadRequest("fallbacks: cannot be combined with models; use one of them", field="fallbacks")
    if fallbacks is not None:
        if not isinstance(fallbacks, list) or not all(
                isinstance(f, dict) and isinstance(f.get("model"), str) and f["model"] for f in fallbacks):
            raise _fail("fallbacks", "expected an array of {\"model\": id} objects")
        if len(fallbacks) > FALLBACKS_MAX:
            raise BadRequest(f"'fallbacks' array must have {FALLBACKS_MAX} items or fewer.", field="fallbacks")
        return [f["model"] for f in fallbacks]
    if models is not None:
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise _fail("models", "expected an array of model ids")
        if len(models) > FALLBACKS_MAX:
            raise BadRequest(f"'models' array must have {FALLBACKS_MAX} items or fewer.", field="models")
    return models


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if not isinstance(system, list):
        raise _fail("system", "expected a string or an array of text blocks")
    parts = []
    for j, block in enumerate(system):
        path = f"system[{j}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _fail(f"{path}.type", "system blocks must be text blocks")
        parts.append(_part(path, block))
    return [{"role": "system", "content": _content(parts)}] if parts else []


def _messages(messages: Any) -> list[dict[str, Any]]:
    if messages is None:
        raise _fail("messages", "is required")
    if not isinstance(messages, list) or not messages:
        raise _fail("messages", "expected a non-empty array of messages")
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _fail(path, "expected an object")
        role = message.get("role")
        blocks = _blocks(path, message.get("content"))
        if role == "user":
            out.extend(_user_turn(path, blocks))
        elif role == "assistant":
            out.append(_assistant_turn(blocks))
        else:
            raise _fail(f"{path}.role", f"must be user or assistant, got {role!r}")
    return out


def _blocks(path: str, content: Any) -> list[tuple[str, dict[str, Any]]]:
    """A message's content as (path, block) pairs; a string is one text block."""
    if isinstance(content, str):
        return [(f"{path}.content", {"type": "text", "text": content})]
    if not isinstance(content, list):
        raise _fail(f"{path}.content", "expected a string or an array of content blocks")
    out = []
    for j, block in enumerate(content):
        block_path = f"{path}.content[{j}]"
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise _fail(block_path, "expected a content block object with a type")
        out.append((block_path, block))
    return out


def _user_turn(path: str, blocks: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Tool results become `tool` messages, in order, ahead of the rest of the turn: the
    neutral format answers tool calls with messages of their own right after the calls.
    Images and documents inside results follow in the user message (a `tool` message
    holds only text); an Anthropic upstream gets them back in the same user turn."""
    if not blocks:
        raise _fail(f"{path}.content", "must not be empty")
    out: list[dict[str, Any]] = []
    media: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for block_path, block in blocks:
        kind = block["type"]
        if kind == "tool_result":
            message, result_media = _tool_result(block_path, block)
            out.append(message)
            media.extend(result_media)
        elif kind in ("text", "image", "document"):
            parts.append(_part(block_path, block))
        else:
            raise _fail(f"{block_path}.type", f"a user turn holds text, image, document and tool_result blocks, "
                                              f"got {kind!r}")
    rest = media + parts
    if rest:
        out.append({"role": "user", "content": _content(rest)})
    return out


def _tool_result(path: str, block: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    call_id = _string(block.get("tool_use_id"), f"{path}.tool_use_id")
    content = block.get("content", "")
    texts: list[dict[str, Any]] = []
    media: list[dict[str, Any]] = []
    if isinstance(content, str):
        if content:
            texts.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for k, inner in enumerate(content):
            inner_path = f"{path}.content[{k}]"
            kind = inner.get("type") if isinstance(inner, dict) else None
            if kind == "text":
                texts.append(_part(inner_path, inner))
            elif kind in ("image", "document"):
                media.append(_part(inner_path, inner))
            else:
                raise _fail(f"{inner_path}.type", f"a tool result holds text, image and document blocks, got {kind!r}")
    else:
        raise _fail(f"{path}.content", "expected a string or an array of content blocks")
    if isinstance(block.get("cache_control"), dict) and texts:
        # The breakpoint marks the end of the result: its last text.
        texts[-1] = {**texts[-1], "cache_control": block["cache_control"]}
    # is_error has no neutral counterpart: the result's text (the error) is what the model reads.
    return {"role": "tool", "tool_call_id": call_id, "content": _content(texts) if texts else ""}, media


def _assistant_turn(blocks: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    details: list[dict[str, Any]] = []
    for block_path, block in blocks:
        kind = block["type"]
        if kind == "text":
            parts.append(_part(block_path, block))
        elif kind == "tool_use":
            calls.append(_tool_call(block_path, block))
        elif kind in ("thinking", "redacted_thinking"):
            details.append(_reasoning_detail(block_path, block, len(details)))
        else:
            raise _fail(f"{block_path}.type", f"an assistant turn holds text, tool_use, thinking and "
                                              f"redacted_thinking blocks, got {kind!r}")
    message: dict[str, Any] = {"role": "assistant", "content": _content(parts) if parts else None}
    if calls:
        message["tool_calls"] = calls
    if details:
        message["reasoning_details"] = details
    return message


def _tool_call(path: str, block: dict[str, Any]) -> dict[str, Any]:
    call_id = _string(block.get("id"), f"{path}.id")
    name = _string(block.get("name"), f"{path}.name")
    arguments = block.get("input", {})
    if not isinstance(arguments, dict):
        raise _fail(f"{path}.input", "expected an object")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": orjson.dumps(arguments).decode()}}


def _reasoning_detail(path: str, block: dict[str, Any], index: int) -> dict[str, Any]:
    """Thinking goes back as OpenRouter reasoning_details, so an Anthropic upstream gets
    Claude's signed blocks back unchanged. A thinking block without a signature did not
    come from Claude (this gateway emits such blocks for other models' reasoning): its
    format is "unknown", which an Anthropic upstream must not be sent as a signed block."""
    if block["type"] == "redacted_thinking":
        return {"type": "reasoning.encrypted", "data": _string(block.get("data"), f"{path}.data"),
                "format": CLAUDE_FORMAT, "index": index}
    text = block.get("thinking")
    if not isinstance(text, str):
        raise _fail(f"{path}.thinking", "expected a string")
    signature = block.get("signature")
    if signature is not None and not isinstance(signature, str):
        raise _fail(f"{path}.signature", "expected a string")
    if not signature:
        return {"type": "reasoning.text", "text": text, "format": "unknown", "index": index}
    return {"type": "reasoning.text", "text": text, "signature": signature, "format": CLAUDE_FORMAT, "index": index}


def _part(path: str, block: dict[str, Any]) -> dict[str, Any]:
    """A text, image or document block -> a neutral content part, keeping cache_control."""
    kind = block["type"]
    if kind == "text":
        text = block.get("text")
        if not isinstance(text, str):
            raise _fail(f"{path}.text", "expected a string")
        part: dict[str, Any] = {"type": "text", "text": text}
    elif kind == "image":
        part = {"type": "image_url", "image_url": {"url": _source_url(path, block)}}
    else:
        part = _document(path, block)
    if isinstance(block.get("cache_control"), dict):
        part["cache_control"] = block["cache_control"]
    return part


def _source_url(path: str, block: dict[str, Any], media_types: tuple[str, ...] = ()) -> str:
    """An image or PDF source as the URL the neutral format carries: a data: URL for
    base64 data, the URL itself for a url source."""
    source = block.get("source")
    if not isinstance(source, dict):
        raise _fail(f"{path}.source", "expected an object")
    kind = source.get("type")
    if kind == "base64":
        media_type = _string(source.get("media_type"), f"{path}.source.media_type")
        if media_types and media_type not in media_types:
            raise _fail(f"{path}.source.media_type", f"must be {' or '.join(media_types)}, got {media_type!r}")
        return f"data:{media_type};base64,{_string(source.get('data'), f'{path}.source.data')}"
    if kind == "url":
        return _string(source.get("url"), f"{path}.source.url")
    raise _fail(f"{path}.source.type", f"must be base64 or url, got {kind!r}")


def _document(path: str, block: dict[str, Any]) -> dict[str, Any]:
    """A PDF -> OpenRouter's `file` part; a plain-text document -> its text."""
    source = block.get("source")
    if isinstance(source, dict) and source.get("type") == "text":
        data = source.get("data")
        if not isinstance(data, str):
            raise _fail(f"{path}.source.data", "expected a string")
        return {"type": "text", "text": data}
    title = block.get("title")
    filename = title if isinstance(title, str) and title else "document.pdf"
    return {"type": "file", "file": {"filename": filename,
                                     "file_data": _source_url(path, block, ("application/pdf",))}}


def _content(parts: list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """One plain text part is sent as a string; anything else as parts."""
    if len(parts) == 1 and parts[0].keys() == {"type", "text"} and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise _fail("tools", "expected an array of tools")
    server = [str(t.get("name") or t["type"]) for t in tools
              if isinstance(t, dict) and t.get("type") not in (None, "custom")]
    if server:
        raise BadRequest(f"tools: server tools are not supported by this gateway: {', '.join(server)}. "
                         f"Declare client tools (name, description, input_schema) instead.", field="tools")
    out = []
    for i, tool in enumerate(tools):
        path = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise _fail(path, "expected an object")
        schema = tool.get("input_schema")
        if not isinstance(schema, dict):
            raise _fail(f"{path}.input_schema", "expected a JSON schema object")
        function: dict[str, Any] = {"name": _string(tool.get("name"), f"{path}.name"), "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        entry: dict[str, Any] = {"type": "function", "function": function}
        if isinstance(tool.get("cache_control"), dict):
            entry["cache_control"] = tool["cache_control"]
        out.append(entry)
    return out


def _tool_choice(choice: Any) -> dict[str, Any]:
    if not isinstance(choice, dict):
        raise _fail("tool_choice", "expected an object such as {\"type\": \"auto\"}")
    kind = choice.get("type")
    out: dict[str, Any]
    if kind in ("auto", "none"):
        out = {"tool_choice": kind}
    elif kind == "any":
        out = {"tool_choice": "required"}
    elif kind == "tool":
        out = {"tool_choice": {"type": "function",
                               "function": {"name": _string(choice.get("name"), "tool_choice.name")}}}
    else:
        raise _fail("tool_choice.type", f"must be auto, any, tool or none, got {kind!r}")
    disable = choice.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise _fail("tool_choice.disable_parallel_tool_use", "expected a boolean")
    if disable:
        out["parallel_tool_calls"] = False
    return out


def _reasoning(thinking: Any, output_config: Any) -> dict[str, Any] | None:
    """Anthropic's thinking config -> OpenRouter's `reasoning`. Adaptive thinking lets the
    model decide how much to think: OpenRouter's effort, from output_config.effort when
    given (Anthropic's effort levels are OpenRouter's), else medium."""
    if thinking is None:
        return None
    if not isinstance(thinking, dict):
        raise _fail("thinking", "expected an object")
    kind = thinking.get("type")
    if kind == "disabled":
        return None
    if kind == "enabled":
        budget = thinking.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise _fail("thinking.budget_tokens", f"expected a positive integer, got {budget!r}")
        return {"max_tokens": budget}
    if kind == "adaptive":
        effort = output_config.get("effort") if isinstance(output_config, dict) else None
        if effort is not None and effort not in EFFORTS:
            raise _fail("output_config.effort", f"must be one of {', '.join(EFFORTS)}, got {effort!r}")
        return {"effort": effort or "medium"}
    raise _fail("thinking.type", f"must be enabled, adaptive or disabled, got {kind!r}")


def upstream_aliases(catalog: Catalog) -> dict[str, str]:
    """Bare upstream model ids (what Claude Code sends: `claude-sonnet-4-5-20250929`) ->
    the catalog model one of whose endpoints serves it. When several do, the first in
    catalog order wins, so the mapping is stable."""
    aliases: dict[str, str] = {}
    for model in catalog.models.values():
        for endpoint in model.endpoints:
            aliases.setdefault(endpoint.upstream_model, model.id)
    return aliases


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
