"""Error rendering: the one place that turns an error into OpenRouter's shape,
`{"error": {"code": <status>, "message": ..., "metadata": {...}}}`."""

from __future__ import annotations

import orjson

from farebox.errors import FareboxError


def error_body(error: FareboxError) -> bytes:
    metadata = dict(error.metadata)
    metadata.setdefault("error_type", error.error_type)
    body: dict[str, object] = {"error": {"code": error.status, "message": error.message, "metadata": metadata}}
    if error.user_id is not None:
        body["user_id"] = error.user_id
    return orjson.dumps(body)


def error_headers(error: FareboxError) -> list[tuple[bytes, bytes]]:
    return [(k.lower().encode(), str(v).encode()) for k, v in error.headers.items()]
