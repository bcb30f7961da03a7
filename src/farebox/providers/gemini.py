"""The Google Gemini dialect: `models/{model}:generateContent` and its SSE twin
`:streamGenerateContent?alt=sse`, translated to and from the neutral OpenAI shapes.

Requests are translated in gemini_request.py (`to_gemini`). Nothing but what Gemini
knows passes through: it rejects fields it does not know.

Replies: text parts are the content, `thought: true` parts the reasoning, `functionCall`
parts the tool calls. Gemini 3 refuses a conversation whose earlier function calls come
back without their `thoughtSignature`, so a reply carries each call's signature in
`reasoning_details` as `{type: "reasoning.encrypted", data, id: <tool call id>,
format: "google-gemini-v1"}` (what OpenRouter does), and a request reads an assistant
message's `reasoning_details` back onto the calls with those ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from farebox.clock import Clock
from farebox.errors import ProviderError
from farebox.ids import Ids
from farebox.ledger.pricing import Usage
from farebox.providers.base import Call, Reply, count, is_count
from farebox.providers.faults import Fault, by_status, provider_error
from farebox.providers.gemini_request import SIGNATURE_FORMAT, to_gemini
from farebox.providers.http import TranslatedStream, Upstreams, invalid_response, read_json, read_line

_IDS = Ids()

_FINISHES = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    # Stopped at the per-request token limit with more to say: a truncation.
    "CONTINUATION": "length",
    "SAFETY": "content_filter", "RECITATION": "content_filter", "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter", "SPII": "content_filter", "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter", "IMAGE_RECITATION": "content_filter",
    "LANGUAGE": "content_filter",
    # The model produced something unusable: nothing the client can act on.
    "MALFORMED_FUNCTION_CALL": "error", "UNEXPECTED_TOOL_CALL": "error", "TOO_MANY_TOOL_CALLS": "error",
    "MISSING_THOUGHT_SIGNATURE": "error", "MALFORMED_RESPONSE": "error",
}


# -- reply -----------------------------------------------------------------------------
def usage_from_gemini(raw: Any) -> Usage | None:
    """A `usageMetadata` object in OpenAI's convention; None when absent or malformed.

    Gemini's promptTokenCount already includes cachedContentTokenCount, and
    totalTokenCount = promptTokenCount + toolUsePromptTokenCount + candidatesTokenCount +
    thoughtsTokenCount: tool-use prompt tokens (results of Google's own tools) are input,
    thoughts are output that candidatesTokenCount leaves out."""
    if not isinstance(raw, dict) or not is_count(raw.get("promptTokenCount")):
        return None
    thoughts = count(raw.get("thoughtsTokenCount"))
    return Usage(
        prompt_tokens=raw["promptTokenCount"] + count(raw.get("toolUsePromptTokenCount")),
        completion_tokens=count(raw.get("candidatesTokenCount")) + thoughts,
        cached_tokens=count(raw.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )



def finish_reason(native: str, has_tool_calls: bool) -> str:
    """Gemini's finishReason normalized: STOP ends tool-call turns too, so the calls decide."""
    if native == "STOP" and has_tool_calls:
        return "tool_calls"
    return _FINISHES.get(native, "stop")


@dataclass(slots=True)
class _Output:
    """What one candidate's parts say."""

    reasoning: str = ""
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)  # signatures as reasoning_details


def _read_parts(content: Any, calls_before: int, details_before: int) -> _Output:
    """`calls_before`/`details_before` number the calls and details of a stream across chunks."""
    parts = content.get("parts") if isinstance(content, dict) else None
    if parts is None:
        return _Output()  # e.g. a SAFETY stop, or thinking that used every token
    if not isinstance(parts, list):
        raise ValueError("content.parts is not a list")
    out = _Output()
    reasoning, text = [], []
    for part in parts:
        if not isinstance(part, dict):
            raise ValueError("a part is not an object")
        call = part.get("functionCall")
        if call is not None:
            if not isinstance(call, dict) or not isinstance(call.get("name"), str):
                raise ValueError("functionCall without a name")
            args = call.get("args") or {}
            number = calls_before + len(out.tool_calls)
            call_id = call.get("id")
            if not isinstance(call_id, str) or not call_id:
                call_id = f"call_{number}_{_IDS.hex(6)}"
            out.tool_calls.append({"id": call_id, "type": "function",
                                   "function": {"name": call["name"], "arguments": orjson.dumps(args).decode()}})
            signature = part.get("thoughtSignature")
            if isinstance(signature, str) and signature:
                out.details.append({"type": "reasoning.encrypted", "data": signature, "id": call_id,
                                    "format": SIGNATURE_FORMAT, "index": details_before + len(out.details)})
        elif isinstance(part.get("text"), str):
            (reasoning if part.get("thought") is True else text).append(part["text"])
    out.reasoning, out.text = "".join(reasoning), "".join(text)
    return out


def _candidate(data: dict[str, Any]) -> dict[str, Any] | None:
    candidates = data.get("candidates")
    if candidates is None or candidates == []:
        return None
    if not isinstance(candidates, list) or not isinstance(candidates[0], dict):
        raise ValueError("candidates is not a list of objects")
    return candidates[0]


def _block_reason(data: dict[str, Any]) -> str | None:
    feedback = data.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    return reason if isinstance(reason, str) and reason else None


def _native_finish(candidate: dict[str, Any]) -> str | None:
    native = candidate.get("finishReason")
    if native is not None and not isinstance(native, str):
        raise ValueError("finishReason is not a string")
    return native or None


def from_gemini(data: Any, model: str) -> tuple[dict[str, Any], Usage | None, str | None]:
    """A GenerateContentResponse as an OpenAI chat.completion body (without `created`: a
    Gemini response carries no time, the caller stamps its own), its usage and its
    `responseId`. Only the first candidate is read: we never ask for more. Raises
    ValueError for a body that is not a valid response."""
    if not isinstance(data, dict):
        raise ValueError("the response is not an object")
    upstream_id = data.get("responseId") if isinstance(data.get("responseId"), str) else None
    candidate = _candidate(data)
    message: dict[str, Any] = {"role": "assistant", "content": "", "reasoning": None}
    if candidate is None:
        native = _block_reason(data)
        if native is None:
            raise ValueError("neither candidates nor a blocked prompt")
        finish = "content_filter"  # the prompt itself was refused
    else:
        out = _read_parts(candidate.get("content"), 0, 0)
        native = _native_finish(candidate)
        finish = finish_reason(native or "", bool(out.tool_calls))
        message["content"] = None if out.tool_calls and not out.text else out.text
        message["reasoning"] = out.reasoning or None
        if out.tool_calls:
            message["tool_calls"] = out.tool_calls
        if out.details:
            message["reasoning_details"] = out.details
    body = {"id": upstream_id, "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish, "native_finish_reason": native,
                         "logprobs": None}]}
    return body, usage_from_gemini(data.get("usageMetadata")), upstream_id


class StreamTranslator:
    """Streamed GenerateContentResponses, each a delta of the candidate, as OpenAI chunks.

    `usage` is the latest usageMetadata (Gemini repeats it cumulatively); `done` is set by
    the first finishReason (or a blocked prompt), after which chunks may still bring usage
    but no content."""

    def __init__(self, model: str, created: int) -> None:
        self.model, self.created = model, created
        self.upstream_id: str | None = None
        self.usage: Usage | None = None
        self.done = False
        self._announced = False  # the first chunk carries the assistant role
        self._calls = 0          # tool calls so far: the next call's index
        self._details = 0        # reasoning_details so far

    def feed(self, data: Any) -> list[dict[str, Any]]:
        """Chunks for one streamed response (often one, none for a usage-only tail).
        Raises ValueError for a body that is not a valid response."""
        if not isinstance(data, dict):
            raise ValueError("the chunk is not an object")
        if self.upstream_id is None and isinstance(data.get("responseId"), str):
            self.upstream_id = data["responseId"]
        usage = usage_from_gemini(data.get("usageMetadata"))
        if usage is not None:
            self.usage = usage
        if self.done:
            return []
        candidate = _candidate(data)
        if candidate is None:
            block = _block_reason(data)
            if block is None:
                return []
            self.done = True
            return [self._chunk({"content": ""}, "content_filter", block)]
        out = _read_parts(candidate.get("content"), self._calls, self._details)
        native = _native_finish(candidate)
        delta: dict[str, Any] = {}
        if out.reasoning:
            delta["reasoning"] = out.reasoning
        if out.text:
            delta["content"] = out.text
        if out.tool_calls:
            delta["tool_calls"] = [{"index": self._calls + n, **call} for n, call in enumerate(out.tool_calls)]
            self._calls += len(out.tool_calls)
        if out.details:
            delta["reasoning_details"] = out.details
            self._details += len(out.details)
        if native is None:
            return [self._chunk(delta, None, None)] if delta else []
        self.done = True
        return [self._chunk(delta, finish_reason(native, self._calls > 0), native)]

    def _chunk(self, delta: dict[str, Any], finish: str | None, native: str | None) -> dict[str, Any]:
        if not self._announced:
            self._announced = True
            delta = {"role": "assistant", **delta}
        return {"id": self.upstream_id, "object": "chat.completion.chunk", "created": self.created,
                "model": self.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish,
                                                  "native_finish_reason": native, "logprobs": None}]}


# -- errors ----------------------------------------------------------------------------
# google.rpc status names as OpenRouter error types.
_STATUSES = {
    "INVALID_ARGUMENT": "invalid_request",
    "FAILED_PRECONDITION": "invalid_request",  # e.g. the free tier is not offered in the caller's region
    "UNAUTHENTICATED": "authentication",
    "PERMISSION_DENIED": "permission_denied",
    "NOT_FOUND": "not_found",
    "RESOURCE_EXHAUSTED": "rate_limit_exceeded",
    "INTERNAL": "provider_unavailable",
    "UNAVAILABLE": "provider_overloaded",
    "DEADLINE_EXCEEDED": "timeout",
}


def read_fault(status: int, raw: Any) -> Fault:
    """Read a Gemini error body, `{"error": {code, message, status, details}}`, which Gemini
    sometimes wraps in a one-element array. `Fault.code` is the status name."""
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]
    error = raw.get("error") if isinstance(raw, dict) else None
    if not isinstance(error, dict):
        error = {}
    code = error.get("status") if isinstance(error.get("status"), str) else None
    message = error.get("message")
    message = message if isinstance(message, str) else (raw if isinstance(raw, str) and raw else None)
    error_type = _STATUSES.get(code or "") or by_status(status)
    if error_type == "invalid_request":
        # Gemini answers a bad key and an over-long prompt as INVALID_ARGUMENT too; both
        # mean something else for failover.
        if _bad_api_key(error, message):
            error_type = "authentication"
        elif message and "input token count" in message.lower() and "exceeds" in message.lower():
            error_type = "context_length_exceeded"
    return Fault(error_type, code, message)


def _bad_api_key(error: dict[str, Any], message: str | None) -> bool:
    details = error.get("details")
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and detail.get("reason") == "API_KEY_INVALID":
            return True
    return message is not None and "api key not valid" in message.lower()


def _stream_status(error: Any) -> int:
    """A mid-stream error has no HTTP status of its own; its `code` is one."""
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) and 400 <= code <= 599 else 502


# -- wire ------------------------------------------------------------------------------
class GeminiDialect:
    def __init__(self, upstreams: Upstreams, clock: Clock | None = None) -> None:
        self.upstreams = upstreams
        self.clock = clock or Clock()

    def request(self, call: Call, stream: bool) -> tuple[str, bytes, dict[str, str]]:
        endpoint = call.endpoint
        method = "streamGenerateContent?alt=sse" if stream else "generateContent"
        url = f"{endpoint.provider.base_url}/models/{endpoint.upstream_model}:{method}"
        headers = {"Content-Type": "application/json"}
        if call.credential:
            headers["x-goog-api-key"] = call.credential
        return url, orjson.dumps(to_gemini(call.body, call.user_tag)), headers

    async def complete(self, call: Call) -> Reply:
        provider = call.endpoint.provider
        url, body, headers = self.request(call, stream=False)
        # A whole answer is its first byte: the attempt's budget bounds all of it.
        response = await self.upstreams.post(provider, url, body, headers, read_fault, timeout_s=call.budget_s)
        data = await read_json(provider, response)
        try:
            reply, usage, upstream_id = from_gemini(data, call.endpoint.upstream_model)
        except ValueError:
            raise invalid_response(provider, orjson.dumps(data)) from None
        reply["created"] = int(self.clock.now())
        return Reply(body=reply, usage=usage, upstream_id=upstream_id)

    async def open_stream(self, call: Call) -> GeminiStream:
        provider = call.endpoint.provider
        url, body, headers = self.request(call, stream=True)
        response = await self.upstreams.post(provider, url, body, headers, read_fault, first_byte_s=call.first_byte_s)
        return GeminiStream(provider, response, StreamTranslator(call.endpoint.upstream_model, int(self.clock.now())))


class GeminiStream(TranslatedStream):
    """Server-sent `data:` lines of streamed GenerateContentResponses, as OpenAI chunks.

    Gemini sends no [DONE]: the end of the body after a finishReason is the normal end, and
    reading on to it collects the usage that may follow the finish."""

    translator: StreamTranslator

    async def next(self) -> dict[str, Any] | None:
        while not self._pending:
            if self._closed:
                return None
            line = self.response.buffered_line() or await read_line(self.provider, self.response)
            if not line:
                if self.translator.done:
                    self._finished()
                    return None
                self.close()
                raise ProviderError(f"{self.provider.name} closed the stream before it finished",
                                    provider_name=self.provider.name, raw="stream ended without a finishReason")
            if not line.startswith(b"data:"):
                continue  # blank separators and any other SSE fields
            payload = line[5:].strip()
            try:
                data = orjson.loads(payload)
            except orjson.JSONDecodeError:
                self.close()
                raise invalid_response(self.provider, payload) from None
            error = data.get("error") if isinstance(data, dict) else None
            if error:
                self.close()
                raise provider_error(self.provider.name, read_fault(_stream_status(error), data), error)
            try:
                self._pending.extend(self.translator.feed(data))
            except ValueError:
                self.close()
                raise invalid_response(self.provider, payload) from None
        return self._pending.popleft()
