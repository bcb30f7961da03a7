"""Validation of chat requests: types and ranges of the fields we know, with errors that
name the field (`messages[2].content[0].text`). Unknown fields are left alone: they pass
through to the provider."""

from __future__ import annotations

from typing import Any

from farebox.errors import BadRequest

ROLES = ("system", "developer", "user", "assistant", "tool")
PART_TYPES = ("text", "image_url", "input_audio", "file", "video_url")
RESPONSE_FORMATS = ("text", "json_object", "json_schema", "grammar", "python")
MODELS_MAX = 3

# field -> (kind, low, high); kind "number" admits ints and floats, never booleans.
RANGES: dict[str, tuple[str, float | None, float | None]] = {
    "temperature": ("number", 0, 2),
    "top_p": ("number", 0, 1),
    "top_k": ("int", 0, None),
    "frequency_penalty": ("number", -2, 2),
    "presence_penalty": ("number", -2, 2),
    "repetition_penalty": ("number", 0, 2),
    "min_p": ("number", 0, 1),
    "top_a": ("number", 0, 1),
    "seed": ("int", None, None),
    "n": ("int", 1, 128),
    "top_logprobs": ("int", 0, 20),
    "max_tokens": ("int", 1, None),
    "max_completion_tokens": ("int", 1, None),
}
TYPES: dict[str, tuple[type, ...]] = {
    "stream": (bool,), "logprobs": (bool,), "parallel_tool_calls": (bool,), "user": (str,),
    "logit_bias": (dict,), "metadata": (dict,), "provider": (dict,), "reasoning": (dict,),
    "stream_options": (dict,), "usage": (dict,), "transforms": (list,), "plugins": (list,),
    "tools": (list,), "session_id": (str,), "response_format": (dict,), "prediction": (dict,),
    "modalities": (list,), "route": (str,), "debug": (dict,), "trace": (dict,),
}
_TYPE_NAMES = {bool: "a boolean", str: "a string", dict: "an object", list: "an array"}


def _fail(path: str, message: str) -> BadRequest:
    return BadRequest(f"{path}: {message}", field=path)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def validate_chat(body: dict[str, Any]) -> None:
    _validate_fields(body)
    _validate_models(body)
    _validate_messages(body.get("messages"))


def validate_completion(body: dict[str, Any]) -> None:
    """The legacy text completions API: the chat fields that apply, and one prompt."""
    _validate_fields(body)
    _validate_models(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # a batch of one is one prompt
    if isinstance(prompt, str) or _is_tokens(prompt):
        body["prompt"] = prompt
    elif isinstance(prompt, list):
        raise _fail("prompt", "send one prompt per request (batches of prompts are not supported)")
    else:
        raise _fail("prompt", "expected a string or an array of token ids")
    if body.get("n") not in (None, 1) or body.get("best_of") not in (None, 1):
        raise _fail("n", "n and best_of must be 1 for legacy completions")


ENCODING_FORMATS = ("float", "base64")
EMBEDDING_INPUTS_MAX = 2048  # OpenAI's limit on inputs per request


def validate_embedding(body: dict[str, Any]) -> None:
    _validate_models(body)
    for name, kinds in (("user", (str,)), ("provider", (dict,)), ("input_type", (str,))):
        if body.get(name) is not None and not isinstance(body[name], kinds):
            raise _fail(name, f"expected {_TYPE_NAMES[kinds[0]]}, got {type(body[name]).__name__}")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int) or isinstance(dimensions, bool) or dimensions < 1):
        raise _fail("dimensions", f"expected a positive integer, got {dimensions!r}")
    if body.get("encoding_format") not in (None, *ENCODING_FORMATS):
        raise _fail("encoding_format", f"must be one of {', '.join(ENCODING_FORMATS)}")
    inputs = body.get("input")
    if isinstance(inputs, str) or _is_tokens(inputs):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise _fail("input", "expected a string, an array of strings or an array of token arrays")
    if len(inputs) > EMBEDDING_INPUTS_MAX:
        raise _fail("input", f"at most {EMBEDDING_INPUTS_MAX} inputs per request, got {len(inputs)}")
    for i, item in enumerate(inputs):
        if isinstance(item, str):
            if not item:
                raise _fail(f"input[{i}]", "must not be empty")
        elif not _is_tokens(item):
            raise _fail(f"input[{i}]", "expected a string or an array of token ids")


def _is_tokens(value: Any) -> bool:
    return (isinstance(value, list) and bool(value)
            and all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value))


def _validate_fields(body: dict[str, Any]) -> None:
    for name, (kind, low, high) in RANGES.items():
        if name not in body or body[name] is None:
            continue
        value = body[name]
        if kind == "int" and (not isinstance(value, int) or isinstance(value, bool)):
            raise _fail(name, f"expected an integer, got {value!r}")
        if kind == "number" and not _is_number(value):
            raise _fail(name, f"expected a number, got {value!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise _fail(name, f"must be {bounds}, got {value}")
    for name, kinds in TYPES.items():
        if name in body and body[name] is not None and not isinstance(body[name], kinds):
            raise _fail(name, f"expected {_TYPE_NAMES[kinds[0]]}, got {type(body[name]).__name__}")

    stop = body.get("stop")
    if stop is not None and not isinstance(stop, str) and (
            not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) for s in stop)):
        raise _fail("stop", "expected a string or an array of at most 4 strings")
    if isinstance(body.get("session_id"), str) and len(body["session_id"]) > 256:
        raise _fail("session_id", "must be at most 256 characters")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in RESPONSE_FORMATS:
        raise _fail("response_format.type", f"must be one of {', '.join(RESPONSE_FORMATS)}")
    choice = body.get("tool_choice")
    if choice is not None and not (choice in ("none", "auto", "required") or isinstance(choice, dict)):
        raise _fail("tool_choice", "must be none, auto, required or an object naming a function")
    for i, tool in enumerate(body.get("tools") or ()):
        if not isinstance(tool, dict):
            raise _fail(f"tools[{i}]", "expected an object")


def _validate_models(body: dict[str, Any]) -> None:
    model = body.get("model")
    models = body.get("models")
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise _fail("model", "expected a model id such as \"openai/gpt-4o-mini\"")
    if models is not None:
        if not isinstance(models, list) or not all(isinstance(m, str) and m for m in models):
            raise _fail("models", "expected an array of model ids")
        if len(models) > MODELS_MAX:
            raise BadRequest("'models' array must have 3 items or fewer.", field="models")
    if model is None and not models:
        raise _fail("model", "a model is required")


def _validate_messages(messages: Any) -> None:
    if messages is None:
        raise _fail("messages", "is required")
    if not isinstance(messages, list) or not messages:
        raise _fail("messages", "expected a non-empty array of messages")
    for i, message in enumerate(messages):
        path = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _fail(path, "expected an object")
        role = message.get("role")
        if role not in ROLES:
            raise _fail(f"{path}.role", f"must be one of {', '.join(ROLES)}, got {role!r}")
        content = message.get("content")
        if content is None:
            if role != "assistant":
                raise _fail(f"{path}.content", "is required")
        elif isinstance(content, list):
            for j, part in enumerate(content):
                _validate_part(f"{path}.content[{j}]", part)
        elif not isinstance(content, str):
            raise _fail(f"{path}.content", "expected a string or an array of content parts")
        if role == "tool" and not isinstance(message.get("tool_call_id"), str):
            raise _fail(f"{path}.tool_call_id", "a tool message needs the id of the call it answers")
        if "name" in message and not isinstance(message["name"], str):
            raise _fail(f"{path}.name", "expected a string")
        calls = message.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
            raise _fail(f"{path}.tool_calls", "expected an array of tool calls")


def _validate_part(path: str, part: Any) -> None:
    if not isinstance(part, dict):
        raise _fail(path, "expected a content part object")
    kind = part.get("type")
    if kind not in PART_TYPES:
        raise _fail(f"{path}.type", f"must be one of {', '.join(PART_TYPES)}, got {kind!r}")
    if kind == "text" and not isinstance(part.get("text"), str):
        raise _fail(f"{path}.text", "expected a string")
    if kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        if not isinstance(url, str) or not url:
            raise _fail(f"{path}.image_url.url", "expected an http(s) or data: URL")
