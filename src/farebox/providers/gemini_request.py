"""OpenAI-shaped chat requests translated into Gemini `generateContent` requests
(`to_gemini`), for the Gemini dialect (providers/gemini.py). Pure: no I/O.

System and developer messages become `systemInstruction`; user, assistant and tool turns
become `contents` with roles user/model (consecutive turns of one role merged, so parallel
tool results answer their calls in one turn); OpenAI sampling fields become
`generationConfig`; OpenRouter's `reasoning` becomes `thinkingConfig`. Nothing else passes
through: Gemini rejects fields it does not know. An assistant message's
`reasoning_details` signatures (`format: "google-gemini-v1"`) go back onto its calls.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import orjson

from farebox.errors import BadRequest

SIGNATURE_FORMAT = "google-gemini-v1"  # reasoning_details `format` of the signatures we hand out

# OpenRouter effort -> Gemini 3 thinkingLevel. Gemini 3 Pro accepts only "low" and "high"
# (Flash adds minimal and medium), so these two are the levels every Gemini 3 model takes.
# Gemini 2.5 models take no level at all: callers reach them with `reasoning.max_tokens`.
_LEVELS = {"minimal": "low", "low": "low", "medium": "high", "high": "high", "xhigh": "high", "max": "high"}
_TOOL_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
# Gemini needs a MIME type for a URL it fetches; guessed from the extension.
_MIME_BY_EXTENSION = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
    ".heic": "image/heic", ".heif": "image/heif", ".gif": "image/gif", ".pdf": "application/pdf",
    ".mp4": "video/mp4", ".mov": "video/mov", ".webm": "video/webm", ".mp3": "audio/mp3", ".wav": "audio/wav",
}


# -- request ---------------------------------------------------------------------------
def to_gemini(body: dict[str, Any], user_tag: str | None) -> dict[str, Any]:
    """The generateContent request body for a neutral (OpenAI-shaped) request.

    `user_tag` is not sent: the Gemini API has no end-user field (Vertex's `labels` is not
    part of it, and unknown fields are rejected). Raises BadRequest for what Gemini cannot
    express (unknown content parts, non-function tools, tool results for unknown calls)."""
    system, contents = _contents(body.get("messages") or ())
    request: dict[str, Any] = {"contents": contents}
    if system:
        request["systemInstruction"] = {"parts": system}
    declarations = _function_declarations(body.get("tools") or ())
    if declarations:
        request["tools"] = [{"functionDeclarations": declarations}]
        if body.get("tool_choice") is not None:
            request["toolConfig"] = {"functionCallingConfig": _calling_config(body["tool_choice"])}
    config = _generation_config(body)
    if config:
        request["generationConfig"] = config
    return request


def _contents(messages: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    tool_names: dict[str, str] = {}  # tool call id -> function name, from earlier assistant turns
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role")
        if role in ("system", "developer"):
            system.extend(_text_parts(message.get("content"), where))
            continue
        if role == "user":
            turn, parts = "user", _user_parts(message.get("content"), where)
        elif role == "assistant":
            turn, parts = "model", _assistant_parts(message, where, tool_names)
        elif role == "tool":
            # Gemini takes function results as a user turn; parallel results merge into one.
            turn, parts = "user", [_function_response(message, where, tool_names)]
        else:
            raise BadRequest(f"{where}.role: Gemini cannot take a {role!r} message", field=f"{where}.role")
        if not parts:
            continue  # Gemini rejects a turn without parts
        if contents and contents[-1]["role"] == turn:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": turn, "parts": parts})
    return system, contents


def _text_parts(content: Any, where: str) -> list[dict[str, Any]]:
    """Content that may only be text (system, assistant)."""
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"text": content}]
    parts = []
    for j, part in enumerate(content):
        if part.get("type") != "text":
            path = f"{where}.content[{j}]"
            raise BadRequest(f"{path}: only text parts are allowed here, got {part.get('type')!r}",
                             field=f"{path}.type")
        if part.get("text"):
            parts.append({"text": part["text"]})
    return parts


def _user_parts(content: Any, where: str) -> list[dict[str, Any]]:
    if content is None or content == "":
        return []
    if isinstance(content, str):
        return [{"text": content}]
    parts = (_user_part(part, f"{where}.content[{j}]") for j, part in enumerate(content))
    return [part for part in parts if part is not None]


def _user_part(part: dict[str, Any], path: str) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind == "text":
        return {"text": part["text"]} if part.get("text") else None
    if kind == "image_url":
        return _media(_url(part.get("image_url")), "image/jpeg", f"{path}.image_url.url")
    if kind == "video_url":
        return _media(_url(part.get("video_url")), "video/mp4", f"{path}.video_url.url")
    if kind == "input_audio":
        audio = part.get("input_audio")
        data = audio.get("data") if isinstance(audio, dict) else None
        fmt = audio.get("format") if isinstance(audio, dict) else None
        if not isinstance(data, str) or not isinstance(fmt, str) or not data or not fmt:
            raise BadRequest(f"{path}.input_audio: expected base64 `data` and a `format`", field=f"{path}.input_audio")
        return {"inlineData": {"mimeType": f"audio/{fmt}", "data": data}}
    if kind == "file":
        file = part.get("file")
        data = file.get("file_data") if isinstance(file, dict) else None
        if not isinstance(data, str) or not data:
            raise BadRequest(f"{path}.file.file_data: Gemini needs the file's data: URL or http(s) URL",
                             field=f"{path}.file.file_data")
        filename = file.get("filename")
        default = _mime_from_path(filename, "application/pdf") if isinstance(filename, str) else "application/pdf"
        return _media(data, default, f"{path}.file.file_data")
    raise BadRequest(f"{path}: Gemini cannot take a {kind!r} content part", field=f"{path}.type")


def _url(value: Any) -> str:
    url = value.get("url") if isinstance(value, dict) else value
    return url if isinstance(url, str) else ""


def _media(url: str, default_mime: str, path: str) -> dict[str, Any]:
    """A data: URL travels inline; an http(s) URL is fetched by Gemini itself."""
    if url.startswith("data:"):
        meta, comma, data = url[5:].partition(",")
        fields = meta.split(";")
        if not comma or fields[-1] != "base64" or "/" not in fields[0] or not data:
            raise BadRequest(f"{path}: expected a base64 data: URL (data:<type>;base64,<data>)", field=path)
        return {"inlineData": {"mimeType": fields[0], "data": data}}
    if url.startswith(("https://", "http://")):
        return {"fileData": {"mimeType": _mime_from_path(urlsplit(url).path, default_mime), "fileUri": url}}
    raise BadRequest(f"{path}: expected an http(s) URL or a base64 data: URL", field=path)


def _mime_from_path(path: str, default: str) -> str:
    return _MIME_BY_EXTENSION.get(PurePosixPath(path).suffix.lower(), default)


def _assistant_parts(message: dict[str, Any], where: str, tool_names: dict[str, str]) -> list[dict[str, Any]]:
    parts = _text_parts(message.get("content"), where)
    signatures = _signatures(message.get("reasoning_details"))
    for k, call in enumerate(message.get("tool_calls") or ()):
        path = f"{where}.tool_calls[{k}]"
        function = call.get("function")
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{path}.function.name: expected the function's name", field=f"{path}.function.name")
        function_call: dict[str, Any] = {"name": name, "args": _arguments(function.get("arguments"), path)}
        part: dict[str, Any] = {"functionCall": function_call}
        call_id = call.get("id")
        if isinstance(call_id, str) and call_id:
            function_call["id"] = call_id
            tool_names[call_id] = name
            if call_id in signatures:
                part["thoughtSignature"] = signatures[call_id]
        parts.append(part)
    return parts


def _signatures(details: Any) -> dict[str, str]:
    """Tool call id -> the thoughtSignature Gemini gave that call, from reasoning_details we
    handed out. Other providers' encrypted reasoning means nothing to Gemini."""
    found: dict[str, str] = {}
    for detail in details if isinstance(details, list) else ():
        if (isinstance(detail, dict) and detail.get("type") == "reasoning.encrypted"
                and detail.get("format") == SIGNATURE_FORMAT
                and isinstance(detail.get("id"), str) and isinstance(detail.get("data"), str)):
            found[detail["id"]] = detail["data"]
    return found


def _arguments(arguments: Any, path: str) -> dict[str, Any]:
    if arguments is None or arguments == "":
        return {}
    try:
        args = orjson.loads(arguments) if isinstance(arguments, str) else arguments
    except orjson.JSONDecodeError:
        raise BadRequest(f"{path}.function.arguments: not valid JSON", field=f"{path}.function.arguments") from None
    if not isinstance(args, dict):
        raise BadRequest(f"{path}.function.arguments: Gemini needs a JSON object",
                         field=f"{path}.function.arguments")
    return args


def _function_response(message: dict[str, Any], where: str, tool_names: dict[str, str]) -> dict[str, Any]:
    call_id = message.get("tool_call_id")
    name = tool_names.get(call_id) if isinstance(call_id, str) else None
    if name is None:
        # Gemini matches a result to its call by the function's name, which only the call has.
        raise BadRequest(f"{where}.tool_call_id: no earlier assistant tool call has the id {call_id!r}",
                         field=f"{where}.tool_call_id")
    text = "".join(part["text"] for part in _text_parts(message.get("content"), where))
    try:
        value: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = text
    response = value if isinstance(value, dict) else {"result": value}
    return {"functionResponse": {"id": call_id, "name": name, "response": response}}


def _function_declarations(tools: Any) -> list[dict[str, Any]]:
    declarations = []
    for i, tool in enumerate(tools):
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, dict):
            raise BadRequest(f"tools[{i}]: Gemini takes only function tools, got {tool.get('type')!r}",
                             field=f"tools[{i}].type")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools[{i}].function.name: expected the function's name",
                             field=f"tools[{i}].function.name")
        declaration: dict[str, Any] = {"name": name}
        if isinstance(function.get("description"), str):
            declaration["description"] = function["description"]
        if isinstance(function.get("parameters"), dict):
            # parametersJsonSchema takes JSON Schema as clients write it (additionalProperties,
            # anyOf, $ref, ...); `parameters` takes an OpenAPI subset that rejects those keys,
            # and rewriting a schema to fit it would change what the tool accepts.
            declaration["parametersJsonSchema"] = function["parameters"]
        declarations.append(declaration)
    return declarations


def _calling_config(choice: Any) -> dict[str, Any]:
    if isinstance(choice, str) and choice in _TOOL_MODES:
        return {"mode": _TOOL_MODES[choice]}
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if isinstance(name, str) and name:
        return {"mode": "ANY", "allowedFunctionNames": [name]}
    raise BadRequest("tool_choice: expected none, auto, required or {\"type\": \"function\", "
                     "\"function\": {\"name\": ...}}", field="tool_choice")


def _generation_config(body: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        config["maxOutputTokens"] = max_tokens
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"), ("seed", "seed"),
                         ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty")):
        if body.get(ours) is not None:
            config[theirs] = body[ours]
    stop = body.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    config.update(_response_format(body.get("response_format")))
    thinking = _thinking_config(body)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    return config


def _response_format(fmt: Any) -> dict[str, Any]:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind is None or kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": "application/json"}
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            return {"responseMimeType": "application/json"}
        # responseJsonSchema takes JSON Schema itself; responseSchema only an OpenAPI subset
        # (no additionalProperties, no type arrays), which strict client schemas often use.
        return {"responseMimeType": "application/json", "responseJsonSchema": schema}
    raise BadRequest(f"response_format: Gemini cannot produce {kind!r}", field="response_format.type")


def _thinking_config(body: dict[str, Any]) -> dict[str, Any] | None:
    """OpenRouter's `reasoning` (or the `reasoning_effort` shorthand) as a thinkingConfig;
    None leaves the model's default. An explicit budget wins over an effort, because Gemini
    refuses a thinkingBudget and a thinkingLevel together."""
    reasoning = body.get("reasoning")
    if not isinstance(reasoning, dict):
        effort = body.get("reasoning_effort")
        if not isinstance(effort, str):
            return None
        reasoning = {"effort": effort}
    effort, budget = reasoning.get("effort"), reasoning.get("max_tokens")
    if effort == "none" or reasoning.get("enabled") is False:
        return {"thinkingBudget": 0}
    config: dict[str, Any] = {"includeThoughts": reasoning.get("exclude") is not True}
    if isinstance(budget, int) and not isinstance(budget, bool):
        config["thinkingBudget"] = budget
    elif effort is not None:
        if effort not in _LEVELS:
            raise BadRequest(f"reasoning.effort: must be one of none, {', '.join(_LEVELS)}", field="reasoning.effort")
        config["thinkingLevel"] = _LEVELS[effort]
    return config
