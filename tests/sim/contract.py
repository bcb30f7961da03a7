"""Helpers for the simulator's contract tests: raw HTTP, SSE parsing, Stats, and strict
validation of bodies against the official SDKs' own pydantic types."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pydantic


def post(base: str, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    """POST JSON (or raw bytes); (status, headers, body) whatever the status."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, headers={"Content-Type": "application/json",
                                                                 **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def sse(raw: bytes, separator: bytes = b"\n\n") -> list[tuple[str | None, str]]:
    """(event name, data) of each event of a complete SSE body whose events end in `separator`."""
    assert raw.endswith(separator), raw[-80:]
    events = []
    for block in raw[: -len(separator)].split(separator):
        lines = block.decode().split(separator[: len(separator) // 2].decode())
        name = next((line[len("event: "):] for line in lines if line.startswith("event: ")), None)
        data = "\n".join(line[len("data: "):] for line in lines if line.startswith("data: "))
        events.append((name, data))
    return events


def stats(base: str) -> dict[str, int]:
    with urllib.request.urlopen(base + "/_sim/stats", timeout=10) as resp:
        return json.loads(resp.read())


def wait_stats(base: str, pred: Callable[[dict[str, int]], bool], timeout: float = 10.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        current = stats(base)
        if pred(current) or time.monotonic() > deadline:
            return current
        time.sleep(0.02)


def strict(type_: Any, data: Any) -> Any:
    """Validate `data` as the SDK type `type_` (a model or a union), and insist that no model
    on the way kept a field its type does not declare: the body is the published format,
    not merely something the SDK tolerates."""
    value = pydantic.TypeAdapter(type_).validate_python(data)
    _no_extras(value, type(value).__name__)
    return value


def _no_extras(value: Any, where: str) -> None:
    if isinstance(value, pydantic.BaseModel):
        assert not value.model_extra, f"{where} has undeclared fields {sorted(value.model_extra)}"
        for name in type(value).model_fields:
            _no_extras(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _no_extras(item, f"{where}[{i}]")
