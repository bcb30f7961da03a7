"""The Anthropic Messages dialect: `POST {base_url}/v1/messages`.

The neutral request is OpenAI-shaped, so everything is translated at this edge: the
request into a Messages request (pure `to_anthropic`), a Message back into a
chat.completion (pure `from_anthropic`), and each streamed event into OpenAI chunks as it
arrives (`StreamTranslator`). Unlike the OpenAI dialect nothing unknown passes through:
Anthropic answers 400 to any field it does not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from farebox.clock import Clock
from farebox.errors import BadRequest, ProviderError
from farebox.ledger.pricing import Usage
from farebox.providers.base import Call, Reply
from farebox.providers.faults import Fault, by_status, provider_error
from farebox.providers.http import TranslatedStream, Upstreams, invalid_response, read_json, read_line

ANTHROPIC_VERSION = "2023-06-01"
REASONING_FORMAT = "anthropic-claude-v1"  # OpenRouter's `format` for Claude's reasoning_details
THINKING_BUDGET_MIN = 1024                # Anthropic rejects a smaller budget_tokens
# With thinking on, Anthropic accepts top_p only in [0.95, 1].
THINKING_TOP_P_MIN = 0.95
# OpenRouter's effort levels as a share of max_tokens spent on thinking.
EFFORT_SHARES = {"max": 0.95, "xhigh": 0.95, "high": 0.8, "medium": 0.5, "low": 0.2, "minimal": 0.1}
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

# Anthropic's stop_reason -> OpenRouter's normalized finish_reason; anything else is "stop".
FINISH_REASONS = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    # The reply filled the model's context window: cut short, like max_tokens.
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}


def finish_reason(stop_reason: str) -> str:
    return FINISH_REASONS.get(stop_reason, "stop")


# -- request -----------------------------------------------------------------------


def to_anthropic(body: dict[str, Any], upstream_model: str, max_tokens_default: int, user_tag: str | None,
                 stream: bool) -> dict[str, Any]:
    """The Messages request for a neutral (OpenAI-shaped) request. `max_tokens_default` is the
    endpoint's output cap, sent when the client named none (Anthropic requires max_tokens).
    Raises BadRequest for what Anthropic cannot take (audio parts, malformed tool arguments)."""
    assert max_tokens_default > 0, max_tokens_default
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or max_tokens_default
    system, messages = _conversation(body.get("messages") or [])
    request: dict[str, Any] = {"model": upstream_model, "max_tokens": max_tokens, "messages": messages}
    if system:
        request["system"] = system
    budget = thinking_budget(body, max_tokens)
    if budget is not None:
        request["thinking"] = {"type": "enabled", "budget_tokens": budget}
    request.update(_sampling(body, thinking=budget is not None))
    stop = body.get("stop")
    stop_sequences = [s for s in ([stop] if isinstance(stop, str) else stop or ()) if s]
    if stop_sequences:
        request["stop_sequences"] = stop_sequences
    tools = _tools(body.get("tools") or ())
    if tools:
        request["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            request["tool_choice"] = choice
    if user_tag is not None:
        request["metadata"] = {"user_id": user_tag}
    if body.get("cache_control") is not None:
        request["cache_control"] = body["cache_control"]  # automatic caching: Anthropic's own field
    if stream:
        request["stream"] = True
    return request


def thinking_budget(body: dict[str, Any], max_tokens: int) -> int | None:
    """Anthropic's `budget_tokens` for OpenRouter's `reasoning` (or `reasoning_effort`), or
    None for no thinking.

    The rule: an effort is that share of max_tokens; the budget is then raised to Anthropic's
    minimum of 1024 and lowered below max_tokens (thinking counts toward max_tokens, and
    Anthropic requires budget < max_tokens). max_tokens itself is never raised: the credit
    hold was sized from it. So a max_tokens of 1024 or less leaves no room for any thinking
    and the request runs without it."""
    reasoning = body.get("reasoning")
    reasoning = reasoning if isinstance(reasoning, dict) else {}
    effort = reasoning.get("effort", body.get("reasoning_effort"))
    wanted = reasoning.get("max_tokens")
    if reasoning.get("enabled") is False or effort == "none":
        return None
    if wanted is not None:
        if not isinstance(wanted, int) or isinstance(wanted, bool) or wanted < 1:
            raise BadRequest("reasoning.max_tokens: expected a positive integer", field="reasoning.max_tokens")
    elif effort is not None:
        if effort not in EFFORT_SHARES:
            raise BadRequest(f"reasoning.effort: must be one of none, {', '.join(EFFORT_SHARES)}; got {effort!r}",
                             field="reasoning.effort")
        wanted = int(max_tokens * EFFORT_SHARES[effort])
    elif reasoning.get("enabled") is True:
        wanted = int(max_tokens * EFFORT_SHARES["medium"])
    else:
        return None
    budget = min(max(wanted, THINKING_BUDGET_MIN), max_tokens - 1)
    return budget if budget >= THINKING_BUDGET_MIN else None


def _sampling(body: dict[str, Any], thinking: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    temperature, top_p, top_k = body.get("temperature"), body.get("top_p"), body.get("top_k")
    # Thinking rejects temperature and top_k, and top_p below 0.95: drop them rather than fail.
    if temperature is not None and not thinking:
        out["temperature"] = min(temperature, 1)  # OpenAI's range is 0..2, Anthropic's 0..1
    if top_k is not None and not thinking:
        out["top_k"] = top_k
    if top_p is not None and (not thinking or top_p >= THINKING_TOP_P_MIN):
        out["top_p"] = top_p
    return out


def _conversation(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system blocks, turns). Every system and developer message goes to the top-level
    system, in order; the rest become alternating user/assistant turns, as Anthropic
    requires, by merging neighbours of the same role (tool results are user content)."""
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role, path = message.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend(_text_blocks(message.get("content"), path, "system"))
            continue
        if role == "user":
            turn_role, blocks = "user", _user_blocks(message.get("content"), path)
        elif role == "tool":
            turn_role, blocks = "user", [_tool_result(message, path)]
        elif role == "assistant":
            turn_role, blocks = "assistant", _assistant_blocks(message, path)
        else:
            raise BadRequest(f"{path}.role: Anthropic models do not take {role!r} messages", field=f"{path}.role")
        if not blocks:
            continue  # Anthropic rejects empty content; dropping the message keeps the rest valid
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": turn_role, "content": blocks})
    for turn in turns:
        if turn["role"] == "user":
            # Anthropic requires a turn's tool results before anything else in it.
            turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    return system, turns


def _text_blocks(content: Any, path: str, where: str) -> list[dict[str, Any]]:
    """Content that may only be text (system prompts, assistant replies)."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, part in enumerate(content or ()):
        if part.get("type") != "text":
            raise BadRequest(f"{path}.content[{j}]: Anthropic takes only text in {where} messages, "
                             f"not {part.get('type')!r} parts", field=f"{path}.content[{j}]")
        block = _part(part, f"{path}.content[{j}]")
        if block is not None:
            blocks.append(block)
    return blocks


def _user_blocks(content: Any, path: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = (_part(part, f"{path}.content[{j}]") for j, part in enumerate(content or ()))
    return [block for block in blocks if block is not None]


def _part(part: dict[str, Any], path: str) -> dict[str, Any] | None:
    """One OpenAI content part as an Anthropic block; None for empty text, which Anthropic rejects."""
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"{path}.text: expected a string", field=f"{path}.text")
        if not text:
            return None
        block: dict[str, Any] = {"type": "text", "text": text}
    elif kind == "image_url":
        block = _image(part.get("image_url"), path)
    elif kind == "file":
        block = _document(part.get("file"), path)
    else:
        raise BadRequest(f"{path}: Anthropic models do not accept {kind!r} content parts", field=path)
    if part.get("cache_control") is not None:
        block["cache_control"] = part["cache_control"]
    return block


def _image(image: Any, path: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    media_type, data = _data_url(url)
    media_type = "image/jpeg" if media_type == "image/jpg" else media_type
    if data is None or media_type not in IMAGE_MEDIA_TYPES:
        raise BadRequest(f"{path}.image_url: Anthropic takes http(s) URLs or base64 data: URLs of "
                         f"{', '.join(sorted(IMAGE_MEDIA_TYPES))} images", field=f"{path}.image_url")
    return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _document(file: Any, path: str) -> dict[str, Any]:
    media_type, data = _data_url(file.get("file_data") if isinstance(file, dict) else None)
    if data is None or media_type != "application/pdf":
        raise BadRequest(f"{path}.file: Anthropic takes files only as PDF data in a base64 data: URL",
                         field=f"{path}.file")
    block: dict[str, Any] = {"type": "document",
                             "source": {"type": "base64", "media_type": "application/pdf", "data": data}}
    filename = file.get("filename")
    if isinstance(filename, str) and filename:
        block["title"] = filename
    return block


def _data_url(url: Any) -> tuple[str | None, str | None]:
    """(media type, base64 payload) of a `data:<type>;base64,<payload>` URL, else (None, None)."""
    if not isinstance(url, str) or not url.startswith("data:"):
        return None, None
    header, comma, payload = url[5:].partition(",")
    if not comma or not header.endswith(";base64") or not payload:
        return None, None
    return header[:-7].lower(), payload


def _tool_result(message: dict[str, Any], path: str) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    content = message.get("content")
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        parts = _user_blocks(content, path)
        if parts:
            block["content"] = parts
    return block


def _assistant_blocks(message: dict[str, Any], path: str) -> list[dict[str, Any]]:
    # Thinking goes first and unchanged: Anthropic checks the signatures of the thinking
    # it produced before a tool call when the call's results come back.
    blocks = _thinking_blocks(message.get("reasoning_details"))
    blocks.extend(_text_blocks(message.get("content"), path, "assistant"))
    for j, call in enumerate(message.get("tool_calls") or ()):
        blocks.append(_tool_use(call, f"{path}.tool_calls[{j}]"))
    return blocks


def _thinking_blocks(details: Any) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    for detail in details if isinstance(details, list) else ():
        # Reasoning from another provider carries signatures Anthropic cannot verify.
        if not isinstance(detail, dict) or detail.get("format", REASONING_FORMAT) != REASONING_FORMAT:
            continue
        kind = detail.get("type")
        if kind == "reasoning.text" and isinstance(detail.get("signature"), str) and detail["signature"]:
            text = detail.get("text")
            blocks.append({"type": "thinking", "thinking": text if isinstance(text, str) else "",
                           "signature": detail["signature"]})
        elif kind == "reasoning.encrypted" and isinstance(detail.get("data"), str):
            blocks.append({"type": "redacted_thinking", "data": detail["data"]})
    return blocks


def _tool_use(call: Any, path: str) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or not isinstance(call.get("id"), str) or not isinstance(
            function.get("name"), str):
        raise BadRequest(f"{path}: expected {{id, type: function, function: {{name, arguments}}}}", field=path)
    arguments = function.get("arguments")
    if arguments is None or arguments == "":
        arguments = {}
    elif isinstance(arguments, str):
        try:
            arguments = orjson.loads(arguments)
        except orjson.JSONDecodeError:
            raise BadRequest(f"{path}.function.arguments: not valid JSON", field=f"{path}.function.arguments") from None
    if not isinstance(arguments, dict):
        raise BadRequest(f"{path}.function.arguments: must be a JSON object", field=f"{path}.function.arguments")
    return {"type": "tool_use", "id": call["id"], "name": function["name"], "input": arguments}


def _tools(tools: Any) -> list[dict[str, Any]]:
    out = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if tool.get("type", "function") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequest(f"tools[{i}]: Anthropic takes only function tools with a name", field=f"tools[{i}]")
        spec: dict[str, Any] = {"name": function["name"],
                                "input_schema": function.get("parameters") or {"type": "object", "properties": {}}}
        if isinstance(function.get("description"), str) and function["description"]:
            spec["description"] = function["description"]
        if tool.get("cache_control") is not None:
            spec["cache_control"] = tool["cache_control"]
        out.append(spec)
    return out


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        if parallel is not False:
            return None
        choice = "auto"
    if isinstance(choice, dict):
        function = choice.get("function")
        if choice.get("type") != "function" or not isinstance(function, dict) or not isinstance(
                function.get("name"), str):
            raise BadRequest("tool_choice: expected {type: function, function: {name}}", field="tool_choice")
        out: dict[str, Any] = {"type": "tool", "name": function["name"]}
    else:
        kinds = {"auto": "auto", "required": "any", "none": "none"}
        if choice not in kinds:
            raise BadRequest("tool_choice: must be none, auto, required or an object naming a function",
                             field="tool_choice")
        out = {"type": kinds[choice]}
    if parallel is False and out["type"] != "none":
        out["disable_parallel_tool_use"] = True
    return out


# -- reply -------------------------------------------------------------------------


def usage_from_anthropic(raw: Any) -> Usage | None:
    """Anthropic's usage in OpenAI's convention: its input_tokens exclude cache reads and
    writes, our prompt_tokens include them. None when absent or malformed."""
    if not isinstance(raw, dict):
        return None
    fresh, output = raw.get("input_tokens"), raw.get("output_tokens")
    if not _is_count(fresh) or not _is_count(output):
        return None
    read, written = _count(raw.get("cache_read_input_tokens")), _count(raw.get("cache_creation_input_tokens"))
    details = raw.get("output_tokens_details")
    # Only a count Anthropic reports: thinking tokens are otherwise inside output_tokens, unsplit.
    thinking = min(_count(details.get("thinking_tokens")), output) if isinstance(details, dict) else 0
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


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _count(value: Any) -> int:
    return value if _is_count(value) else 0


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
        response = await self.upstreams.post(provider, url, body, headers, read_fault)
        data = await read_json(provider, response)
        try:
            reply, usage, upstream_id = from_anthropic(data, int(self.clock.now()))
        except ValueError:
            raise invalid_response(provider, orjson.dumps(data)) from None
        return Reply(body=reply, usage=usage, upstream_id=upstream_id)

    async def open_stream(self, call: Call) -> AnthropicStream:
        provider = call.endpoint.provider
        url, body, headers = self.request(call, stream=True)
        response = await self.upstreams.post(provider, url, body, headers, read_fault)
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
