"""A minimal HTTP layer on raw ASGI: requests, JSON responses and the body-size limit.

The API is a handful of JSON endpoints plus one hot path; raw ASGI keeps per-request
work to what the request needs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import orjson

from farebox.api.errors import error_body, error_headers
from farebox.errors import BadRequest, FareboxError, PayloadTooLarge

JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]] = field(default_factory=lambda: list(JSON_HEADERS))


def json_response(data: Any, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    return Response(status, orjson.dumps(data), JSON_HEADERS + (headers or []))


def error_response(error: FareboxError) -> Response:
    return Response(error.status, error_body(error), JSON_HEADERS + error_headers(error))


async def send_response(send: Callable[..., Any], response: Response) -> None:
    await send({"type": "http.response.start", "status": response.status, "headers": response.headers})
    await send({"type": "http.response.body", "body": response.body})


class Request:
    __slots__ = ("_query", "params", "receive", "scope", "send")

    def __init__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        self.scope, self.receive, self.send = scope, receive, send
        self.params: dict[str, str] = {}
        self._query: dict[str, list[str]] | None = None

    def header(self, name: bytes) -> str | None:
        for key, value in self.scope["headers"]:
            if key == name:
                return value.decode("latin-1")
        return None

    def query(self, name: str) -> str | None:
        if self._query is None:
            self._query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        values = self._query.get(name)
        return values[0] if values else None

    async def body(self, limit: int) -> bytes:
        length = self.header(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"Request body is {length} bytes; the limit is {limit}")
        chunks = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def json(self, limit: int) -> dict[str, Any]:
        raw = await self.body(limit)
        if not raw.strip():
            return {}
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise BadRequest(f"Request body is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise BadRequest("Request body must be a JSON object")
        return data


def iso(ms_or_s: int | None, *, seconds: bool = False) -> str | None:
    if ms_or_s is None:
        return None
    ts = ms_or_s if seconds else ms_or_s / 1000
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: Any, field_name: str) -> int | None:
    """A UTC ISO-8601 timestamp -> unix seconds."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{field_name} must be an ISO 8601 UTC timestamp", field=field_name)
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{field_name} is not an ISO 8601 timestamp: {value!r}", field=field_name) from None
    if parsed.tzinfo is None or parsed.utcoffset() != dt.timedelta(0):
        raise BadRequest(f"{field_name} must be in UTC (end it with Z)", field=field_name)
    return int(parsed.timestamp())
