"""Gemini API dialect of the simulated upstream: POST /v1beta/models/{model}:generateContent
and :streamGenerateContent?alt=sse (also under /v1/).

Bodies, stream chunks and errors follow Google's published Gemini API
(https://ai.google.dev/api/generate-content, https://ai.google.dev/gemini-api/docs/thinking)
closely enough that the official `google-genai` SDK parses them with its own types. A
stream is `data: {GenerateContentResponse}` events separated by CRLF CRLF as Google sends
them, each with cumulative usageMetadata, the last with the finishReason; no [DONE].

Request field names are read in both spellings Google accepts (systemInstruction and
system_instruction); responses use lowerCamelCase, as Google's do.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from farebox.sim.controls import ControlError, Controls, resolve, retry_after_headers
from farebox.sim.flow import Frame, Refusal, stream_frames
from farebox.sim.model import DEFAULT_THINKING, Ask, Generation, Usage, generate
from farebox.sim.text import count_units, seed_for
from farebox.sim.tools import ToolSpec

_FINISH_REASONS = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}

# What the `status` control answers with: Google's canonical status for that HTTP status.
_STATUS_KINDS: dict[int, tuple[str, str]] = {
    400: ("INVALID_ARGUMENT", "Request contains an invalid argument (simulated)."),
    401: ("UNAUTHENTICATED", "API key not valid. Please pass a valid API key (simulated)."),
    403: ("PERMISSION_DENIED", "The caller does not have permission (simulated)."),
    404: ("NOT_FOUND", "Requested entity was not found (simulated)."),
    429: ("RESOURCE_EXHAUSTED",
          "You exceeded your current quota, please check your plan and billing details (simulated)."),
    500: ("INTERNAL", "An internal error has occurred. Please retry (simulated)."),
    503: ("UNAVAILABLE", "The model is overloaded. Please try again later (simulated)."),
    504: ("DEADLINE_EXCEEDED", "Deadline expired before operation could complete (simulated)."),
}

_GARBAGE = (b'data: {"candidates": [\r\n\r\n', b"data: <html>upstream exploded</html>\r\n\r\n")
_FAILURE = b"data: " + orjson.dumps(
    {"error": {"code": 500, "message": _STATUS_KINDS[500][1], "status": "INTERNAL"}}
) + b"\r\n\r\n"


def error_response(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None,
                   extra: dict[str, str] | None = None) -> web.Response:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return web.Response(body=orjson.dumps({"error": error}), status=code, content_type="application/json",
                        headers=extra)


def _refuse(message: str) -> Refusal:
    return Refusal(error_response(400, "INVALID_ARGUMENT", message))


_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")


def field(obj: Any, name: str) -> Any:
    """obj[name] under its lowerCamelCase name or its snake_case twin (Google accepts both)."""
    if not isinstance(obj, dict):
        return None
    value = obj.get(name)
    return value if value is not None else obj.get(_CAMEL.sub("_", name).lower())


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _content_problem(content: Any, where: str) -> str | None:
    if not isinstance(content, dict):
        return f"Invalid value at '{where}': expected a Content object."
    if content.get("role") not in (None, "user", "model"):
        return "Please use a valid role: user, model."
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        return f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty.\n"
    if not all(isinstance(p, dict) for p in parts):
        return f"Invalid value at '{where}.parts': expected Part objects."
    return None


def _problem(body: Any) -> str | None:
    """The message of the 400 INVALID_ARGUMENT Google would give, or None if acceptable."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object."
    contents = body.get("contents")
    if contents is None or contents == []:
        return "* GenerateContentRequest.contents: contents is not specified\n"
    if not isinstance(contents, list):
        return "Invalid value at 'contents': expected a list of Content objects."
    for i, content in enumerate(contents):
        problem = _content_problem(content, f"contents[{i}]")
        if problem is not None:
            return problem
    system = field(body, "systemInstruction")
    if system is not None and (problem := _content_problem(system, "system_instruction")) is not None:
        return problem
    config = field(body, "generationConfig")
    if config is not None and not isinstance(config, dict):
        return "Invalid value at 'generation_config': expected a GenerationConfig object."
    cap = field(config, "maxOutputTokens")
    if cap is not None and (not _is_int(cap) or cap < 1):
        return "* GenerateContentRequest.generation_config.max_output_tokens: max_output_tokens must be positive.\n"
    stops = field(config, "stopSequences")
    if stops is not None and not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        return "Invalid value at 'generation_config.stop_sequences': expected a list of strings."
    if body.get("tools") is not None and not isinstance(body["tools"], list):
        return "Invalid value at 'tools': expected a list of Tool objects."
    return None


def _parts_units(content: Any) -> tuple[str, int]:
    """(text, images) of a Content: text parts; inline and file data parts count as images.
    Function calls and responses are structured data, not text, and are not counted."""
    texts: list[str] = []
    images = 0
    for part in content.get("parts") or ():
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif field(part, "inlineData") is not None or field(part, "fileData") is not None:
            images += 1
    return "".join(texts), images


def units(body: dict[str, Any]) -> list[tuple[str, int]]:
    """(text, images) per content, the system instruction first when there is one."""
    system = field(body, "systemInstruction")
    return ([_parts_units(system)] if system is not None else []) + [_parts_units(c) for c in body["contents"]]


def _tools(body: dict[str, Any]) -> tuple[ToolSpec, ...]:
    specs = []
    for tool in body.get("tools") or ():
        for declaration in field(tool, "functionDeclarations") or ():
            if isinstance(declaration, dict) and isinstance(declaration.get("name"), str):
                schema = field(declaration, "parameters") or field(declaration, "parametersJsonSchema")
                specs.append(ToolSpec(declaration["name"], schema))
    return tuple(specs)


def _thinking(config: Any) -> tuple[int, bool]:
    """(reasoning tokens the thinking config asks for, whether thoughts are returned)."""
    thinking = field(config, "thinkingConfig")
    if not isinstance(thinking, dict):
        return 0, False
    include = field(thinking, "includeThoughts") is True
    budget = field(thinking, "thinkingBudget")
    if budget == 0:  # thinking off
        return 0, include
    if _is_int(budget) and budget > 0:
        return min(DEFAULT_THINKING, budget), include
    # A dynamic budget (-1), a thinking level, or only includeThoughts: the model thinks.
    on = budget is not None or field(thinking, "thinkingLevel") is not None or include
    return (DEFAULT_THINKING if on else 0), include


def _awaiting_answer(last: dict[str, Any]) -> bool:
    results = any(field(part, "functionResponse") is not None for part in last["parts"])
    return last.get("role", "user") == "user" and not results


def ask(model: str, body: dict[str, Any], counted: int) -> tuple[Ask, bool]:
    """What a (validated) generateContent request asks of the simulated model, and whether
    thoughts are to be returned."""
    config = field(body, "generationConfig")
    thinking, include_thoughts = _thinking(config)
    calling = field(field(body, "toolConfig"), "functionCallingConfig")
    mode = field(calling, "mode")
    allowed = field(calling, "allowedFunctionNames")
    forced = allowed[0] if mode == "ANY" and isinstance(allowed, list) and allowed else None
    return Ask(
        seed=seed_for(model, [field(body, "systemInstruction"), body["contents"]]),
        prompt_tokens=counted,
        cap=field(config, "maxOutputTokens"),
        thinking=thinking,
        tools=_tools(body),
        forced_tool=forced if isinstance(forced, str) else None,
        tools_allowed=mode != "NONE",
        awaiting_answer=_awaiting_answer(body["contents"][-1]),
        stop=tuple(field(config, "stopSequences") or ()),
    ), include_thoughts


def _usage_metadata(usage: Usage, thoughts: int, candidates: int) -> dict[str, int]:
    """Gemini's usageMetadata: promptTokenCount includes cached tokens, candidatesTokenCount
    excludes thoughts, totalTokenCount adds them all up."""
    meta = {"promptTokenCount": usage.prompt, "candidatesTokenCount": candidates,
            "totalTokenCount": usage.prompt + candidates + thoughts}
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    if usage.cached:
        meta["cachedContentTokenCount"] = usage.cached
    return meta


@dataclass(slots=True)
class ContentAnswer:
    ctl: Controls
    streaming: bool
    headers: dict[str, str]
    response_id: str
    model: str
    gen: Generation
    include_thoughts: bool

    @property
    def prompt_tokens(self) -> int:
        return self.gen.prompt_tokens

    @property
    def output_tokens(self) -> int:
        return self.gen.output_tokens

    def _response(self, parts: list[dict[str, Any]], finish: str | None, thoughts: int, candidates: int) -> bytes:
        content: dict[str, Any] = {"role": "model"}
        if parts:
            content["parts"] = parts  # Google leaves parts out of an empty content
        candidate: dict[str, Any] = {"content": content}
        if finish is not None:
            candidate["finishReason"] = finish
        candidate["index"] = 0
        response: dict[str, Any] = {"candidates": [candidate]}
        if self.gen.usage is not None:
            response["usageMetadata"] = _usage_metadata(self.gen.usage, thoughts, candidates)
        response["modelVersion"] = self.model
        response["responseId"] = self.response_id
        return orjson.dumps(response)

    def _finish(self) -> str:
        return _FINISH_REASONS[self.gen.finish]

    def body(self) -> bytes:
        gen = self.gen
        parts: list[dict[str, Any]] = []
        if gen.reasoning and self.include_thoughts:
            parts.append({"text": "".join(gen.reasoning), "thought": True})
        if gen.content:
            parts.append({"text": "".join(gen.content)})
        call_tokens = 0
        if gen.tool_call is not None:
            parts.append({"functionCall": {"name": gen.tool_call.name, "args": gen.tool_call.arguments}})
            call_tokens = len(gen.tool_call.pieces)
        return self._response(parts, self._finish(), len(gen.reasoning), len(gen.content) + call_tokens)

    @staticmethod
    def _sse(data: bytes) -> bytes:
        return b"data: " + data + b"\r\n\r\n"

    def frames(self) -> Iterator[Frame]:
        gen = self.gen
        thoughts = candidates = 0
        for token in gen.reasoning:
            thoughts += 1
            if self.include_thoughts:
                yield self._sse(self._response([{"text": token, "thought": True}], None, thoughts, 0)), 1
            else:
                yield b"", 1  # thinking still takes its time; its count shows on the next chunk
        for token in gen.content:
            candidates += 1
            yield self._sse(self._response([{"text": token}], None, thoughts, candidates)), 1
        if gen.tool_call is not None:
            # Gemini sends a function call whole, in one part of one chunk.
            call = gen.tool_call
            candidates += len(call.pieces)
            part = {"functionCall": {"name": call.name, "args": call.arguments}}
            yield self._sse(self._response([part], None, thoughts, candidates)), len(call.pieces)

    def closing(self) -> Iterator[bytes]:
        gen = self.gen
        candidates = len(gen.content) + (len(gen.tool_call.pieces) if gen.tool_call else 0)
        yield self._sse(self._response([{"text": ""}], self._finish(), len(gen.reasoning), candidates))

    async def stream(self, request: web.Request) -> tuple[web.StreamResponse, str]:
        return await stream_frames(request, self, self.frames(), self.closing(), garbage=_GARBAGE, failure=_FAILURE)


class GenerateContentDialect:
    """POST .../models/{model}:generateContent (streaming=False) or :streamGenerateContent."""

    def __init__(self, streaming: bool) -> None:
        self.streaming = streaming

    def api_key(self, request: web.Request) -> str | None:
        """Google takes the key from the x-goog-api-key header or the `key` query parameter."""
        return request.headers.get("x-goog-api-key") or request.query.get("key")

    def key_error(self, key: str) -> web.Response:
        """Google answers an unknown key with a 400 INVALID_ARGUMENT (not a 401) whose
        ErrorInfo reason, API_KEY_INVALID, is what tells it apart from a bad request."""
        message = "API key not valid. Please pass a valid API key."
        details = [
            {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
             "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}},
            {"@type": "type.googleapis.com/google.rpc.LocalizedMessage", "locale": "en-US", "message": message},
        ]
        return error_response(400, "INVALID_ARGUMENT", message, details)

    def answer(self, request: web.Request, raw: bytes) -> ContentAnswer:
        if self.streaming and request.query.get("alt") != "sse":
            # Without alt=sse Google streams one JSON array; the sim speaks only the SSE form.
            raise _refuse("farebox sim streams streamGenerateContent only as server-sent events: add ?alt=sse.")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _refuse("Invalid JSON payload received. Unexpected token.") from None
        problem = _problem(body)
        if problem is not None:
            raise _refuse(problem)
        parts = units(body)
        try:
            ctl = resolve(request.match_info.get("controls"), body.get("sim"), (text for text, _ in parts))
        except ControlError as exc:
            raise _refuse(str(exc)) from None
        model = request.match_info["model"]
        plan, include_thoughts = ask(model, body, count_units(parts))
        return ContentAnswer(
            ctl=ctl,
            streaming=self.streaming,
            headers={},
            response_id=secrets.token_urlsafe(16),
            model=model,
            gen=generate(plan, ctl),
            include_thoughts=include_thoughts,
        )

    def status_error(self, status: int, retry_after: int | None) -> web.Response:
        default = ("INVALID_ARGUMENT", f"Simulated client error {status}.") if status < 500 else (
            "INTERNAL", _STATUS_KINDS[500][1])
        kind, message = _STATUS_KINDS.get(status, default)
        headers = retry_after_headers(status, retry_after)
        details = None
        if "retry-after" in headers and status == 429:
            # Google says when to come back inside the error, as a RetryInfo detail.
            delay = f"{headers['retry-after']}s"
            details = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": delay}]
        return error_response(status, kind, message, details, headers)

    def context_error(self, prompt_tokens: int, limit: int) -> web.Response:
        message = f"The input token count ({prompt_tokens}) exceeds the maximum number of tokens allowed ({limit})."
        return error_response(400, "INVALID_ARGUMENT", message)
