"""OpenAI legacy text completions: POST /v1/completions.

Bodies and chunks follow https://platform.openai.com/docs/api-reference/completions:
`object: "text_completion"`, choices of {text, index, logprobs, finish_reason}. As in the
real API, `max_tokens` defaults to 16. One prompt per request (a string, one token array,
or a one-element list of either): batches are refused like chat's n>1.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from farebox.sim.controls import Controls
from farebox.sim.flow import Frame, Refusal, stream_frames
from farebox.sim.model import Ask, Generation, generate
from farebox.sim.openai import (
    STREAM_FAILURE,
    OpenAIErrors,
    Problem,
    bad_request,
    below_min,
    controls,
    headers,
    invalid,
    is_int,
    missing,
    model_problem,
    read_body,
    stop_problem,
    stop_sequences,
    stream_problem,
    usage_body,
)
from farebox.sim.text import count_raw_tokens, seed_for

DEFAULT_MAX_TOKENS = 16  # the legacy API's own default

_GARBAGE = (b'data: {"id": "cmpl-garbage", "choices": [\n\n', b"data: <html>upstream exploded</html>\n\n",
            b"data: [DONE]\n\n")


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(is_int(t) for t in value)


def prompt_of(value: Any) -> str | list[int] | None:
    """The one prompt of a `prompt` value, or None when it is not one prompt."""
    if isinstance(value, str) or _is_tokens(value):
        return value
    if isinstance(value, list) and len(value) == 1 and (isinstance(value[0], str) or _is_tokens(value[0])):
        return value[0]
    return None


def _problem(body: Any) -> Problem | None:
    problem = model_problem(body)
    if problem is not None:
        return problem
    prompt = body.get("prompt")
    if prompt is None:
        return missing("prompt")
    if prompt_of(prompt) is None:
        if isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, (str, list)) for p in prompt):
            return "farebox sim supports one prompt per request.", "prompt", "unsupported_value"
        return invalid("prompt", "a string, an array of strings or an array of token arrays", prompt)
    value = body.get("max_tokens")
    if value is not None and not is_int(value):
        return invalid("max_tokens", "an integer", value)
    if value is not None and value < 0:
        return below_min("max_tokens", value, 0)
    for name in ("n", "best_of"):
        if body.get(name) not in (None, 1):
            return f"farebox sim supports only {name}=1.", name, "unsupported_value"
    return stream_problem(body) or stop_problem(body)


@dataclass(slots=True)
class TextAnswer:
    ctl: Controls
    streaming: bool
    headers: dict[str, str]
    id: str
    created: int
    model: str
    gen: Generation
    usage: dict[str, Any] | None
    include_usage: bool

    @property
    def prompt_tokens(self) -> int:
        return self.gen.prompt_tokens

    @property
    def output_tokens(self) -> int:
        return self.gen.output_tokens

    def _envelope(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices}

    def body(self) -> bytes:
        choice = {"text": "".join(self.gen.content), "index": 0, "logprobs": None, "finish_reason": self.gen.finish}
        body = self._envelope([choice])
        if self.usage is not None:
            body["usage"] = self.usage
        return orjson.dumps(body)

    def _chunk(self, text: str, finish: str | None) -> bytes:
        chunk = self._envelope([{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}])
        if self.include_usage:
            chunk["usage"] = None
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def frames(self) -> Iterator[Frame]:
        # Legacy completions have no reasoning field: reasoning tokens are hidden, but take time.
        for _ in self.gen.reasoning:
            yield b"", 1
        for token in self.gen.content:
            yield self._chunk(token, None), 1

    def closing(self) -> Iterator[bytes]:
        yield self._chunk("", self.gen.finish)
        if self.include_usage and self.usage is not None:
            yield b"data: " + orjson.dumps({**self._envelope([]), "usage": self.usage}) + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def stream(self, request: web.Request) -> tuple[web.StreamResponse, str]:
        return await stream_frames(request, self, self.frames(), self.closing(), garbage=_GARBAGE,
                                   failure=STREAM_FAILURE)


class CompletionsDialect(OpenAIErrors):
    """POST /v1/completions."""

    prompt_param = "prompt"

    def answer(self, request: web.Request, raw: bytes) -> TextAnswer:
        body = read_body(raw)
        problem = _problem(body)
        if problem is not None:
            raise Refusal(bad_request(*problem))
        prompt = prompt_of(body["prompt"])
        assert prompt is not None
        ctl = controls(request, body, [prompt] if isinstance(prompt, str) else [])
        # Tool calls don't exist here, so no tools are ever declared.
        cap = body.get("max_tokens")
        ask = Ask(
            seed=seed_for(body["model"], prompt),
            prompt_tokens=count_raw_tokens(prompt),
            cap=DEFAULT_MAX_TOKENS if cap is None else cap,
            stop=stop_sequences(body),
        )
        gen = generate(ask, ctl)
        usage = usage_body(gen.usage) if gen.usage is not None else None
        options = body.get("stream_options") or {}
        return TextAnswer(
            ctl=ctl,
            streaming=body.get("stream") is True,
            headers=headers(),
            id="cmpl-" + secrets.token_hex(12),
            created=int(time.time()),
            model=body["model"],
            gen=gen,
            usage=usage,
            include_usage=usage is not None and options.get("include_usage") is True,
        )
