"""OpenAI-shaped chat requests translated into Anthropic Messages requests (`to_anthropic`),
for the Anthropic dialect (providers/anthropic.py). Pure: no I/O, and nothing unknown passes
through, since Anthropic answers 400 to any field it does not know.
"""

from __future__ import annotations

from typing import Any

import orjson

from farebox.errors import BadRequest

REASONING_FORMAT = "anthropic-claude-v1"  # OpenRouter's `format` for Claude's reasoning_details
THINKING_BUDGET_MIN = 1024                # Anthropic rejects a smaller budget_tokens
# With thinking on, Anthropic accepts top_p only in [0.95, 1].
THINKING_TOP_P_MIN = 0.95
# OpenRouter's effort levels as a share of max_tokens spent on thinking.
EFFORT_SHARES = {"max": 0.95, "xhigh": 0.95, "high": 0.8, "medium": 0.5, "low": 0.2, "minimal": 0.1}
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})


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
