"""Behaviour controls: which upstream misbehaviour a request asks the simulator for.

Three sources, later wins: the URL prefix `/_sim/k=v,k=v/...` (so a gateway
catalog can give one simulated provider a fixed behaviour via its base URL), a
`sim` object in the JSON body, and `[[sim k=v ...]]` directives inside message
text (which survive translation through any gateway dialect).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any

from farebox.sim.text import message_text


class ControlError(ValueError):
    """A control name is unknown or its value is invalid; answered with a 400."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(slots=True)
class Controls:
    ttft_ms: int = 0
    tokens_per_s: float = 0.0
    output_tokens: int | None = None
    status: int | None = None
    retry_after: int | None = None
    cut_after: int | None = None
    garbage: bool = False
    hang: bool = False
    usage: bool = True
    reasoning_tokens: int = 0
    cached_tokens: int = 0
    prompt_tokens: int | None = None


# name -> (kind, minimum, maximum). Upper bounds keep a typo from making the
# simulator allocate a billion words or sleep for a century.
_MAX_TOKENS = 1_000_000
_SPECS: dict[str, tuple[str, float, float]] = {
    "ttft_ms": ("int", 0, 3_600_000),
    "tokens_per_s": ("num", 0, 1_000_000),
    "output_tokens": ("int", 0, _MAX_TOKENS),
    "status": ("int", 400, 599),
    "retry_after": ("int", 0, 86_400),
    "cut_after": ("int", 0, _MAX_TOKENS),
    "garbage": ("bool", 0, 1),
    "hang": ("bool", 0, 1),
    "usage": ("bool", 0, 1),
    "reasoning_tokens": ("int", 0, _MAX_TOKENS),
    "cached_tokens": ("int", 0, 1 << 31),
    "prompt_tokens": ("int", 0, 1 << 31),
}
assert set(_SPECS) == {f.name for f in fields(Controls)}

_TRUE = {"true", "1"}
_FALSE = {"false", "0"}
_DIRECTIVE = re.compile(r"\[\[sim\b([^\]]*)\]\]")


def _coerce(name: str, value: Any) -> Any:
    spec = _SPECS.get(name)
    if spec is None:
        raise ControlError(name, f"Unknown sim control '{name}'. Known controls: {', '.join(_SPECS)}.")
    kind, lo, hi = spec
    if kind == "bool":
        # JSON true/false or 0/1, or the strings true/false/1/0 from a URL/directive.
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, (str, int)) else None
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ControlError(
            name, f"Invalid value for sim control '{name}': {value!r} (expected true/false/1/0)."
        )
    parsed: float | int | None = None
    if isinstance(value, bool):
        parsed = None  # bool is an int subclass; never accept it as a number
    elif isinstance(value, (int, float)):
        parsed = value  # non-finite floats are rejected below
    elif isinstance(value, str):
        try:
            parsed = int(value) if kind == "int" else float(value)
        except ValueError:
            parsed = None
    if isinstance(parsed, float):
        if kind == "int" and parsed.is_integer():
            parsed = int(parsed)
        elif kind == "int" or not math.isfinite(parsed):
            parsed = None
    if parsed is None or not lo <= parsed <= hi:
        want = "an integer" if kind == "int" else "a number"
        raise ControlError(
            name,
            f"Invalid value for sim control '{name}': {value!r} (expected {want} in {int(lo)}..{int(hi)}).",
        )
    return float(parsed) if kind == "num" else parsed


def _pairs(text: str, sep: str, where: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in text.split(sep) if sep else text.split():
        item = item.strip()
        if not item:
            continue
        name, eq, value = item.partition("=")
        if not eq:
            raise ControlError(name, f"Malformed sim control '{item}' in {where} (expected key=value).")
        out[name.strip()] = _coerce(name.strip(), value.strip())
    return out


def from_prefix(prefix: str | None) -> dict[str, Any]:
    """Parse the `{controls}` part of `/_sim/{controls}/v1/...`."""
    return _pairs(prefix, ",", "URL prefix") if prefix else {}


def from_body(sim: Any) -> dict[str, Any]:
    """Parse the `sim` object of a request body (typed JSON values or strings)."""
    if sim is None:
        return {}
    if not isinstance(sim, dict):
        raise ControlError("sim", "Invalid type for 'sim': expected an object.")
    return {str(k): _coerce(str(k), v) for k, v in sim.items()}


def from_messages(messages: list[Any]) -> dict[str, Any]:
    """Collect `[[sim k=v ...]]` directives, in message order (later wins)."""
    out: dict[str, Any] = {}
    for message in messages:
        text, _ = message_text(message)
        if "[[sim" not in text:  # cheap pre-check; most prompts carry no directive
            continue
        for match in _DIRECTIVE.finditer(text):
            out.update(_pairs(match.group(1), "", "a [[sim ...]] directive"))
    return out


def resolve(prefix: str | None, body: dict[str, Any]) -> Controls:
    """Merge prefix < body `sim` < message directives into one Controls."""
    merged = from_prefix(prefix)
    merged.update(from_body(body.get("sim")))
    merged.update(from_messages(body["messages"]))
    return Controls(**merged)


# What the `status` control answers with: OpenAI's error `type` (which SDKs map
# to exception classes together with the status) and `code` for that status.
_STATUS_KINDS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Simulated bad request."),
    401: ("authentication_error", "invalid_api_key", "Incorrect API key provided (simulated)."),
    403: ("permission_error", None, "You are not allowed to access this resource (simulated)."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist (simulated)."),
    429: ("rate_limit_error", "rate_limit_exceeded", "Rate limit reached (simulated). Try again later."),
    503: ("server_error", None, "The server is overloaded or not ready yet (simulated)."),
}


def status_error(ctl: Controls) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, OpenAI error body, extra headers) for the status/retry_after controls."""
    status = ctl.status
    assert status is not None
    if status < 500:
        default = ("invalid_request_error", None, f"Simulated client error {status}.")
    else:
        default = ("server_error", None, "The server had an error while processing your request (simulated).")
    type_, code, message = _STATUS_KINDS.get(status, default)
    # 429 always carries retry-after, as rate-limited providers do.
    retry_after = ctl.retry_after if ctl.retry_after is not None else (1 if status == 429 else None)
    headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
    return status, {"error": {"message": message, "type": type_, "param": None, "code": code}}, headers
