"""Anthropic Messages API requests, translated to the gateway's neutral (OpenAI Chat
Completions) request. Pure: no I/O, no gateway state. The way back (replies, stream
events, errors) is `anthropic_reply`.

- `to_chat`: an Anthropic Messages request -> the neutral request the relay runs.
- `upstream_aliases`: bare upstream model ids (Claude Code's) -> catalog models.

Field paths in validation errors use the gateway's notation (`messages[2].content[0].text`).
"""

from __future__ import annotations

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
