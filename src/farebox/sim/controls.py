"""Behaviour controls: which upstream misbehaviour a request asks the simulator for.

Three sources, later wins: the URL prefix `/_sim/k=v,k=v/...` (so a gateway
catalog can give one simulated provider a fixed behaviour via its base URL), a
`sim` object in the JSON body, and `[[sim k=v ...]]` directives inside the
request's message/system text (which survive translation through any gateway
dialect). The controls mean the same in every dialect; each dialect only says
which texts of its request are scanned for directives.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any


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
    cache_write_tokens: int = 0
    prompt_tokens: int | None = None
    context_length: int | None = None
    fail_after: int | None = None
    tool_call: bool = True
    fail_rate: float = 0.0


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
    "cache_write_tokens": ("int", 0, 1 << 31),
    "prompt_tokens": ("int", 0, 1 << 31),
    "context_length": ("int", 1, 1 << 31),
    "fail_after": ("int", 0, _MAX_TOKENS),
    "tool_call": ("bool", 0, 1),
    "fail_rate": ("num", 0, 1),
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


def from_texts(texts: Iterable[str]) -> dict[str, Any]:
    """Collect `[[sim k=v ...]]` directives from the request's texts, in order (later wins)."""
    out: dict[str, Any] = {}
    for text in texts:
        if "[[sim" not in text:  # cheap pre-check; most prompts carry no directive
            continue
        for match in _DIRECTIVE.finditer(text):
            out.update(_pairs(match.group(1), "", "a [[sim ...]] directive"))
    return out


def resolve(prefix: str | None, sim: Any, texts: Iterable[str]) -> Controls:
    """Merge prefix < body `sim` object < directives in `texts` into one Controls."""
    merged = from_prefix(prefix)
    merged.update(from_body(sim))
    merged.update(from_texts(texts))
    return Controls(**merged)


def retry_after_headers(status: int, retry_after: int | None) -> dict[str, str]:
    """The retry-after header of a `status` error: the control's value, else 1 for a 429
    (rate-limited providers always say when to come back), else none."""
    seconds = retry_after if retry_after is not None else (1 if status == 429 else None)
    return {"retry-after": str(seconds)} if seconds is not None else {}


def stop_point(ctl: Controls) -> tuple[int | None, bool]:
    """(output tokens a stream sends before it stops early, whether it then fails with an
    in-stream error rather than being cut). cut_after wins a tie: a dropped connection
    leaves no room for an error event."""
    cut, fail = ctl.cut_after, ctl.fail_after
    if fail is not None and (cut is None or fail < cut):
        return fail, True
    return cut, False
