"""OpenAI embeddings: POST /v1/embeddings.

Shape per https://platform.openai.com/docs/api-reference/embeddings: a list of
{object: "embedding", index, embedding}, the model and {prompt_tokens, total_tokens}.
Vectors are deterministic unit vectors (a pure function of model, input and dimensions),
float32 like OpenAI's; `encoding_format: "base64"` sends their little-endian float32 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import math
import random
import sys
from array import array
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from farebox.sim.controls import Controls
from farebox.sim.flow import Refusal
from farebox.sim.openai import (
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
)
from farebox.sim.text import count_raw_tokens

DEFAULT_DIMENSIONS = 256
MAX_DIMENSIONS = 8192
MAX_INPUTS = 2048  # OpenAI's own limit on inputs per request


def _inputs(value: Any) -> list[str] | list[list[int]] | None:
    """`input` as a list of texts or of token arrays, or None when it is neither."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return value
        if all(is_int(v) for v in value):
            return [value]
        if all(isinstance(v, list) and v and all(is_int(t) for t in v) for v in value):
            return value
    return None


def _problem(body: Any) -> Problem | None:
    problem = model_problem(body)
    if problem is not None:
        return problem
    if body.get("input") is None:
        return missing("input")
    inputs = _inputs(body["input"])
    if inputs is None:
        return invalid("input", "a string, an array of strings or an array of token arrays", body["input"])
    if len(inputs) > MAX_INPUTS:
        return f"Invalid 'input': maximum {MAX_INPUTS} inputs per request.", "input", "array_above_max_length"
    if any(text == "" for text in inputs):
        return "'$.input' is invalid: an input must not be an empty string.", "input", None
    dimensions = body.get("dimensions")
    if dimensions is not None and not is_int(dimensions):
        return invalid("dimensions", "an integer", dimensions)
    if dimensions is not None and dimensions < 1:
        return below_min("dimensions", dimensions, 1)
    if dimensions is not None and dimensions > MAX_DIMENSIONS:
        return f"Invalid 'dimensions': at most {MAX_DIMENSIONS}.", "dimensions", "integer_above_max_value"
    if body.get("encoding_format") not in (None, "float", "base64"):
        msg = "Invalid value for 'encoding_format': expected 'float' or 'base64'."
        return msg, "encoding_format", "invalid_value"
    return None


def vector(model: str, text: str | list[int], dimensions: int) -> array:
    """A deterministic unit vector, as float32."""
    digest = hashlib.blake2b(orjson.dumps([model, text, dimensions]), digest_size=8).digest()
    rng = random.Random(int.from_bytes(digest, "big"))
    values = [rng.gauss(0.0, 1.0) for _ in range(dimensions)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return array("f", (v / norm for v in values))


def encode(vec: array, encoding: str) -> list[float] | str:
    if encoding == "float":
        return vec.tolist()
    if sys.byteorder == "big":  # OpenAI's base64 is little-endian float32
        vec = array("f", vec)
        vec.byteswap()
    return base64.b64encode(vec.tobytes()).decode()


@dataclass(slots=True)
class EmbeddingAnswer:
    ctl: Controls
    headers: dict[str, str]
    model: str
    inputs: list[str] | list[list[int]]
    dimensions: int
    encoding: str
    counted: int  # the sim's own count of the input tokens

    streaming = False  # embeddings are never streamed
    output_tokens = 0  # nothing is generated, so tokens_per_s has nothing to pace

    @property
    def prompt_tokens(self) -> int:
        return self.counted if self.ctl.prompt_tokens is None else self.ctl.prompt_tokens

    def body(self) -> bytes:
        data = [
            {"object": "embedding", "index": i, "embedding": encode(vector(self.model, item, self.dimensions),
                                                                     self.encoding)}
            for i, item in enumerate(self.inputs)
        ]
        body: dict[str, Any] = {"object": "list", "data": data, "model": self.model}
        if self.ctl.usage:
            body["usage"] = {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens}
        return orjson.dumps(body)

    async def stream(self, request: web.Request) -> tuple[web.StreamResponse, str]:
        raise AssertionError("embeddings are never streamed")


class EmbeddingsDialect(OpenAIErrors):
    """POST /v1/embeddings."""

    prompt_param = "input"

    def answer(self, request: web.Request, raw: bytes) -> EmbeddingAnswer:
        body = read_body(raw)
        problem = _problem(body)
        if problem is not None:
            raise Refusal(bad_request(*problem))
        inputs = _inputs(body["input"])
        assert inputs is not None
        return EmbeddingAnswer(
            ctl=controls(request, body, ()),  # no directives: the input is what gets embedded
            headers=headers(),
            model=body["model"],
            inputs=inputs,
            dimensions=body.get("dimensions") or DEFAULT_DIMENSIONS,
            encoding=body.get("encoding_format") or "float",
            counted=sum(count_raw_tokens(item) for item in inputs),
        )
