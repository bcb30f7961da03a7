"""Tool calls of the simulated model: which declared tool it calls, and with what arguments.

Arguments are a deterministic JSON object built from the tool's JSON schema (OpenAI
`parameters`, Anthropic `input_schema`, Gemini `parameters`/`parametersJsonSchema`,
whose OpenAPI-style upper-case type names are read the same), so a test can predict
them and a gateway's translation can be checked value for value.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import orjson

from farebox.sim.text import VOCAB

_ARGS_SALT = 0x7001_CA11  # so argument values are not the answer's first words
_MAX_DEPTH = 8  # recursive schemas ($ref cycles are not followed, but deep nesting is cut too)
_PIECE_BYTES = 4  # one output token per 4 bytes of argument JSON


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A declared function tool: its name and the JSON schema of its arguments."""

    name: str
    schema: Any


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The one call the simulated model makes. `pieces` is the arguments' JSON text cut into
    the fragments a stream sends; each fragment is one output token."""

    name: str
    arguments: dict[str, Any]
    pieces: tuple[str, ...]

    @property
    def json(self) -> str:
        return "".join(self.pieces)


def choose(tools: tuple[ToolSpec, ...], forced: str | None) -> ToolSpec:
    """The forced tool when the request names a declared one, else the first declared."""
    assert tools
    for tool in tools:
        if tool.name == forced:
            return tool
    return tools[0]


def call(tool: ToolSpec, seed: int) -> ToolCall:
    """The deterministic call of `tool` for a request with this seed."""
    value = _value(tool.schema, random.Random(seed ^ _ARGS_SALT), 0)
    arguments = value if isinstance(value, dict) else {}  # arguments are always an object
    return ToolCall(tool.name, arguments, split(orjson.dumps(arguments).decode()))


def split(text: str) -> tuple[str, ...]:
    """`text` in pieces of at most 4 UTF-8 bytes that never split a character; at least two
    pieces, because streamed arguments always arrive in more than one delta."""
    assert len(text) >= 2, text  # JSON of an object is at least "{}"
    pieces: list[str] = []
    current = ""
    size = 0
    for char in text:
        width = len(char.encode("utf-8"))
        if current and size + width > _PIECE_BYTES:
            pieces.append(current)
            current, size = "", 0
        current += char
        size += width
    pieces.append(current)
    if len(pieces) == 1:
        half = len(text) // 2
        pieces = [text[:half], text[half:]]
    return tuple(pieces)


def _type(schema: dict[str, Any]) -> str:
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]: the first non-null alternative
        kind = next((k for k in kind if isinstance(k, str) and k.lower() != "null"), "null")
    if isinstance(kind, str):
        return kind.lower()  # Gemini's OpenAPI schemas say "OBJECT", "STRING", ...
    if "properties" in schema:
        return "object"
    return "array" if "items" in schema else "string"


def _clamp(value: float, schema: dict[str, Any]) -> float:
    low, high = schema.get("minimum"), schema.get("maximum")
    if isinstance(low, (int, float)) and not isinstance(low, bool):
        value = max(value, low)
    if isinstance(high, (int, float)) and not isinstance(high, bool):
        value = min(value, high)
    return value


def _value(schema: Any, rng: random.Random, depth: int) -> Any:
    if not isinstance(schema, dict):
        return rng.choice(VOCAB)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        alternatives = schema.get(key)
        if isinstance(alternatives, list) and alternatives:
            return _value(alternatives[0], rng, depth)
    kind = _type(schema)
    if kind == "object":
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) and depth < _MAX_DEPTH else {}
        required = schema.get("required")
        names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
        return {name: _value(properties.get(name), rng, depth + 1) for name in names or list(properties)}
    if kind == "array":
        return [_value(schema.get("items"), rng, depth + 1)] if depth < _MAX_DEPTH else []
    if kind == "integer":
        return int(_clamp(rng.randint(1, 9), schema))
    if kind == "number":
        return _clamp(rng.randint(1, 9) + 0.5, schema)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    return rng.choice(VOCAB)
